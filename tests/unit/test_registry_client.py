"""The registry client against a small HTTP registry on loopback that speaks the distribution API's shape.

The 401 challenges follow what registries send (distribution's token spec,
https://distribution.github.io/distribution/spec/auth/token/): Docker Hub answers
`Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull"`,
GHCR `Bearer realm="https://ghcr.io/token",service="ghcr.io",scope="repository:o/r:pull"`, and a token service
answers `{"token": ...}` (Docker Hub also sends `access_token`). The integration tier reads from a real registry.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from torchimages.registry import INDEXES, MANIFESTS, Manifest, RegistryClient, RegistryError, RemoteRef, parse_ref


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


@dataclass
class FakeRegistry:
    """Manifests and blobs by repository, behind a bearer-token challenge (or none, or Basic)."""

    auth: str = "bearer"  # bearer | basic | none
    user: str = "ti-user"
    password: str = "s3cret"
    manifests: dict[tuple[str, str], tuple[str, bytes]] = field(default_factory=dict)  # (repo, tag or digest) -> (type, body)
    blobs: dict[str, bytes] = field(default_factory=dict)
    token_requests: list[dict[str, list[str]]] = field(default_factory=list)
    issued: dict[str, str] = field(default_factory=dict)  # token -> scope
    corrupt_config: bool = False
    address: str = ""
    seen: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every registry request
    refresh_tokens: list[dict[str, list[str]]] = field(default_factory=list)  # the OAuth2 forms POSTed to /token

    def add_image(self, repo: str, tag: str, labels: dict[str, str], *, steps: tuple[str, ...] = ("LABEL a=b",)) -> Manifest:
        diff_ids = [f"sha256:{'d' * 63}{n}" for n in range(len(steps))]  # one layer per step
        config = json.dumps({"config": {"Labels": labels}, "history": [{"created_by": s} for s in steps], "rootfs": {"diff_ids": diff_ids}})
        self.blobs[_digest(config.encode())] = config.encode()
        layers = [{"digest": f"sha256:{'b' * 63}{n}", "size": 1000 + n} for n in range(len(steps))]
        manifest = {"schemaVersion": 2, "mediaType": MANIFESTS[1], "config": {"digest": _digest(config.encode())}, "layers": layers}
        body = json.dumps(manifest).encode()
        self.manifests[(repo, tag)] = self.manifests[(repo, _digest(body))] = (MANIFESTS[1], body)
        return Manifest(digest=_digest(body), media_type=MANIFESTS[1], body=body)

    def add_index(self, repo: str, tag: str, platforms: dict[tuple[str, str], Manifest]) -> str:
        entries = [{"digest": m.digest, "platform": {"os": o, "architecture": a}} for (o, a), m in platforms.items()]
        body = json.dumps({"schemaVersion": 2, "mediaType": INDEXES[0], "manifests": entries}).encode()
        self.manifests[(repo, tag)] = self.manifests[(repo, _digest(body))] = (INDEXES[0], body)
        return _digest(body)


@pytest.fixture()
def registry() -> Iterator[FakeRegistry]:
    state = FakeRegistry()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _send(self, code: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(code)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's name
            self.do_GET()

        def do_POST(self) -> None:  # noqa: N802 - an identity (refresh) token traded for an access token
            form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
            state.refresh_tokens.append(form)
            if form.get("grant_type") != ["refresh_token"] or form.get("refresh_token") != [state.password]:
                self._send(401, b'{"details":"invalid refresh token"}')
                return
            token = f"t{len(state.issued)}"
            repo, actions = form["scope"][0].rsplit(":", 1)
            state.issued[token] = " ".join(f"{repo}:{a}" for a in actions.split(","))
            self._send(200, json.dumps({"access_token": token}).encode())

        def _allowed(self, scope: str) -> bool:
            given = self.headers.get("Authorization", "")
            if state.auth == "none":
                return True
            if state.auth == "basic":
                expected = "Basic " + base64.b64encode(f"{state.user}:{state.password}".encode()).decode()
                if given == expected:
                    return True
                self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": 'Basic realm="fake"'})
                return False
            token = given.removeprefix("Bearer ")
            if given.startswith("Bearer ") and scope in state.issued.get(token, "").split(" "):
                return True
            challenge = f'Bearer realm="http://{state.address}/token",service="fake-registry",scope="{scope}"'
            self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
            return False

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlparse(self.path)
            if url.path == "/token":
                query = parse_qs(url.query)
                state.token_requests.append(query)
                expected = "Basic " + base64.b64encode(f"{state.user}:{state.password}".encode()).decode()
                if self.headers.get("Authorization") != expected:
                    self._send(401, b'{"details":"incorrect username or password"}')
                    return
                token = f"t{len(state.issued)}"
                scope = query["scope"][0]
                repo, actions = scope.rsplit(":", 1)
                state.issued[token] = " ".join(f"{repo}:{a}" for a in actions.split(","))
                self._send(200, json.dumps({"token": token, "access_token": token}).encode())
                return
            parts = url.path.split("/")  # /v2/<repo...>/manifests|blobs/<ref>
            repo, kind, ref = "/".join(parts[2:-2]), parts[-2], parts[-1]
            state.seen.append((self.command, url.path))
            if not self._allowed(f"repository:{repo}:pull"):
                return
            if kind == "manifests" and (repo, ref) in state.manifests:
                media, body = state.manifests[(repo, ref)]
                self._send(200, body, {"Content-Type": media, "Docker-Content-Digest": _digest(body)})
            elif kind == "blobs" and ref in state.blobs:
                self._send(200, state.blobs[ref] + (b" " if state.corrupt_config else b""))
            else:
                self._send(404, b'{"errors":[{"code":"MANIFEST_UNKNOWN"}]}')

        def do_PUT(self) -> None:  # noqa: N802
            parts = urlparse(self.path).path.split("/")
            repo, ref = "/".join(parts[2:-2]), parts[-1]
            if not self._allowed(f"repository:{repo}:push"):
                return
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.manifests[(repo, ref)] = (self.headers["Content-Type"], body)
            self._send(201, b"", {"Docker-Content-Digest": _digest(body)})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.address = f"127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def logged_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registry: FakeRegistry) -> None:
    """A Docker config with the fake registry's password, as `docker login` writes it."""
    auth = base64.b64encode(f"{registry.user}:{registry.password}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {registry.address: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


@pytest.fixture()
def logged_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("debian:12", RemoteRef("docker.io", "library/debian", "12")),
        ("nvidia/cuda:13.0.3-base-debian12", RemoteRef("docker.io", "nvidia/cuda", "13.0.3-base-debian12")),
        ("docker.io/library/debian", RemoteRef("docker.io", "library/debian", "latest")),
        ("ghcr.io/acme/pytorch:2.13.0-cpu", RemoteRef("ghcr.io", "acme/pytorch", "2.13.0-cpu")),
        ("127.0.0.1:5000/a/b@sha256:" + "0" * 64, RemoteRef("127.0.0.1:5000", "a/b", "sha256:" + "0" * 64)),
        ("localhost:5000/b", RemoteRef("localhost:5000", "b", "latest")),
        ("index.docker.io/library/ubuntu:24.04", RemoteRef("docker.io", "library/ubuntu", "24.04")),
    ],
)
def test_references_resolve_as_docker_resolves_them(ref: str, expected: RemoteRef) -> None:
    assert parse_ref(ref) == expected


def test_only_loopback_registries_are_spoken_to_in_plain_http() -> None:
    assert parse_ref("127.0.0.1:5000/a:b").base_url == "http://127.0.0.1:5000/v2/a"
    assert parse_ref("localhost:5000/a:b").base_url == "http://localhost:5000/v2/a"
    assert parse_ref("[::1]:5000/a:b").base_url == "http://[::1]:5000/v2/a"
    assert parse_ref("ghcr.io/o/r:t").base_url == "https://ghcr.io/v2/o/r"
    assert parse_ref("debian:12").base_url == "https://registry-1.docker.io/v2/library/debian"


def test_a_token_challenge_is_answered_with_the_stored_password(registry: FakeRegistry, logged_in: None) -> None:
    pushed = registry.add_image("team/pytorch", "2.13.0-cpu", {"org.torch-images.build-hash": "abc"}, steps=("RUN x", "LABEL seal"))
    image = RegistryClient().image(f"{registry.address}/team/pytorch:2.13.0-cpu")
    assert image is not None
    assert (image.manifest.digest, image.labels, image.newest_step) == (pushed.digest, {"org.torch-images.build-hash": "abc"}, "LABEL seal")
    # Each layer by its diff ID (the config's), with the blob the manifest names for it.
    assert image.layers == {f"sha256:{'d' * 63}0": (f"sha256:{'b' * 63}0", 1000), f"sha256:{'d' * 63}1": (f"sha256:{'b' * 63}1", 1001)}
    # One token for the repository's pull scope, asked for with the service the challenge named, reused for the blob.
    assert [(q["service"], q["scope"]) for q in registry.token_requests] == [(["fake-registry"], ["repository:team/pytorch:pull"])]


def test_without_a_login_the_error_says_how_to_log_in(registry: FakeRegistry, logged_out: None) -> None:
    registry.add_image("team/pytorch", "t", {})
    with pytest.raises(RegistryError, match=rf"token service refused .*HTTP 401.*docker login {registry.address}"):
        RegistryClient().image(f"{registry.address}/team/pytorch:t")


def test_basic_auth_registries_get_the_password_directly(registry: FakeRegistry, logged_in: None) -> None:
    registry.auth = "basic"
    registry.add_image("team/pytorch", "t", {"k": "v"})
    image = RegistryClient().image(f"{registry.address}/team/pytorch:t")
    assert image is not None and image.labels == {"k": "v"}
    assert registry.token_requests == []


def test_a_missing_tag_is_none_not_an_error(registry: FakeRegistry, logged_in: None) -> None:
    client = RegistryClient()
    assert client.image(f"{registry.address}/team/pytorch:nope") is None
    assert client.digest(f"{registry.address}/team/pytorch:nope") is None


def test_an_index_resolves_to_the_engines_platform(registry: FakeRegistry, logged_in: None) -> None:
    amd = registry.add_image("nvidia/cuda", "amd", {"arch": "amd64"})
    arm = registry.add_image("nvidia/cuda", "arm", {"arch": "arm64"})
    index = registry.add_index("nvidia/cuda", "13.0.3-base", {("linux", "amd64"): amd, ("linux", "arm64"): arm})
    ref = f"{registry.address}/nvidia/cuda:13.0.3-base"
    for platform, arch in ((("linux", "amd64"), "amd64"), (("linux", "arm64"), "arm64")):
        image = RegistryClient(platform=platform).image(ref)
        assert image is not None and image.labels == {"arch": arch}
        assert image.manifest.digest == index  # what the tag resolves to, as `docker pull` records it in RepoDigests
    assert RegistryClient(platform=("linux", "s390x")).image(ref) is None
    assert RegistryClient().digest(ref) == index


def test_a_config_that_does_not_match_its_digest_is_refused(registry: FakeRegistry, logged_in: None) -> None:
    registry.add_image("team/pytorch", "t", {})
    registry.corrupt_config = True
    with pytest.raises(RegistryError, match="does not match its digest"):
        RegistryClient().image(f"{registry.address}/team/pytorch:t")


def test_moving_a_tag_puts_the_same_manifest_bytes_with_push_scope(registry: FakeRegistry, logged_in: None) -> None:
    pushed = registry.add_image("team/pytorch", "2.13.0-cpu", {})
    client = RegistryClient()
    served = client.put_manifest(f"{registry.address}/team/pytorch:latest-cpu", pushed)
    assert served == pushed.digest
    assert registry.manifests[("team/pytorch", "latest-cpu")] == (pushed.media_type, pushed.body)
    assert ["repository:team/pytorch:pull,push"] in [q["scope"] for q in registry.token_requests]


def test_an_unreachable_registry_is_one_clear_error(logged_out: None) -> None:
    with pytest.raises(RegistryError, match=r"cannot reach 127\.0\.0\.1:9 for team/pytorch"):
        RegistryClient().image("127.0.0.1:9/team/pytorch:t")


def test_a_digest_is_asked_for_with_head_not_counted_as_a_pull(registry: FakeRegistry, logged_in: None) -> None:
    """Docker Hub counts manifest GETs against its pull limit and HEADs not (docs.docker.com/docker-hub/usage/pulls/)."""
    pushed = registry.add_image("nvidia/cuda", "13.0.3-base-debian12", {})
    client = RegistryClient()
    for _ in range(3):
        assert client.base_digest(f"{registry.address}/nvidia/cuda:13.0.3-base-debian12") == pushed.digest
    assert [method for method, path in registry.seen if "/manifests/" in path and method == "HEAD"] == ["HEAD", "HEAD"]  # 401, then 200
    assert not [path for method, path in registry.seen if method == "GET"]


def test_an_identity_token_is_traded_for_an_access_token(registry: FakeRegistry, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `docker login` stores for registries that hand out refresh tokens: {"identitytoken": ...}."""
    (tmp_path / "config.json").write_text(json.dumps({"auths": {registry.address: {"auth": "", "identitytoken": registry.password}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    registry.add_image("team/pytorch", "t", {"k": "v"})
    image = RegistryClient().image(f"{registry.address}/team/pytorch:t")
    assert image is not None and image.labels == {"k": "v"}
    assert [(f["grant_type"], f["service"], f["scope"]) for f in registry.refresh_tokens] == [
        (["refresh_token"], ["fake-registry"], ["repository:team/pytorch:pull"])
    ]
