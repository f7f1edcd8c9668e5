"""JSON Schemas (draft 2020-12) of the types handlers take and return.

The schema says what :mod:`.codec` accepts, so the host's check of a body
(before the module runs) and the module's own parsing agree:

- a dataclass is ``{"type": "object", "properties": ..., "required": [...]}``
  with ``title`` = the class name and ``description`` = the first paragraph
  of its docstring; a field's description is its ``metadata["description"]``
  or the docstring written under it, its ``default`` the default value;
  ``required`` lists the fields without a default that are not ``Optional``;
  unknown members are allowed (they are ignored);
- a dataclass or enum used inside another type sits in ``$defs`` under its
  name and is referred to as ``{"$ref": "#/$defs/Name"}`` (the root type
  itself as ``"#"``);
- ``int`` is ``integer``, ``float`` ``number``, ``str`` ``string``, ``bool``
  ``boolean``, ``None`` ``null``; ``list[T]`` an array of ``items``;
  ``dict[str, T]`` an object of ``additionalProperties``;
- ``Optional[T]`` is ``"type": [T, "null"]`` where ``T`` is a plain type,
  else ``anyOf`` with ``{"type": "null"}``; other unions are ``anyOf``;
- an enum (and ``Literal``) is ``enum`` of its values;
- ``Any`` is the empty schema (anything).
"""

from __future__ import annotations

import ast
import dataclasses
import enum
import inspect
import textwrap
from typing import Any

from .codec import (
    Anything,
    ArrayOf,
    Choice,
    EnumShape,
    LiteralShape,
    MapOf,
    Record,
    Scalar,
    Shape,
    encode,
    shape_of,
)

#: The dialect every schema declares.
DIALECT = "https://json-schema.org/draft/2020-12/schema"


def json_schema(tp: Any) -> dict[str, Any]:
    """The JSON Schema of type hint ``tp`` as a dict.

    >>> json_schema(list[int])
    {'$schema': 'https://json-schema.org/draft/2020-12/schema', 'type': 'array', 'items': {'type': 'integer'}}
    """
    return _Writer(shape_of(tp)).document()


def summary(tp: Any) -> str:
    """The one-line summary of a message whose body is ``tp``: the first
    line of its dataclass's (or enum's) docstring; empty for other types."""
    if not isinstance(tp, type) or not (dataclasses.is_dataclass(tp) or issubclass(tp, enum.Enum)):
        return ""
    doc = docstring(tp)
    return doc.splitlines()[0].strip() if doc else ""


def docstring(cls: type) -> str | None:
    """``cls``'s own docstring, cleaned; ``None`` when it has none (the
    signature text ``@dataclass`` puts there does not count)."""
    doc = cls.__dict__.get("__doc__")
    if not isinstance(doc, str) or not doc.strip():
        return None
    if dataclasses.is_dataclass(cls) and doc.startswith(cls.__name__ + "("):
        return None
    return inspect.cleandoc(doc)


def first_paragraph(doc: str) -> str:
    """The first paragraph of a cleaned docstring, as one line."""
    paragraph = doc.strip().split("\n\n", 1)[0]
    return " ".join(line.strip() for line in paragraph.splitlines())


def attribute_docs(cls: type) -> dict[str, str]:
    """The docstrings written under the fields of ``cls`` (first paragraph
    each), read from its source; empty when the source is not available."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    node = tree.body[0] if tree.body else None
    if not isinstance(node, ast.ClassDef):
        return {}
    docs: dict[str, str] = {}
    for field, after in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(field, ast.AnnAssign)
            and isinstance(field.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[field.target.id] = first_paragraph(inspect.cleandoc(after.value.value))
    return docs


class _Writer:
    """Writes one schema document: the root inline, every other named type
    (dataclass, enum) once under ``$defs``."""

    def __init__(self, root: Shape) -> None:
        self.root = root
        self.defs: dict[str, dict[str, Any]] = {}
        self.names: dict[int, str] = {}

    def document(self) -> dict[str, Any]:
        root = self.root
        body = self.named(root) if isinstance(root, (Record, EnumShape)) else self.schema(root)
        document: dict[str, Any] = {"$schema": DIALECT, **body}
        if self.defs:
            document["$defs"] = self.defs
        return document

    def schema(self, shape: Shape) -> dict[str, Any]:
        match shape:
            case Record() | EnumShape():
                return {"$ref": self.ref(shape)}
            case Anything():
                return {}
            case Scalar(json_type=json_type):
                return {"type": json_type}
            case ArrayOf(item=item):
                return {"type": "array"} | ({} if item is None else {"items": self.schema(item)})
            case MapOf(value=value):
                return {"type": "object"} | (
                    {} if value is None else {"additionalProperties": self.schema(value)}
                )
            case LiteralShape(values=values):
                return _enum(values)
            case Choice(options=options, nullable=nullable):
                return self.choice(options, nullable)
        raise TypeError(f"no schema for {shape!r}")

    def choice(self, options: list[Shape], nullable: bool) -> dict[str, Any]:
        schemas = [self.schema(o) for o in options]
        if not nullable:
            return schemas[0] if len(schemas) == 1 else {"anyOf": schemas}
        if len(schemas) == 1:
            only = schemas[0]
            if isinstance(only.get("type"), str) and not {"enum", "const", "$ref"} & only.keys():
                return only | {"type": [only["type"], "null"]}
            if not only:
                return only  # anything, null included
        return {"anyOf": [*schemas, {"type": "null"}]}

    def ref(self, shape: Record | EnumShape) -> str:
        if shape is self.root:
            return "#"
        name = self.names.get(id(shape))
        if name is None:
            name = base = shape.cls.__name__
            taken = set(self.names.values())
            n = 1
            while name in taken:
                n += 1
                name = f"{base}{n}"
            self.names[id(shape)] = name
            self.defs[name] = {}  # placeholder: a recursive type refers to itself
            self.defs[name] = self.named(shape)
        return f"#/$defs/{name}"

    def named(self, shape: Record | EnumShape) -> dict[str, Any]:
        cls = shape.cls
        out: dict[str, Any] = {"title": cls.__name__}
        doc = docstring(cls)
        if doc:
            out["description"] = first_paragraph(doc)
        if isinstance(shape, EnumShape):
            return out | _enum(shape.values)
        out["type"] = "object"
        notes = attribute_docs(cls)
        properties: dict[str, Any] = {}
        for f in shape.fields:
            prop = dict(self.schema(f.shape))
            description = f.field.metadata.get("description") or notes.get(f.name)
            if description:
                prop["description"] = description
            default = _default(f.field)
            if default is not dataclasses.MISSING:
                prop["default"] = default
            properties[f.name] = prop
        out["properties"] = properties
        required = [f.name for f in shape.fields if f.required]
        if required:
            out["required"] = required
        return out


def _enum(values: list[Any]) -> dict[str, Any]:
    """``enum`` of ``values``, with their ``type`` when they share one."""
    kinds = {_json_type(v) for v in values}
    out: dict[str, Any] = {}
    if len(kinds) == 1:
        out["type"] = kinds.pop()
    out["enum"] = [encode(v) for v in values]
    return out


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "boolean"
        case int():
            return "integer"
        case float():
            return "number"
        case str():
            return "string"
    return "object"


def _default(field: dataclasses.Field[Any]) -> Any:
    """A field's default as JSON, if it has one that is plain data (a
    ``default_factory`` only when it is ``list``, ``dict``, ``tuple`` or
    ``set``: another factory's value is not a constant)."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory in (list, dict, tuple, set):
        value = field.default_factory()
    else:
        return dataclasses.MISSING
    try:
        return encode(value)
    except TypeError:
        return dataclasses.MISSING
