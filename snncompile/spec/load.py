"""Load a spec from YAML or JSON with every error located in the file.

Steps, in order: read the text; parse it safely into nodes that remember their
line and column (YAML via PyYAML's safe composer, JSON via the json module with
the same composer used only for positions); build plain Python data while
refusing duplicate keys and non-plain tags; validate with pydantic; translate
every pydantic error into a `Problem` that points at the key or value.
"""

from __future__ import annotations

import difflib
import json
import typing
from pathlib import Path as FsPath
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import Path, PathPart, Problem, SpecError, format_path
from .schema import Spec

MAX_NODES = 100_000  # refuses alias bombs ("billion laughs")


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
class _Builder:
    """Turns a composed YAML node tree into plain data, recording positions."""

    def __init__(self, source: SourceMap):
        self.source = source
        self.constructor = yaml.SafeLoader("")
        self.count = 0
        self.problems: list[Problem] = []

    def build(self, node: yaml.Node, path: Path) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise SpecError(
                [self.source.problem(path, f"file has more than {MAX_NODES} values")]
            )
        self.source.values.setdefault(
            path, (node.start_mark.line + 1, node.start_mark.column + 1)
        )
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                key = self._key(key_node, path)
                if key is None:
                    continue
                kpath = path + (key,)
                mark = (key_node.start_mark.line + 1, key_node.start_mark.column + 1)
                if key in out:
                    first = self.source.keys[kpath][0]
                    self.problems.append(
                        Problem(
                            self.source.file,
                            *mark,
                            kpath,
                            f"duplicate key '{key}' (first on line {first})",
                        )
                    )
                    continue
                self.source.keys[kpath] = mark
                out[key] = self.build(value_node, kpath)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
        try:
            return self.constructor.construct_object(node, deep=True)
        except yaml.YAMLError as err:
            self.problems.append(self.source.problem(path, f"cannot read value: {err}"))
            return None

    def _key(self, node: yaml.Node, path: Path) -> str | None:
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":str"):
            return node.value
        self.problems.append(
            Problem(self.source.file, line, column, path, "keys must be plain strings")
        )
        return None


def _compose(text: str, source: SourceMap) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        reason = err.problem or str(err)
        raise SpecError(
            [Problem(source.file, line, column, (), f"invalid YAML: {reason}")]
        ) from None
    except yaml.YAMLError as err:
        raise SpecError(
            [Problem(source.file, None, None, (), f"invalid YAML: {err}")]
        ) from None


def _parse_json(text: str, source: SourceMap) -> Any:
    def no_duplicates(pairs):
        out = {}
        for key, value in pairs:
            if key in out:
                raise ValueError(f"duplicate key '{key}'")
            out[key] = value
        return out

    try:
        data = json.loads(text, object_pairs_hook=no_duplicates)
    except json.JSONDecodeError as err:
        raise SpecError(
            [
                Problem(
                    source.file, err.lineno, err.colno, (), f"invalid JSON: {err.msg}"
                )
            ]
        ) from None
    except ValueError as err:
        raise SpecError(
            [Problem(source.file, None, None, (), f"invalid JSON: {err}")]
        ) from None
    try:  # JSON is (nearly) YAML: reuse the composer for positions only
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is not None:
            _Builder(source).build(node, ())
    except (yaml.YAMLError, SpecError):
        pass
    return data


def parse_text(text: str, file: str, fmt: str = "yaml") -> tuple[Any, SourceMap]:
    """Parse spec text into plain data and a SourceMap (raises SpecError)."""
    source = SourceMap(file)
    if fmt == "json":
        return _parse_json(text, source), source
    node = _compose(text, source)
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
        if candidates and typing.get_origin(candidates[0]) is list:
            if i == len(path):
                return None
            candidates = _unwrap(typing.get_args(candidates[0])[0])
            i += 1  # skip the list index
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
        if isinstance(data, dict) and isinstance(part, str) and part in data:
            data = data[part]
        elif isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data):
            data = data[part]
        else:
            return None
    return data


def _data_path(loc: tuple, data: Any) -> Path:
    """Drop pydantic's union tags from an error location, keeping the data path."""
    path: list[PathPart] = []
    cur = data
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(cur, dict) and isinstance(part, str):
            if part in cur:
                path.append(part)
                cur = cur[part]
            elif part == cur.get("type") and not last:
                continue  # discriminator tag
            else:
                path.append(part)  # a missing or unknown key
                cur = None
        elif isinstance(cur, list) and isinstance(part, int):
            path.append(part)
            cur = cur[part] if 0 <= part < len(cur) else None
        else:
            break  # inside a scalar: the rest names union members
    return tuple(path)


def _suggest(word: Any, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _message(err: dict, path: Path, data: Any) -> tuple[str, bool]:
    """A readable message for one pydantic error, and whether it concerns a key."""
    kind = err["type"]
    ctx = err.get("ctx") or {}
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
        return f"{err['msg'].lower()}, got {err.get('input')!r}", False
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"expected a mapping, got {type(err.get('input')).__name__}", False
    msg = err["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    shown = err.get("input")
    if not isinstance(shown, (dict, list)):
        msg += f", got {shown!r}"
    return msg[0].lower() + msg[1:], False


def validate_data(data: Any, source: SourceMap) -> Spec:
    """Validate parsed data into a Spec; every error becomes a located Problem."""
    if not isinstance(data, dict):
        raise SpecError(
            [Problem(source.file, 1, 1, (), "a spec must be a mapping of fields")]
        )
    try:
        spec = Spec.model_validate(data)
    except ValidationError as exc:
        problems = []
        seen = set()
        for err in exc.errors(include_url=False):
            path = _data_path(err["loc"], data)
            if err["type"] == "union_tag_invalid" and isinstance(
                _get(data, path), dict
            ):
                path = path + ("type",)
            message, is_key = _message(err, path, data)
            if (path, message) in seen:
                continue
            seen.add((path, message))
            problems.append(source.problem(path, message, prefer_key=is_key))
        raise SpecError(problems) from None
    spec._source = source
    return spec


def load(path: str | FsPath) -> Spec:
    """Read and validate a spec file (.yaml, .yml or .json); raises SpecError."""
    file = str(path)
    try:
        text = FsPath(path).read_text(encoding="utf-8")
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


def source_of(spec: Spec) -> SourceMap:
    """The SourceMap of a loaded spec (an empty one for specs built in code)."""
    return getattr(spec, "_source", None) or SourceMap(f"<spec {spec.name}>")


__all__ = [
    "load",
    "loads",
    "parse_text",
    "validate_data",
    "source_of",
    "SourceMap",
    "format_path",
]
