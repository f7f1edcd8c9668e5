"""JSON to Python values and back, driven by type hints.

A handler's body type (and the type a document is read into) is turned once
into a :class:`Shape`; the shape parses a decoded JSON value, naming the JSON
Pointer of the first value that does not fit::

    body of shipping/create: /lines/0/qty: expected an integer, got "two"

What a type means, the same here and in the JSON Schema :mod:`.schema`
derives from it:

- a dataclass is an object: its fields by name, unknown members ignored; a
  field with a default (or a ``default_factory``) may be left out, and so may
  an ``Optional`` one (it is then ``None``); a ``ValueError`` raised by the
  class (e.g. in ``__post_init__``) makes the value invalid at its path;
- ``str``, ``bool``; ``int`` (a JSON integer, ``true`` is not one);
  ``float`` (any JSON number);
- ``list[T]``, ``Sequence[T]``, ``tuple[T, ...]``; ``dict[str, T]``,
  ``Mapping[str, T]``;
- ``Optional[T]`` / ``T | None``, and unions (the first that fits);
- an ``Enum`` by its members' values, ``Literal[...]`` by its values;
- ``Any``, ``object``, bare ``dict`` / ``list``: taken as they are (after
  checking it is an object / array).

Going out, :func:`encode` turns dataclasses (recursively), enums (their
values), tuples and sets into JSON values; ``None`` is ``null``.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import enum
import json
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union

_NOTHING = dataclasses.MISSING


class ParseError(ValueError):
    """A JSON value that does not fit the type it is parsed into.

    ``path`` is the JSON Pointer of the value at fault (``""``: the whole
    value), ``problem`` what is wrong with it.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


def pointer(path: str, token: str | int) -> str:
    """``path`` extended by one JSON Pointer reference token."""
    return f"{path}/{str(token).replace('~', '~0').replace('/', '~1')}"


def show(value: Any) -> str:
    """A short rendering of a JSON value for an error message."""
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class Shape:
    """How values of one Python type read from JSON."""

    def decode(self, value: Any, path: str) -> Any:
        """The Python value of JSON ``value`` found at ``path``."""
        raise NotImplementedError

    def expected(self) -> str:
        """What a fitting JSON value is, for error messages ("an integer")."""
        raise NotImplementedError

    def refuse(self, value: Any, path: str) -> ParseError:
        """The error for ``value`` not being what this shape expects."""
        return ParseError(path, f"expected {self.expected()}, got {show(value)}")


class Anything(Shape):
    """``Any`` / ``object``: every JSON value, as it is."""

    def decode(self, value: Any, path: str) -> Any:
        return value

    def expected(self) -> str:
        return "any value"


class Scalar(Shape):
    """A JSON scalar: ``string``, ``integer``, ``number``, ``boolean`` or ``null``."""

    _WORDS = {
        "string": "a string",
        "integer": "an integer",
        "number": "a number",
        "boolean": "a boolean",
        "null": "null",
    }

    def __init__(self, json_type: str) -> None:
        self.json_type = json_type

    def decode(self, value: Any, path: str) -> Any:
        match self.json_type:
            case "string" if isinstance(value, str):
                return value
            case "integer" if isinstance(value, int) and not isinstance(value, bool):
                return value
            case "number" if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            case "boolean" if isinstance(value, bool):
                return value
            case "null" if value is None:
                return None
        raise self.refuse(value, path)

    def expected(self) -> str:
        return self._WORDS[self.json_type]


class ArrayOf(Shape):
    """A JSON array; ``item`` ``None``: items of any kind."""

    def __init__(self, item: Shape | None, as_tuple: bool = False) -> None:
        self.item = item
        self.as_tuple = as_tuple

    def decode(self, value: Any, path: str) -> Any:
        if not isinstance(value, list):
            raise self.refuse(value, path)
        item = self.item
        items = value if item is None else [item.decode(v, pointer(path, i)) for i, v in enumerate(value)]
        return tuple(items) if self.as_tuple else items

    def expected(self) -> str:
        return "an array"


class MapOf(Shape):
    """A JSON object read as a ``dict``; ``value`` ``None``: values of any kind."""

    def __init__(self, value: Shape | None) -> None:
        self.value = value

    def decode(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise self.refuse(value, path)
        shape = self.value
        if shape is None:
            return value
        return {k: shape.decode(v, pointer(path, k)) for k, v in value.items()}

    def expected(self) -> str:
        return "an object"


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: ``true`` is not ``1``."""
    return isinstance(a, bool) == isinstance(b, bool) and a == b


class EnumShape(Shape):
    """An ``Enum``, by the values of its members."""

    def __init__(self, cls: type[enum.Enum]) -> None:
        self.cls = cls
        self.members = list(cls)
        if not self.members:
            raise TypeError(f"enum {cls.__qualname__} has no members")

    @property
    def values(self) -> list[Any]:
        return [m.value for m in self.members]

    def decode(self, value: Any, path: str) -> Any:
        for member in self.members:
            if _same(member.value, value):
                return member
        raise self.refuse(value, path)

    def expected(self) -> str:
        return "one of " + ", ".join(show(v) for v in self.values)


class LiteralShape(Shape):
    """``Literal[...]``: one of the given values."""

    def __init__(self, values: tuple[Any, ...]) -> None:
        for v in values:
            if isinstance(v, enum.Enum) or not isinstance(v, (str, int, bool)) and v is not None:
                raise TypeError(f"Literal values must be str, int, bool or None, not {v!r}")
        self.values = list(values)

    def decode(self, value: Any, path: str) -> Any:
        for v in self.values:
            if _same(v, value):
                return v
        raise self.refuse(value, path)

    def expected(self) -> str:
        return "one of " + ", ".join(show(v) for v in self.values)


class Choice(Shape):
    """A union: ``null`` if ``nullable``, else the first option that fits."""

    def __init__(self, options: list[Shape], nullable: bool) -> None:
        self.options = options
        self.nullable = nullable

    def decode(self, value: Any, path: str) -> Any:
        if value is None and self.nullable:
            return None
        if len(self.options) == 1:
            try:
                return self.options[0].decode(value, path)
            except ParseError as e:
                if self.nullable and e.path == path and e.problem.startswith("expected "):
                    raise self.refuse(value, path) from None  # "... or null"
                raise
        for option in self.options:
            try:
                return option.decode(value, path)
            except ParseError:
                continue
        raise self.refuse(value, path)

    def expected(self) -> str:
        words = [o.expected() for o in self.options] + (["null"] if self.nullable else [])
        return " or ".join(words)


@dataclasses.dataclass(eq=False)
class FieldShape:
    """One field of a dataclass as a member of a JSON object."""

    name: str
    shape: Shape
    #: The ``dataclasses.Field``: defaults and metadata.
    field: dataclasses.Field[Any]
    #: Must be present (no default, not ``Optional``).
    required: bool
    #: Absent means ``None`` (``Optional`` without a default).
    none_when_absent: bool


class Record(Shape):
    """A dataclass as a JSON object. Its fields are filled in after the
    record is cached, so a dataclass may refer to itself."""

    def __init__(self, cls: type) -> None:
        self.cls = cls
        self.fields: list[FieldShape] = []

    def decode(self, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            raise self.refuse(value, path)
        args: dict[str, Any] = {}
        for f in self.fields:
            if f.name in value:
                args[f.name] = f.shape.decode(value[f.name], pointer(path, f.name))
            elif f.required:
                raise ParseError(path, f"missing field `{f.name}`")
            elif f.none_when_absent:
                args[f.name] = None
        try:
            return self.cls(**args)
        except ValueError as e:
            # The class's own check (__post_init__) refused it.
            raise ParseError(path, str(e)) from None

    def expected(self) -> str:
        return "an object"


_PRIMITIVES: dict[Any, str] = {str: "string", bool: "boolean", int: "integer", float: "number"}
_SEQUENCES = (list, collections.abc.Sequence, collections.abc.MutableSequence)
_MAPPINGS = (dict, collections.abc.Mapping, collections.abc.MutableMapping)
_ANY = Anything()
_cache: dict[Any, Shape] = {}


def shape_of(tp: Any) -> Shape:
    """The shape of type hint ``tp``; a ``TypeError`` names a type that has
    no JSON form. Shapes are built once per type and cached."""
    try:
        cached = _cache.get(tp)
    except TypeError:  # an unhashable hint (e.g. Annotated with a dict)
        return _build(tp)
    if cached is None:
        cached = _cache[tp] = _build(tp)
    return cached


def _build(tp: Any) -> Shape:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:  # the metadata is for other tools
        return shape_of(args[0])
    if tp is Any or tp is object:
        return _ANY
    if tp is None or tp is type(None):
        return Scalar("null")
    if tp in _PRIMITIVES:
        return Scalar(_PRIMITIVES[tp])
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return EnumShape(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _record(tp)
    if tp in _SEQUENCES:
        return ArrayOf(None)
    if tp in _MAPPINGS:
        return MapOf(None)
    if origin is Union or origin is types.UnionType:
        nullable = type(None) in args
        options = [shape_of(a) for a in args if a is not type(None)]
        return Choice(options, nullable)
    if origin is Literal:
        return LiteralShape(args)
    if origin in _SEQUENCES:
        return ArrayOf(shape_of(args[0]) if args else None)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return ArrayOf(shape_of(args[0]), as_tuple=True)
        raise TypeError(f"{tp!r} has no JSON form here: use tuple[T, ...] or a dataclass")
    if origin in _MAPPINGS:
        if args and args[0] is not str:
            raise TypeError(f"{tp!r}: JSON object keys are strings, use dict[str, ...]")
        return MapOf(shape_of(args[1]) if args else None)
    raise TypeError(
        f"{tp!r} has no JSON form: use a dataclass, str, int, float, bool, None, an Enum, "
        "Literal, list[T], dict[str, T], Optional[T] or Any"
    )


def _record(cls: type) -> Record:
    record = Record(cls)
    _cache[cls] = record  # before the fields: a field may refer to the class
    try:
        hints = _hints(cls)
    except NameError as e:
        del _cache[cls]
        raise TypeError(f"the type hints of {cls.__qualname__} do not resolve: {e}") from None
    try:
        for f in dataclasses.fields(cls):
            if not f.init:
                continue
            shape = shape_of(hints[f.name])
            has_default = f.default is not _NOTHING or f.default_factory is not _NOTHING
            nullable = (isinstance(shape, Choice) and shape.nullable) or (
                isinstance(shape, Scalar) and shape.json_type == "null"
            )
            record.fields.append(
                FieldShape(
                    name=f.name,
                    shape=shape,
                    field=f,
                    required=not has_default and not nullable,
                    none_when_absent=not has_default and nullable,
                )
            )
    except TypeError as e:
        del _cache[cls]
        raise TypeError(f"{cls.__qualname__}: {e}") from None
    return record


def _hints(cls: type) -> dict[str, Any]:
    """The resolved field hints of ``cls``; a class defined in a function may
    name itself in a string annotation (it is not in the module's globals)."""
    try:
        return typing.get_type_hints(cls, include_extras=True)
    except NameError:
        return typing.get_type_hints(cls, localns={cls.__name__: cls}, include_extras=True)


def decode(value: Any, tp: Any) -> Any:
    """JSON ``value`` (as :func:`json.loads` returns it) parsed into ``tp``.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Line:
    ...     sku: str
    ...     qty: int = 1
    >>> decode({"sku": "apple"}, list[Line])
    Traceback (most recent call last):
    ...
    switchyard_sdk.codec.ParseError: expected an array, got an object
    >>> decode([{"sku": "apple", "extra": 1}], list[Line])
    [Line(sku='apple', qty=1)]
    """
    return shape_of(tp).decode(value, "")


def encode(value: Any) -> Any:
    """``value`` as a JSON value: dataclasses become objects (recursively),
    enums their values, tuples and sets arrays; a ``TypeError`` names what has
    no JSON form."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, enum.Enum):
        return encode(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {_key(k): encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [encode(v) for v in value]
    raise TypeError(f"a {type(value).__name__} has no JSON form")


def _key(key: Any) -> str:
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, str):
        return key
    raise TypeError(f"an object key must be a string, not {key!r}")


def dumps(value: Any) -> str:
    """``value`` as compact JSON text (:func:`encode` first; NaN and
    infinities are refused, as JSON has none)."""
    return json.dumps(encode(value), ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def loads(text: str) -> Any:
    """JSON text as a value (``NaN`` and ``Infinity`` are not JSON)."""
    return json.loads(text, parse_constant=_no_constant)
