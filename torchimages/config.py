"""Read images.yaml into plain Python values, keeping the file position of every value."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Path_ = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input file, at a position a person can jump to."""

    file: str
    line: int
    col: int
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{printable(self.file)}:{self.line}:{self.col}"
        field, message = printable(self.field), printable(self.message)
        return f"{where}: {field}: {message}" if field else f"{where}: {message}"


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """Text from an input file as one safe line: control characters (an ANSI escape, a newline, a bidi override) as
    escapes, and the userinfo of any URL (an index's password) masked."""
    return mask_credentials(_UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape").decode(), text))


_USERINFO = re.compile(r"(?<=://)[^/\s]+@")


def mask_credentials(text: str) -> str:
    """https://user:token@host/... -> https://***@host/...: index URLs may carry secrets; logs and messages must not."""
    return _USERINFO.sub("***@", text)


class ConfigError(Exception):
    """All the problems found in one input, reported together."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.file, p.line, p.col, p.field))
        super().__init__("\n".join(str(p) for p in self.problems))


@dataclass
class Document:
    """A parsed YAML file: its values, and where each value (and each key) came from."""

    file: str
    data: Any
    marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    key_marks: dict[Path_, tuple[int, int]] = field(default_factory=dict)
    raw: dict[Path_, str] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    def where(self, path: Path_, *, key: bool = False) -> tuple[int, int]:
        """Line and column (1-based) of the value at path, or of its key, or of the nearest parent."""
        table = self.key_marks if key else self.marks
        probe = path
        while probe:
            if probe in table:
                return table[probe]
            if probe in self.marks:
                return self.marks[probe]
            probe = probe[:-1]
        return self.marks.get((), (1, 1))

    def problem(self, path: Path_, message: str, *, key: bool = False) -> Problem:
        line, col = self.where(path, key=key)
        return Problem(self.file, line, col, field_name(path), message)


@dataclass
class Reader:
    """What every field reader is handed: the document, to place messages, and the problems found so far."""

    doc: Document
    problems: list[Problem] = field(default_factory=list)

    @property
    def file(self) -> str:
        return self.doc.file

    def add(self, path: Path_, message: str, *, key: bool = False) -> None:
        """Record a problem at the value (or key) at path."""
        self.problems.append(self.doc.problem(path, message, key=key))

    def line(self, path: Path_) -> int:
        return self.doc.where(path)[0]


def field_name(path: Path_) -> str:
    """images[2].python style name for a path."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_document(path: Path | str, text: str | None = None) -> Document:
    """Parse YAML; syntax errors, duplicate keys and non-string keys become Problems, never exceptions."""
    name = str(path)
    if text is None:
        try:
            with open(path, "rb") as stream:
                raw = stream.read(MAX_BYTES + 1)  # /dev/zero, or a log passed by mistake, ends here
        except FileNotFoundError:
            raise ConfigError([Problem(name, 1, 1, "", "file not found")]) from None
        except OSError as exc:
            raise ConfigError([Problem(name, 1, 1, "", f"cannot read file: {exc}")]) from None
        if len(raw) > MAX_BYTES:
            raise ConfigError([Problem(name, 1, 1, "", f"larger than {MAX_BYTES // 1000} kB; a matrix file is far smaller")])
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ConfigError([Problem(name, 1, 1, "", f"cannot read file: {exc}")]) from None
    doc = Document(file=name, data=None)
    try:
        nodes = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ConfigError([Problem(name, line, col, "", f"YAML syntax error: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:  # reader errors (bad bytes) carry no problem_mark
        raise ConfigError([Problem(name, 1, 1, "", f"YAML error: {exc}")]) from None
    except RecursionError:  # PyYAML composes nested collections recursively: `[[[[...` thousands deep
        raise ConfigError([Problem(name, 1, 1, "", f"nested deeper than {MAX_DEPTH} levels; a matrix file needs 4")]) from None
    if len(nodes) > 1:
        mark = nodes[1].start_mark
        raise ConfigError([Problem(name, mark.line + 1, 1, "", "expected one YAML document, found several")])
    if nodes and _depth(nodes[0]) > MAX_DEPTH:
        raise ConfigError([Problem(name, 1, 1, "", f"nested deeper than {MAX_DEPTH} levels; a matrix file needs 4")])
    try:
        doc.data = _convert(doc, nodes[0], (), ()) if nodes else None
    except RecursionError:  # the depth check above makes this unreachable; a message all the same, never a traceback
        raise ConfigError([Problem(name, 1, 1, "", f"nested deeper than {MAX_DEPTH} levels; a matrix file needs 4")]) from None
    except _TooLarge:
        raise ConfigError([Problem(name, 1, 1, "", f"the document expands to more than {MAX_VALUES} values (aliases?)")]) from None
    if doc.problems:
        raise ConfigError(doc.problems)
    return doc


MAX_VALUES = 100_000  # an alias bomb expands without end; no real matrix comes near this
MAX_BYTES = 1_000_000  # the shipped matrix is a few kB
MAX_DEPTH = 32  # the deepest real path is images[i].packages[j].pip


def _depth(root: yaml.Node) -> int:
    """The longest path from the root, aliases followed, counted without recursion (a deep file must not blow the stack).

    Memoised per node, so a web of aliases costs one visit each; a cycle (an alias inside its own anchor) is not
    followed here, and _convert names it.
    """
    depth: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [value for _, value in node.value]
        else:
            children = []
        if children_done:
            on_path.discard(key)
            depth[key] = 1 + max((depth.get(id(c), 0) for c in children), default=0)  # 0: a cycle's back edge
            if depth[key] > MAX_DEPTH:
                return depth[key]
            continue
        if key in depth:
            continue
        if key in on_path:
            continue
        on_path.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in depth)
    return depth[id(root)]


class _TooLarge(Exception):
    pass


def _convert(doc: Document, node: yaml.Node, path: Path_, parents: tuple[int, ...]) -> Any:
    doc.marks[path] = (node.start_mark.line + 1, node.start_mark.column + 1)
    if len(doc.marks) > MAX_VALUES:
        raise _TooLarge
    if id(node) in parents:  # an alias to one of its own parents: `a: &x [*x]`
        doc.problems.append(doc.problem(path, "a YAML alias refers to a value that contains it"))
        return None
    parents = (*parents, id(node))
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                doc.problems.append(doc.problem(path, "YAML merge keys (<<) are not supported; write the keys out"))
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                doc.problems.append(Problem(doc.file, line, col, field_name(path), f"keys must be plain words, not {key_node.value!r}"))
                continue
            key = key_node.value
            child = (*path, key)
            if key in out:
                first = doc.key_marks[child]
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                doc.problems.append(Problem(doc.file, line, col, field_name(child), f"duplicate key (first given on line {first[0]})"))
                continue
            doc.key_marks[child] = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
            out[key] = _convert(doc, value_node, child, parents)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_convert(doc, item, (*path, i), parents) for i, item in enumerate(node.value)]
    if isinstance(node, yaml.ScalarNode):
        doc.raw[path] = node.value
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError as exc:
        doc.problems.append(doc.problem(path, f"cannot read value: {exc.problem}"))
        return None
    finally:
        loader.dispose()


def scalar_kind(value: Any) -> str:
    """How a person would name the YAML type of a value."""
    if value is None:
        return "empty"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """' (did you mean "x"?)' or ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


def version_ok(r: Reader, path: Path_, value: Any) -> bool:
    """Versions are strings: an unquoted 3.10 is the number 3.1, which is exactly the bug we refuse."""
    if isinstance(value, str) and value.strip():
        return True
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        written = r.doc.raw.get(path, repr(value))
        r.add(path, f'version must be a quoted string: {written} unquoted is read as the number {value!r}; write "{written}"')
    else:
        r.add(path, f"version must be a quoted string, got {scalar_kind(value)}")
    return False
