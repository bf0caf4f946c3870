"""Load a spec from YAML or JSON with every error located in the file.

Steps, in order: read the text; parse it safely, remembering the line and column
of every key and value (YAML through PyYAML's safe composer, JSON through the
json module plus a small scan for positions); build plain Python data while
refusing duplicate keys, non-plain tags and absurd nesting; validate with
pydantic in strict mode (no silent "5" -> 5 or true -> 1); translate every
pydantic error into a `Problem` that points at the key or value.
"""

from __future__ import annotations

import difflib
import json
import re
import typing
from pathlib import Path as FsPath
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import Path, PathPart, Problem, SpecError, format_path
from .schema import FORMAT_VERSION, Spec

MAX_NODES = 100_000  # refuses alias bombs ("billion laughs")
MAX_DEPTH = 50  # refuses absurd nesting before Python's recursion limit does

YAML_TAG = "tag:yaml.org,2002:"
PLAIN_TAGS = {YAML_TAG + t for t in ("str", "int", "float", "bool", "null")}


class SourceMap:
    """Where each key and value of a spec sits in its file (1-based line/column)."""

    def __init__(self, file: str):
        self.file = file
        self.keys: dict[Path, tuple[int, int]] = {}
        self.values: dict[Path, tuple[int, int]] = {}

    def locate(
        self, path: Path, prefer_key: bool = False
    ) -> tuple[int | None, int | None]:
        """Line and column of `path`, else of its nearest located ancestor."""
        for cut in range(len(path), -1, -1):
            sub = path[:cut]
            first, second = (
                (self.keys, self.values) if prefer_key else (self.values, self.keys)
            )
            if sub in first:
                return first[sub]
            if sub in second:
                return second[sub]
        return None, None

    def problem(self, path: Path, message: str, prefer_key: bool = False) -> Problem:
        line, column = self.locate(path, prefer_key)
        return Problem(self.file, line, column, path, message)


# ------------------------------------------------------------------------- parsing
class _Loader(yaml.SafeLoader):
    """SafeLoader reading only plain data: YAML 1.2 floats such as 1e-3 are
    numbers, dates stay strings, and nesting is bounded."""

    yaml_implicit_resolvers: typing.ClassVar[dict] = {
        first: [(tag, regex) for tag, regex in resolvers if "timestamp" not in tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    depth = 0

    def compose_node(self, parent, index):
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise yaml.composer.ComposerError(
                    None,
                    None,
                    f"values are nested more than {MAX_DEPTH} levels deep",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


_Loader.add_implicit_resolver(  # 1e-3, 5E+2: floats in YAML 1.2 and JSON
    YAML_TAG + "float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _short_tag(tag: str) -> str:
    return "!!" + tag[len(YAML_TAG) :] if tag.startswith(YAML_TAG) else tag


class _Builder:
    """Turns a composed YAML node tree into plain data, recording positions."""

    def __init__(self, source: SourceMap):
        self.source = source
        self.constructor = _Loader("")
        self.count = 0
        self.problems: list[Problem] = []

    def _at(self, node: yaml.Node, path: Path, message: str) -> None:
        mark = node.start_mark
        self.problems.append(
            Problem(self.source.file, mark.line + 1, mark.column + 1, path, message)
        )

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise SpecError(
                [self.source.problem(path, f"file has more than {MAX_NODES} values")]
            )
        self.source.values.setdefault(
            path, (node.start_mark.line + 1, node.start_mark.column + 1)
        )
        if len(path) > MAX_DEPTH:  # only aliases get here (the composer checks)
            self._at(node, path, f"values nested more than {MAX_DEPTH} levels deep")
            return None
        if isinstance(node, yaml.MappingNode):
            if node.tag != YAML_TAG + "map":
                return self._refuse(node, path)
            out: dict[str, Any] = {}
            self._fill(node, path, out)
            return out
        if isinstance(node, yaml.SequenceNode):
            if node.tag != YAML_TAG + "seq":
                return self._refuse(node, path)
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        if node.tag == YAML_TAG + "timestamp":  # only with an explicit !!timestamp
            return node.value
        if node.tag not in PLAIN_TAGS:
            return self._refuse(node, path)
        try:
            return self.constructor.construct_object(node, deep=True)
        except ValueError as err:  # e.g. an integer beyond Python's digit limit
            self._at(node, path, f"cannot read this value: {err}")
            return None

    def _refuse(self, node: yaml.Node, path: Path) -> None:
        self._at(
            node,
            path,
            f"the tag '{_short_tag(node.tag)}' is not allowed: a spec holds only "
            "mappings, lists, strings, numbers, booleans and null",
        )

    def _fill(
        self, node: yaml.MappingNode, path: Path, out: dict, merging: tuple = ()
    ) -> None:
        """Add the keys of `node` to `out`; keys already in `out` (set by a mapping
        that merges this one with '<<') win."""
        if node in merging:
            self._at(node, path, "a mapping merges itself with '<<'")
            return
        here: dict[str, int] = {}
        merges = []
        for key_node, value_node in node.value:
            if key_node.tag == YAML_TAG + "merge":
                merges.append(value_node)
                continue
            key = self._key(key_node, path)
            if key is None:
                continue
            kpath = path + (key,)
            line = key_node.start_mark.line + 1
            if key in here:
                self._at(
                    key_node,
                    kpath,
                    f"duplicate key '{key}' (first on line {here[key]})",
                )
                continue
            here[key] = line
            if key in out:
                continue
            self.source.keys[kpath] = (line, key_node.start_mark.column + 1)
            out[key] = self.build(value_node, kpath)
        for value_node in merges:
            parts = (
                value_node.value
                if isinstance(value_node, yaml.SequenceNode)
                else [value_node]
            )
            for part in parts:
                if isinstance(part, yaml.MappingNode):
                    self._fill(part, path, out, (*merging, node))
                else:
                    self._at(part, path, "'<<' can only merge mappings")

    def _key(self, node: yaml.Node, path: Path) -> str | None:
        if isinstance(node, yaml.ScalarNode) and node.tag in PLAIN_TAGS:
            return node.value  # as written: `3:` is the key '3'
        self._at(node, path, "keys must be plain names, not lists or mappings")
        return None


def _yaml_problem(err: yaml.MarkedYAMLError, file: str) -> Problem:
    """A located problem from a YAML syntax error."""
    mark = err.problem_mark or err.context_mark
    reason = err.problem or str(err)
    if err.problem == "but found another document":
        reason = "a spec file holds one YAML document, but '---' starts another"
    elif err.context == "while scanning a simple key" and err.context_mark:
        mark = err.context_mark  # the key that lacks its ':'
        reason += " after this key"
    elif (
        str(err.context).startswith("while parsing a flow")
        and err.context_mark
        and mark
        and err.context_mark.line != mark.line
    ):  # an unclosed bracket: point at it, not where the parser gave up
        opener = err.context_mark
        reason = (
            f"'{opener.buffer[opener.pointer]}' is never closed: {reason} "
            f"at line {mark.line + 1}, column {mark.column + 1}"
        )
        mark = opener
    elif err.context and err.context_mark and err.context_mark is not mark:
        cm = err.context_mark
        context = err.context.split(";")[0]
        reason += f" ({context} at line {cm.line + 1}, column {cm.column + 1})"
    if "'\\t'" in reason:
        reason += "; YAML does not allow tabs for indentation, use spaces"
    line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
    return Problem(file, line, column, (), f"invalid YAML: {reason}")


def _line_column(text: str, index: int) -> tuple[int, int]:
    """1-based line and column of a character index."""
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _compose(text: str, file: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as err:
        raise SpecError([_yaml_problem(err, file)]) from None
    except yaml.reader.ReaderError as err:  # a character YAML does not allow
        line, column = _line_column(text, err.position)
        message = f"invalid YAML: the character {err.character!r} is not allowed"
        raise SpecError([Problem(file, line, column, (), message)]) from None
    except yaml.YAMLError as err:
        raise SpecError(
            [Problem(file, None, None, (), f"invalid YAML: {err}")]
        ) from None


def _parse_json(text: str, source: SourceMap) -> Any:
    data = None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        msg = "the file is empty; a spec is a mapping" if not text.strip() else None
        if text[: err.pos].rstrip().endswith(","):
            msg = f"invalid JSON: {err.msg} (JSON allows no comma before a closing bracket)"
        raise SpecError(
            [
                Problem(
                    source.file,
                    err.lineno,
                    err.colno,
                    (),
                    msg or f"invalid JSON: {err.msg}",
                )
            ]
        ) from None
    except RecursionError:
        pass  # valid up to a depth the scan below refuses, with its position
    except ValueError as err:  # e.g. an integer beyond Python's digit limit
        raise SpecError(
            [Problem(source.file, None, None, (), f"invalid JSON: {err}")]
        ) from None
    problems = _JsonPositions(text, source).problems  # also finds duplicate keys
    if problems:
        raise SpecError(problems)
    return data


class _JsonPositions:
    """Records where each key and value of valid JSON text sits, and reports
    duplicate keys and too deep nesting with their positions."""

    SPACE = re.compile(r"[ \t\n\r]*")
    NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
    WORDS = ("true", "false", "null", "NaN", "Infinity", "-Infinity")

    def __init__(self, text: str, source: SourceMap):
        self.text, self.source = text, source
        self.problems: list[Problem] = []
        try:
            self.value(self._space(0), ())
        except _TooDeep:
            pass

    def _space(self, i: int) -> int:
        return self.SPACE.match(self.text, i).end()

    def _problem(self, i: int, path: Path, message: str) -> None:
        line, column = _line_column(self.text, i)
        self.problems.append(Problem(self.source.file, line, column, path, message))

    def value(self, i: int, path: Path) -> int:
        """Index after the value starting at index i."""
        self.source.values.setdefault(path, _line_column(self.text, i))
        if len(path) > MAX_DEPTH:
            self._problem(i, (), f"values are nested more than {MAX_DEPTH} levels deep")
            raise _TooDeep
        char = self.text[i]
        if char == "{":
            return self._object(self._space(i + 1), path)
        if char == "[":
            i, index = self._space(i + 1), 0
            while self.text[i] != "]":
                i = self._space(self.value(i, (*path, index)))
                i, index = self._space(i + 1 if self.text[i] == "," else i), index + 1
            return i + 1
        if char == '"':
            return json.decoder.scanstring(self.text, i + 1)[1]
        for word in self.WORDS:
            if self.text.startswith(word, i):
                return i + len(word)
        return self.NUMBER.match(self.text, i).end()

    def _object(self, i: int, path: Path) -> int:
        first: dict[str, int] = {}
        while self.text[i] != "}":
            key, after = json.decoder.scanstring(self.text, i + 1)
            kpath = (*path, key)
            if key in first:
                self._problem(
                    i, kpath, f"duplicate key '{key}' (first on line {first[key]})"
                )
            else:
                first[key] = _line_column(self.text, i)[0]
                self.source.keys[kpath] = _line_column(self.text, i)
            i = self._space(self._space(after) + 1)  # past the ':'
            i = self._space(self.value(i, kpath))
            i = self._space(i + 1 if self.text[i] == "," else i)
        return i + 1


class _TooDeep(Exception):
    pass


def parse_text(text: str, file: str, fmt: str = "yaml") -> tuple[Any, SourceMap]:
    """Parse spec text into plain data and a SourceMap (raises SpecError)."""
    source = SourceMap(file)
    if fmt == "json":
        return _parse_json(text, source), source
    node = _compose(text, file)
    if node is None:
        raise SpecError(
            [Problem(file, 1, 1, (), "the file is empty; a spec is a mapping")]
        )
    builder = _Builder(source)
    data = builder.build(node, ())
    if builder.problems:
        raise SpecError(builder.problems)
    return data, source


# ------------------------------------------------------------------------- validation
def _unwrap(annotation: Any) -> list[Any]:
    """The concrete classes a (possibly Annotated/Optional/Union) annotation allows."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return [c for a in typing.get_args(annotation) for c in _unwrap(a)]
    return [annotation]


def _model_at(path: Path, data: Any) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping found at `path` in `data`."""
    model: Any = Spec
    i = 0
    while i < len(path):
        part = path[i]
        if not isinstance(part, str) or model is None:
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        candidates = _unwrap(field.annotation)
        i += 1
        while candidates and typing.get_origin(candidates[0]) in (list, dict):
            if i == len(path):
                return None
            # a list index or a mapping key: on to the type of the items
            candidates = _unwrap(typing.get_args(candidates[0])[-1])
            i += 1
        value = _get(data, path[:i])
        models = [
            c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)
        ]
        if len(models) > 1 and isinstance(value, dict):
            models = [m for m in models if _tag_of(m) == value.get("type")]
        model = models[0] if len(models) == 1 else None
    return model


def _tag_of(model: type[BaseModel]) -> Any:
    field = model.model_fields.get("type")
    return typing.get_args(field.annotation)[0] if field is not None else None


def _get(data: Any, path: Path) -> Any:
    for part in path:
        in_dict = isinstance(data, dict) and isinstance(part, str) and part in data
        in_list = isinstance(data, list) and isinstance(part, int)
        if in_dict or (in_list and 0 <= part < len(data)):
            data = data[part]
        else:
            return None
    return data


def _data_path(loc: tuple, data: Any, missing: bool) -> tuple[Path, str | None, int]:
    """Split a pydantic error location into the data path, the union member it
    names and where that union sits (pydantic inserts the discriminator tag or a
    member label such as 'list[constrained-int]' wherever a union was tried)."""
    path: list[PathPart] = []
    label, union_at = None, 0
    cur = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(cur, dict) and part == cur.get("type") and not last:
            continue  # discriminator tag
        if isinstance(cur, dict) and isinstance(part, str) and part in cur:
            path.append(part)
            cur = cur[part]
        elif isinstance(cur, dict) and isinstance(part, str) and last and missing:
            path.append(part)  # the missing key
        elif isinstance(cur, list) and isinstance(part, int):
            path.append(part)
            cur = cur[part] if 0 <= part < len(cur) else None
        elif isinstance(part, str) and label is None:
            label, union_at = part, len(path)  # a union member
        else:
            break
    return tuple(path), label, union_at


def _suggest(word: Any, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _show(value: Any) -> str:
    """A value as the user wrote it, briefly."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


EXPECTED = {
    "int_type": "an integer",
    "int_from_float": "an integer",
    "int_parsing": "an integer",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a string",
    "list_type": "a list",
    "model_type": "a mapping",
    "dict_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _member(label: str) -> str:
    """'list[constrained-int]' -> 'a list of integers'."""
    base = label.replace("constrained-", "")
    names = {"int": "an integer", "float": "a number", "str": "a string"}
    if base.startswith("list[") and base.endswith("]"):
        inner = names.get(base[5:-1], base[5:-1]).split(" ", 1)[-1]
        return f"a list of {inner}s"
    return names.get(base, base)


def _quoted_scalar(text: str) -> bool:
    """Whether a string would be a number or boolean without its quotes."""
    if len(text) > 40 or "\n" in text:
        return False
    try:
        value = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.YAMLError:
        return False
    return isinstance(value, (int, float, bool))


def _message(err: dict, path: Path, data: Any) -> tuple[str, bool]:
    """A readable message for one pydantic error, and whether it concerns a key."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "extra_forbidden":
        model = _model_at(path[:-1], data)
        valid = [f for f in model.model_fields] if model else []
        hint = _suggest(path[-1], valid)
        listing = f"; valid fields: {', '.join(valid)}" if valid else ""
        return f"unknown field '{path[-1]}'{hint}{listing}", True
    if kind == "union_tag_invalid":
        tags = [t.strip(" '") for t in str(ctx.get("expected_tags", "")).split(",")]
        tag = ctx.get("tag")
        return (
            f"unknown type '{tag}'{_suggest(tag, tags)}; valid choices: {', '.join(tags)}",
            False,
        )
    if kind == "union_tag_not_found":
        return "missing 'type': every entry here is a mapping with a 'type' key", True
    if kind == "missing":
        return f"missing required field '{path[-1]}'", True
    if kind == "literal_error":
        if path == ("snncompile",):
            version = f"this snncompile reads version {FORMAT_VERSION}"
            return f"unsupported spec format version {_show(value)}; {version}", False
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = _suggest(value, choices) if isinstance(value, str) else ""
        return (
            f"unknown value {_show(value)}{hint}; valid choices: {', '.join(choices)}",
            False,
        )
    if kind in EXPECTED:
        hint = ""
        number = kind.startswith(("int", "float", "bool"))
        if number and isinstance(value, str) and _quoted_scalar(value):
            hint = " (in quotes it is a string: remove the quotes)"
        return f"expected {EXPECTED[kind]}, got {_show(value)}{hint}", False
    if kind in ("too_short", "too_long"):
        bound = ctx.get("min_length" if kind == "too_short" else "max_length")
        word = "at least" if kind == "too_short" else "at most"
        items = "item" if bound == 1 else "items"
        return (
            f"must have {word} {bound} {items}, got {ctx.get('actual_length')}",
            False,
        )
    msg = err["msg"]
    if msg.startswith("Value error, "):
        return msg[len("Value error, ") :], False
    if msg.startswith("Input should be "):
        msg = "must be " + msg[len("Input should be ") :]
    return f"{msg[0].lower()}{msg[1:]}, got {_show(value)}", False


def validate_data(data: Any, source: SourceMap) -> Spec:
    """Validate parsed data into a Spec; every error becomes a located Problem."""
    if not isinstance(data, dict):
        raise SpecError(
            [
                Problem(
                    source.file,
                    1,
                    1,
                    (),
                    f"a spec must be a mapping of fields, got {_show(data)}",
                )
            ]
        )
    try:
        spec = Spec.model_validate(data, strict=True)
    except ValidationError as exc:
        raise SpecError(
            _problems(exc.errors(include_url=False), data, source)
        ) from None
    spec._source = source
    return spec


def _looks_like(label: str, value: Any) -> bool:
    """Whether `value` is of the kind the union member `label` reads."""
    if label.startswith("list["):
        return isinstance(value, list)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _problems(errors: list[dict], data: Any, source: SourceMap) -> list[Problem]:
    located: list[tuple[Path, dict]] = []
    unions: dict[Path, list[tuple[Path, str, dict]]] = {}
    for err in errors:
        path, label, union_at = _data_path(err["loc"], data, err["type"] == "missing")
        if label is None:
            located.append((path, err))
        else:
            unions.setdefault(path[:union_at], []).append((path, label, err))
    for at, tried in unions.items():
        value = _get(data, at)
        fits = [(path, err) for path, label, err in tried if _looks_like(label, value)]
        if fits:
            located.extend(fits)
        else:
            members = dict.fromkeys(_member(label) for _, label, _ in tried)
            fake = {"type": "union", "msg": "", "input": value}
            located.append((at, dict(fake, expected=" or ".join(members))))
    problems, seen = [], set()
    for path, err in located:
        if err["type"] == "union_tag_invalid" and isinstance(_get(data, path), dict):
            path = path + ("type",)
        if err["type"] == "union":
            message, is_key = (
                f"expected {err['expected']}, got {_show(err['input'])}",
                False,
            )
        else:
            message, is_key = _message(err, path, data)
        if (path, message) in seen:
            continue
        seen.add((path, message))
        problems.append(source.problem(path, message, prefer_key=is_key))
    return problems


def load(path: str | FsPath) -> Spec:
    """Read and validate a spec file (.yaml, .yml or .json); raises SpecError."""
    file = str(path)
    try:
        text = FsPath(path).read_text(encoding="utf-8-sig")  # BOMs of some editors
    except FileNotFoundError:
        raise SpecError([Problem(file, None, None, (), "no such file")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError(
            [Problem(file, None, None, (), f"cannot read file: {err}")]
        ) from None
    fmt = "json" if file.lower().endswith(".json") else "yaml"
    data, source = parse_text(text, file, fmt)
    return validate_data(data, source)


def loads(text: str, file: str = "<string>", fmt: str = "yaml") -> Spec:
    """Validate a spec given as text."""
    data, source = parse_text(text, file, fmt)
    return validate_data(data, source)


def as_spec(spec: Spec | str | FsPath) -> Spec:
    """A Spec as given, or the spec file it names, loaded."""
    return spec if isinstance(spec, Spec) else load(spec)


def source_of(spec: Spec) -> SourceMap:
    """The SourceMap of a loaded spec (an empty one for specs built in code)."""
    return getattr(spec, "_source", None) or SourceMap(f"<spec {spec.name}>")


__all__ = [
    "SourceMap",
    "as_spec",
    "format_path",
    "load",
    "loads",
    "parse_text",
    "source_of",
    "validate_data",
]
