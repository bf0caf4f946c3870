"""Load a spec from YAML or JSON with every error located in the file.

Steps, in order: read the text; parse it safely, remembering the line and column
of every key and value (YAML through PyYAML's safe composer, JSON through the
json module plus a small scan for positions); build plain Python data while
refusing duplicate keys, non-plain tags and absurd nesting; validate with
pydantic in strict mode (no silent "5" -> 5 or true -> 1); translate every
pydantic error into a `Problem` that points at the key or value.

Limits come before the work they bound: a file over `MAX_BYTES` is refused
before it is parsed, the YAML composer stops after `MAX_NODES` values, and the
forms of numbers and booleans that YAML 1.1 reads differently from YAML 1.2 and
JSON (`025`, `1:30`, `yes`, `0x1F`, `1_000`) are errors instead of silent
reinterpretations.

Overrides (`--set path.to.field=value`, `apply_overrides`) change the parsed
data before validation, so they are checked like the file; a problem they
cause names the `--set` argument instead of a line of the file.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import json
import os
import re
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path as FsPath
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .errors import Path, PathPart, Problem, SpecError, format_path
from .schema import FORMAT_VERSION, Spec

MAX_NODES = 100_000  # refuses alias bombs ("billion laughs") and huge lists
MAX_DEPTH = 50  # refuses absurd nesting before Python's recursion limit does
MAX_BYTES = 1 << 20  # a spec file is refused unread above 1 MiB (about 7 s to parse)
MAX_SEED = 2**64 - 1  # the largest seed torch.manual_seed takes
OVERRIDES_ENV = "SNNCOMPILE_SET"  # the CLI's --set, for every process it starts

YAML_TAG = "tag:yaml.org,2002:"
PLAIN_TAGS = {YAML_TAG + t for t in ("str", "int", "float", "bool", "null")}


class SourceMap:
    """Where each key and value of a spec sits in its file (1-based line/column)."""

    def __init__(self, file: str):
        self.file = file
        self.keys: dict[Path, tuple[int, int]] = {}
        self.values: dict[Path, tuple[int, int]] = {}
        self.text: str | None = None  # the file as read (load and loads keep it)
        self.data: Any = None  # the parsed data after overrides: what was validated
        self.assignments: list[str] = []  # the overrides applied, in order
        self.overrides: dict[Path, str] = {}  # field path -> "--set PATH=VALUE"

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
        """A located problem: at the `--set` argument that wrote `path` (or a
        mapping above it), else in the file."""
        for cut in range(len(path), 0, -1):
            label = self.overrides.get(path[:cut])
            if label is not None:
                return Problem(label, None, None, path, message)
        if len(path) > 1:  # e.g. a field the new `type` of its mapping requires
            near = [
                label
                for where, label in self.overrides.items()
                if where[: len(path) - 1] == path[:-1]
            ]
            if near:
                message += f" (after {', '.join(dict.fromkeys(near))})"
        line, column = self.locate(path, prefer_key)
        return Problem(self.file, line, column, path, message)


# ------------------------------------------------------------------------- parsing
class _Bounded:
    """A composer that refuses absurd nesting and more than MAX_NODES values
    as it goes."""

    depth = 0
    composed = 0

    def compose_node(self, parent, index):
        self.depth += 1
        self.composed += 1
        try:
            if self.composed > MAX_NODES:  # stop early, before the builder would
                raise _TooMany(self.peek_event().start_mark)
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


class _Loader(_Bounded, yaml.SafeLoader):
    """SafeLoader reading only plain data: YAML 1.2 floats such as 1e-3 are
    numbers, dates stay strings, and nesting is bounded."""

    yaml_implicit_resolvers: typing.ClassVar[dict] = {
        first: [(tag, regex) for tag, regex in resolvers if "timestamp" not in tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }


_Loader.add_implicit_resolver(  # 1e-3, 5E+2: floats in YAML 1.2 and JSON
    YAML_TAG + "float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)

try:  # libyaml's parser (about 12 times faster) under the same Python composer
    from yaml._yaml import CParser

    class _FastLoader(
        _Bounded,
        yaml.composer.Composer,
        CParser,
        yaml.constructor.SafeConstructor,
        yaml.resolver.Resolver,
    ):
        """_Loader on libyaml's events: the same nodes, tags and checks; a
        file it cannot read is read again by _Loader for the messages."""

        yaml_implicit_resolvers = _Loader.yaml_implicit_resolvers

        def __init__(self, stream):
            CParser.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

except ImportError:  # PyYAML without libyaml
    _FastLoader = None


class _TooMany(Exception):
    """The composer met more than MAX_NODES values (at `mark`)."""

    def __init__(self, mark):
        super().__init__()
        self.mark = mark


# YAML 1.2 core schema (and JSON) forms; YAML 1.1 reads more plain scalars as
# numbers and booleans, and some of those differently ("025" is 21 in 1.1, 25 in 1.2)
_DECIMAL = re.compile(r"[-+]?[0-9]+")
_FLOAT_12 = re.compile(
    r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)"
)
_BOOL_12 = ("true", "True", "TRUE", "false", "False", "FALSE")


def _yaml11_only(node: yaml.Node, value: Any) -> str | None:
    """Why a plain scalar is refused: a number or boolean in a form that YAML 1.1
    reads differently from YAML 1.2 and JSON (None: it is fine)."""
    if not isinstance(node, yaml.ScalarNode) or node.style not in (None, ""):
        return None  # quoted: a string, the same in every YAML (libyaml: "" is plain)
    text, tag = node.value, node.tag
    quote = f"or quote it for the string '{text}'"
    if tag == YAML_TAG + "bool" and text not in _BOOL_12:
        word = "true" if value else "false"
        return (
            f"'{text}' is a boolean only in YAML 1.1 (YAML 1.2 and JSON read a "
            f"string): write {word}, {quote}"
        )
    if tag == YAML_TAG + "int" and not (
        _DECIMAL.fullmatch(text) and not re.fullmatch(r"[-+]?0[0-9]+", text)
    ):
        digits = text.lstrip("+-")
        if ":" in text:
            form = f"as the base-60 (sexagesimal) number {value}"
        elif digits[:2] == "0b":
            form = f"as the binary number {value}"
        elif digits[:2] == "0x":
            return (
                f"{text} is hexadecimal: a spec holds decimal numbers only (as "
                f"JSON does); write {value}, {quote}"
            )
        elif re.fullmatch(r"[-+]?0[0-9_]+", text):
            decimal = int(text.replace("_", ""))
            return (
                f"{text} has a leading zero: YAML 1.1 reads it as the octal number "
                f"{value}, YAML 1.2 as {decimal}; write {value} or {decimal} "
                f"without leading zeros, {quote}"
            )
        else:  # digit separators: 1_000
            form = f"as {value}"
        return (
            f"YAML 1.1 reads {text} {form}, YAML 1.2 and JSON do not: write the "
            f"decimal {value}, {quote}"
        )
    if tag == YAML_TAG + "float" and not _FLOAT_12.fullmatch(text):
        form = "as the base-60 (sexagesimal) number" if ":" in text else "as"
        return (
            f"YAML 1.1 reads {text} {form} {value!r}, YAML 1.2 and JSON do not: "
            f"write {value!r}, {quote}"
        )
    return None


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
            value = self.constructor.construct_object(node, deep=True)
        except ValueError as err:  # e.g. an integer beyond Python's digit limit
            self._at(node, path, f"cannot read this value: {err}")
            return None
        reason = _yaml11_only(node, value)
        if reason is not None:
            self._at(node, path, reason)
            return None
        return value

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
    if _FastLoader is not None:
        try:
            return yaml.compose(text, Loader=_FastLoader)
        except _TooMany as err:
            line, column = err.mark.line + 1, err.mark.column + 1
            message = f"file has more than {MAX_NODES} values"
            raise SpecError([Problem(file, line, column, (), message)]) from None
        except Exception:  # noqa: BLE001, S110 - read again below, for the message
            pass
    try:
        return yaml.compose(text, Loader=_Loader)
    except _TooMany as err:
        line, column = err.mark.line + 1, err.mark.column + 1
        message = f"file has more than {MAX_NODES} values"
        raise SpecError([Problem(file, line, column, (), message)]) from None
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


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count:,} bytes"


def _too_large(file: str, size: str) -> SpecError:
    return SpecError(
        [
            Problem(
                file,
                None,
                None,
                (),
                f"the spec is {size}; a spec may hold at most "
                f"{_size(MAX_BYTES)} ({MAX_BYTES:,} bytes)",
            )
        ]
    )


def parse_text(text: str, file: str, fmt: str = "yaml") -> tuple[Any, SourceMap]:
    """Parse spec text into plain data and a SourceMap (raises SpecError)."""
    if len(text) > MAX_BYTES:
        raise _too_large(file, f"{_size(len(text))} of text")
    source = SourceMap(file)
    source.text = text
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
    """'list[constrained-int]' -> 'a list of integers'; "literal['auto']" -> "'auto'"."""
    base = label.replace("constrained-", "")
    if base.startswith("literal[") and base.endswith("]"):
        return " or ".join(f"'{c}'" for c in re.findall(r"'([^']*)'", base))
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
        spec = _SPEC_VALIDATE(Spec, data, strict=True)
    except ValidationError as exc:
        raise SpecError(
            _problems(exc.errors(include_url=False), data, source)
        ) from None
    problems = _limits(spec, source)
    if problems:
        raise SpecError(problems)
    source.data = data
    spec._source = source
    return spec


def _limits(spec: Spec, source: SourceMap) -> list[Problem]:
    """What the schema accepts but snncompile cannot run."""
    problems = []
    seed = spec.train.seed
    if seed > MAX_SEED:
        problems.append(
            source.problem(
                ("train", "seed"),
                f"must be at most 2**64 - 1 = {MAX_SEED} (the largest seed torch "
                f"takes), got {_show(seed)}",
            )
        )
    return problems


def _looks_like(label: str, value: Any) -> bool:
    """Whether `value` is of the kind the union member `label` reads."""
    if label.startswith("list["):
        return isinstance(value, list)
    if label.startswith("literal[") or label.endswith("str"):
        return isinstance(value, str)
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
        if len({label for _, label, _ in tried}) == 1:  # a member chosen by a
            fits = [(path, err) for path, _, err in tried]  # callable discriminator
        # a string that is no choice of a literal member, where numbers (or
        # lists) are the other members: say all that fits ("an integer or 'auto'")
        words = all(
            label.startswith("literal[")
            for _, label, _ in tried
            if _looks_like(label, value)
        ) and len(fits) < len(tried)
        if fits and not words:
            located.extend(fits)
        else:
            members = dict.fromkeys(_member(label) for _, label, _ in tried)
            fake = {"type": "union", "msg": "", "input": value}
            hint = ""
            numbers = any(_looks_like(label, 0) for _, label, _ in tried)
            if numbers and isinstance(value, str) and _quoted_scalar(value):
                hint = " (in quotes it is a string: remove the quotes)"
            expected = " or ".join(members) + f", got {_show(value)}{hint}"
            located.append((at, dict(fake, expected=expected)))
    problems, seen = [], set()
    for path, err in located:
        if err["type"] == "union_tag_invalid" and isinstance(_get(data, path), dict):
            path = path + ("type",)
        if err["type"] == "union":
            message, is_key = f"expected {err['expected']}", False
        else:
            message, is_key = _message(err, path, data)
        if (path, message) in seen:
            continue
        seen.add((path, message))
        problems.append(source.problem(path, message, prefer_key=is_key))
    return problems


def _read(file: str) -> str:
    """The text of a spec file, refused unread above MAX_BYTES."""
    try:
        with open(file, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_BYTES:
                raise _too_large(file, f"a file of {_size(size)}")
            raw = handle.read(MAX_BYTES + 1)  # a pipe or a device has no size
    except FileNotFoundError:
        raise SpecError([Problem(file, None, None, (), "no such file")]) from None
    except OSError as err:
        raise SpecError(
            [Problem(file, None, None, (), f"cannot read file: {err}")]
        ) from None
    if len(raw) > MAX_BYTES:
        raise _too_large(file, f"more than {_size(MAX_BYTES)}")
    try:
        return raw.decode("utf-8-sig")  # BOMs of some editors
    except UnicodeDecodeError as err:
        raise SpecError(
            [Problem(file, None, None, (), f"cannot read file: {err}")]
        ) from None


def load(path: str | FsPath, overrides: Sequence[str] | None = None) -> Spec:
    """Read and validate a spec file (.yaml, .yml or .json); raises SpecError.

    `overrides`: "path.to.field=value" assignments applied to the parsed data
    before validation (see apply_overrides), after those the command line gave
    for this file (`--set`). `effective_text(spec)` is the spec they make."""
    file = str(path)
    text = _read(file)
    fmt = "json" if file.lower().endswith(".json") else "yaml"
    data, source = parse_text(text, file, fmt)
    assignments = [*_cli_overrides(file), *(overrides or ())]
    if assignments:
        data = apply_overrides(data, assignments, source)
    return validate_data(data, source)


def loads(
    text: str,
    file: str = "<string>",
    fmt: str = "yaml",
    overrides: Sequence[str] | None = None,
) -> Spec:
    """Validate a spec given as text (with `overrides` as in load)."""
    data, source = parse_text(text, file, fmt)
    if overrides:
        data = apply_overrides(data, overrides, source)
    return validate_data(data, source)


# ------------------------------------------------------------------------- overrides
def _label(assignment: str) -> str:
    """How a problem names the assignment: "--set train.optimizer.lr=abc"."""
    shown = assignment if len(assignment) <= 80 else assignment[:77] + "..."
    return "--set " + shown.replace("\n", "\\n")


def split_assignment(assignment: str) -> tuple[list[str], str]:
    """'layers[1].beta=0.9' -> (['layers', '1', 'beta'], '0.9'); raises SpecError."""
    where, sep, value = assignment.partition("=")
    dotted = re.sub(r"\[([0-9]+)\]", r".\1", where.strip())
    parts = dotted.split(".")
    if not sep or not all(re.fullmatch(r"[A-Za-z0-9_]+", part) for part in parts):
        raise SpecError(
            [
                Problem(
                    _label(assignment),
                    None,
                    None,
                    (),
                    "expected PATH=VALUE with a dotted field path, e.g. "
                    "train.optimizer.lr=0.001, layers.1.beta=0.9 or layers.fc1.beta=0.9",
                )
            ]
        )
    return parts, value


def _layer_names(items: list) -> dict[str, int]:
    """Name -> index of the layers of a list: their own names, else the default
    names analysis gives (type prefix and the next free number, as ir/analyze)."""
    from ..types import REGISTRY

    taken = {x.get("name") for x in items if isinstance(x, dict)}
    counters: dict[str, int] = {}
    names: dict[str, int] = {}
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        name = item.get("name")
        if name is None:
            kind = item.get("type")
            prefix = item.get("use") if kind == "block" else None
            if kind in REGISTRY:
                prefix = REGISTRY[kind].prefix
            if not isinstance(prefix, str):
                continue
            while True:
                counters[prefix] = counters.get(prefix, 0) + 1
                name = f"{prefix}{counters[prefix]}"
                if name not in taken:
                    break
        if isinstance(name, str):
            names.setdefault(name, index)
    return names


def _index(items: list, part: str, path: Path, label: str) -> int:
    """The list index `part` names: a number, or a layer's name."""
    if part.isdigit():
        if int(part) < len(items):
            return int(part)
        last = f"0 to {len(items) - 1}" if items else "none"
        message = (
            f"no item {part}: {format_path(path)} has {len(items)} (indices {last})"
        )
    else:
        names = _layer_names(items)
        if part in names:
            return names[part]
        listing = f"; names: {', '.join(names)}" if names else ""
        message = (
            f"no item named '{part}' in {format_path(path)}"
            f"{_suggest(part, list(names))}{listing}"
        )
    raise SpecError([Problem(label, None, None, (*path, part), message)])


def _fresh(model: type[BaseModel] | None, key: str) -> dict:
    """A mapping to fill in where `key` of `model` is absent: its default's
    fields where that is a model (an unset `optimizer` is Adam: {type: adam})."""
    field = model.model_fields.get(key) if model is not None else None
    if field is not None and not field.is_required():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            return default.model_dump(mode="json", exclude_unset=True)
    return {}


def _parse_value(text: str, label: str, path: Path) -> Any:
    """A --set value as YAML (a scalar, or a flow list or mapping), checked as
    the file is; empty means null."""
    try:
        node = _compose(text, label)
    except SpecError as err:
        raise SpecError(
            [
                dataclasses.replace(p, line=None, column=None, path=path)
                for p in err.problems
            ]
        ) from None
    if node is None:
        return None
    builder = _Builder(SourceMap(label))
    value = builder.build(node, path)
    if builder.problems:
        raise SpecError(
            [dataclasses.replace(p, line=None, column=None) for p in builder.problems]
        )
    return value


def _assign(data: dict, assignment: str, source: SourceMap | None) -> None:
    """Apply one "path=value" to `data` in place."""
    label = _label(assignment)
    parts, text = split_assignment(assignment)
    cur: Any = data
    path: Path = ()
    created: list[Path] = []
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        key: PathPart
        if isinstance(cur, list):
            key = _index(cur, part, path, label)
        elif isinstance(cur, dict):
            key = part
            model = _model_at(path, data)
            if key not in cur and model is not None and key not in model.model_fields:
                fields = list(model.model_fields)
                tag = _tag_of(model)
                of = (
                    f" of a {tag} layer"
                    if path[:1] in (("layers",), ("blocks",))
                    else ""
                )
                raise SpecError(
                    [
                        Problem(
                            label,
                            None,
                            None,
                            (*path, key),
                            f"unknown field '{key}'{of}{_suggest(key, fields)}; "
                            f"valid fields: {', '.join(fields)}",
                        )
                    ]
                )
            if not last and cur.get(key) is None:
                cur[key] = _fresh(model, key)
                created.append((*path, key))
        else:
            kind = "a mapping or list" if i else "a mapping"
            raise SpecError(
                [
                    Problem(
                        label,
                        None,
                        None,
                        path,
                        f"cannot set {'.'.join(parts)}: {format_path(path)} is "
                        f"{_show(cur)}, not {kind}",
                    )
                ]
            )
        if last:
            cur[key] = _parse_value(text, label, (*path, key))
        else:
            cur = cur[key]
        path = (*path, key)
    if source is not None:
        for where in (*created, path):
            source.overrides.setdefault(where, label)
        source.overrides[path] = label  # a later --set of a path wins
        source.assignments.append(assignment)


def apply_overrides(
    data: dict, assignments: Sequence[str], source: SourceMap | None = None
) -> dict:
    """A copy of parsed spec data with each "path.to.field=value" applied, in
    order (a later one wins).

    The path is dotted field names; in a list, an index (`layers.1.beta`, or
    `layers[1].beta`) or a layer's name (`layers.fc1.beta`, default names such
    as `lif1` too). The value is read as YAML, with the file's rules: a number,
    true/false, null (or nothing), a string, or a flow list or mapping
    (`input.shape=[1, 28, 28]`, `train.optimizer={type: sgd, lr: 0.1}`). A field
    absent from the data is added; an unset block is filled from its default
    first (`train.optimizer.lr=0.01` keeps the default Adam). Unknown fields
    are refused here with a suggestion; values are checked when the result is
    validated (validate_data): pass the file's `source` so that those problems
    name the `--set` argument. Raises SpecError with every problem found.
    """
    if not isinstance(data, dict):
        raise SpecError(
            [
                Problem(
                    _label(assignments[0]) if assignments else "--set",
                    None,
                    None,
                    (),
                    f"a spec must be a mapping of fields, got {_show(data)}",
                )
            ]
        )
    result = copy.deepcopy(data)
    problems: list[Problem] = []
    for assignment in assignments:
        try:
            _assign(result, assignment, source)
        except SpecError as err:
            problems.extend(err.problems)
    if problems:
        raise SpecError(problems)
    return result


@contextlib.contextmanager
def cli_overrides(paths: Sequence[str], assignments: Sequence[str]) -> Iterator[None]:
    """While it lasts, load() applies `assignments` to the spec files `paths`,
    in this process and in the processes it starts (torchrun's ranks, bench's
    children): the command line's `--set`, for commands that load their spec
    deep inside."""
    if not assignments:
        yield
        return
    for assignment in assignments:
        split_assignment(assignment)  # a malformed one is an error before any work
    previous = os.environ.get(OVERRIDES_ENV)
    os.environ[OVERRIDES_ENV] = json.dumps(
        {"paths": [os.path.realpath(p) for p in paths], "set": list(assignments)}
    )
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(OVERRIDES_ENV, None)
        else:
            os.environ[OVERRIDES_ENV] = previous


def _cli_overrides(file: str) -> list[str]:
    """The command line's --set for this spec file (see cli_overrides)."""
    raw = os.environ.get(OVERRIDES_ENV)
    if not raw:
        return []
    try:
        given = json.loads(raw)
        if os.path.realpath(file) in given["paths"]:
            return [str(a) for a in given["set"]]
    except (ValueError, KeyError, TypeError):
        pass
    return []


def effective_text(spec: Spec) -> str:
    """The spec as validated, as YAML text: the file unchanged where nothing
    overrode it (comments kept); else the data after the overrides, headed by
    comments naming the file and each --set; for a spec built in code or
    changed since loading, every field (defaults filled in)."""
    source = getattr(spec, "_source", None)
    dump = lambda data: yaml.safe_dump(
        data, sort_keys=False, default_flow_style=None, allow_unicode=True, width=88
    )
    if source is None or source.text is None or source.data is None:
        return dump(spec.model_dump(mode="json"))
    if not source.assignments:
        return source.text if source.text.endswith("\n") else source.text + "\n"
    header = [f"# the spec {json.dumps(source.file)} with overrides:"]
    header += [f"#   --set {json.dumps(a)}" for a in source.assignments]
    return "\n".join(header) + "\n" + dump(source.data)


# ------------------------------------------------------------------------- specs in code
# Spec(...) and Spec.model_validate(...) in Python report problems as a file
# does (field path and message, one per line) instead of pydantic's dump: the
# same translation, with "<spec NAME>" for the file.
# (the originals: `__wrapped__` where this module was loaded before, as by reload)
_SPEC_INIT = getattr(Spec.__init__, "__wrapped__", Spec.__init__)
_SPEC_VALIDATE = getattr(
    Spec.model_validate.__func__, "__wrapped__", Spec.model_validate.__func__
)
_SPEC_VALIDATE_JSON = getattr(
    Spec.model_validate_json.__func__,
    "__wrapped__",
    Spec.model_validate_json.__func__,
)


def _plain(value: Any) -> Any:
    """Data with models given in code turned into mappings (to walk error paths)."""
    if isinstance(value, BaseModel):
        return _plain(value.model_dump(exclude_unset=True))
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _code_source(data: Any) -> SourceMap:
    name = data.get("name") if isinstance(data, dict) else None
    return SourceMap(f"<spec {name}>" if isinstance(name, str) else "<spec>")


def _code_checked(spec: Spec, data: Any) -> Spec:
    problems = _limits(spec, _code_source(data))
    if problems:
        raise SpecError(problems)
    return spec


def _code_error(exc: ValidationError, data: Any) -> SpecError:
    plain = _plain(data)
    problems = _problems(exc.errors(include_url=False), plain, _code_source(plain))
    return SpecError(problems or [Problem("<spec>", None, None, (), str(exc))])


def _spec_init(self, /, **data: Any) -> None:
    try:
        _SPEC_INIT(self, **data)
    except ValidationError as exc:
        raise _code_error(exc, data) from None
    _code_checked(self, data)


def _spec_model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Spec:
    try:
        spec = _SPEC_VALIDATE(cls, obj, *args, **kwargs)
    except ValidationError as exc:
        raise _code_error(exc, obj) from None
    return _code_checked(spec, obj)


def _spec_model_validate_json(cls, text: Any, *args: Any, **kwargs: Any) -> Spec:
    try:
        data = json.loads(text)
    except (ValueError, TypeError):
        data = None
    try:
        spec = _SPEC_VALIDATE_JSON(cls, text, *args, **kwargs)
    except ValidationError as exc:
        raise _code_error(exc, data) from None
    return _code_checked(spec, data)


_spec_init.__doc__ = _SPEC_INIT.__doc__
_spec_init.__wrapped__ = _SPEC_INIT
_spec_model_validate.__wrapped__ = _SPEC_VALIDATE
_spec_model_validate_json.__wrapped__ = _SPEC_VALIDATE_JSON
Spec.__init__ = _spec_init
Spec.model_validate = classmethod(_spec_model_validate)
Spec.model_validate_json = classmethod(_spec_model_validate_json)


def as_spec(spec: Spec | str | FsPath) -> Spec:
    """A Spec as given, or the spec file it names, loaded."""
    return spec if isinstance(spec, Spec) else load(spec)


def source_of(spec: Spec) -> SourceMap:
    """The SourceMap of a loaded spec (an empty one for specs built in code)."""
    return getattr(spec, "_source", None) or SourceMap(f"<spec {spec.name}>")


__all__ = [
    "MAX_BYTES",
    "SourceMap",
    "apply_overrides",
    "as_spec",
    "cli_overrides",
    "effective_text",
    "format_path",
    "load",
    "loads",
    "parse_text",
    "source_of",
    "split_assignment",
    "validate_data",
]
