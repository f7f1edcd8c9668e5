"""JSON Schemas (draft 2020-12) derived from the types, and in agreement
with what the codec accepts."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, make_dataclass
from typing import Any, Literal, Optional

import pytest
from switchyard_sdk import decode, json_schema
from switchyard_sdk.codec import ParseError
from switchyard_sdk.schema import DIALECT, summary


class Unit(enum.Enum):
    """How a quantity is counted."""

    KG = "kg"
    PIECE = "piece"


@dataclass
class Line:
    """One line of a shipment.

    Quantities are whole units.
    """

    sku: str
    """The stock-keeping unit,
    as inventory knows it."""
    qty: int = field(metadata={"description": "How many."})
    unit: Unit = Unit.PIECE


@dataclass
class Address:
    city: str


@dataclass
class CreateShipment:
    """Ships an order to an address.

    A longer explanation that is not the summary.
    """

    order_id: str
    lines: list[Line]
    to: Optional[Address]
    note: str | None = None
    weight: float = 0.5
    labels: dict[str, str] = field(default_factory=dict)
    mode: Literal["road", "air"] = "road"
    extra: Any = None


def test_a_dataclass_is_an_object_with_required_fields_and_defs():
    schema = json_schema(CreateShipment)
    assert schema == {
        "$schema": DIALECT,
        "title": "CreateShipment",
        "description": "Ships an order to an address.",
        "type": "object",
        "properties": {
            "order_id": {"type": "string"},
            "lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}},
            "to": {"anyOf": [{"$ref": "#/$defs/Address"}, {"type": "null"}]},
            "note": {"type": ["string", "null"], "default": None},
            "weight": {"type": "number", "default": 0.5},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}, "default": {}},
            "mode": {"type": "string", "enum": ["road", "air"], "default": "road"},
            "extra": {"default": None},
        },
        "required": ["order_id", "lines"],
        "$defs": {
            "Line": {
                "title": "Line",
                "description": "One line of a shipment.",
                "type": "object",
                "properties": {
                    "sku": {
                        "type": "string",
                        "description": "The stock-keeping unit, as inventory knows it.",
                    },
                    "qty": {"type": "integer", "description": "How many."},
                    "unit": {"$ref": "#/$defs/Unit", "default": "piece"},
                },
                "required": ["sku", "qty"],
            },
            "Unit": {
                "title": "Unit",
                "description": "How a quantity is counted.",
                "type": "string",
                "enum": ["kg", "piece"],
            },
            "Address": {
                "title": "Address",
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }


def test_the_summary_is_the_first_line_of_the_docstring():
    assert summary(CreateShipment) == "Ships an order to an address."
    assert summary(Address) == ""  # the signature @dataclass writes is no docstring
    assert summary(dict) == ""


def test_plain_types():
    assert json_schema(int) == {"$schema": DIALECT, "type": "integer"}
    assert json_schema(None) == {"$schema": DIALECT, "type": "null"}
    assert json_schema(Any) == {"$schema": DIALECT}
    assert json_schema(dict) == {"$schema": DIALECT, "type": "object"}
    assert json_schema(list[Address]) == {
        "$schema": DIALECT,
        "type": "array",
        "items": {"$ref": "#/$defs/Address"},
        "$defs": {
            "Address": {
                "title": "Address",
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            }
        },
    }
    assert json_schema(int | str) == {"$schema": DIALECT, "anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert json_schema(Unit)["enum"] == ["kg", "piece"]
    assert json_schema(Optional[list[int]]) == {
        "$schema": DIALECT,
        "type": ["array", "null"],
        "items": {"type": "integer"},
    }


@dataclass
class Node:
    """A tree."""

    name: str
    children: list[Node] = field(default_factory=list)
    parent: Optional[Parent] = None


@dataclass
class Parent:
    node: Node


def test_recursion_refers_to_the_root_or_a_def():
    schema = json_schema(Node)
    assert schema["properties"]["children"] == {"type": "array", "items": {"$ref": "#"}, "default": []}
    assert schema["properties"]["parent"] == {
        "anyOf": [{"$ref": "#/$defs/Parent"}, {"type": "null"}],
        "default": None,
    }
    assert schema["$defs"]["Parent"]["properties"]["node"] == {"$ref": "#"}


def test_two_classes_of_one_name_get_two_defs():
    def make() -> type:
        @dataclass
        class Address:
            street: str

        return Address

    Other = make()

    Both = make_dataclass("Both", [("a", Address), ("b", Other)])

    defs = json_schema(Both)["$defs"]
    assert sorted(defs) == ["Address", "Address2"]
    assert "street" in defs["Address2"]["properties"]


SAMPLES: list[tuple[Any, Any]] = [
    (CreateShipment, {"order_id": "o", "lines": [], "to": None}),
    (CreateShipment, {"order_id": "o", "lines": [{"sku": "a", "qty": 1, "unit": "kg"}], "to": {"city": "x"}}),
    (CreateShipment, {"order_id": "o", "lines": [{"sku": "a", "qty": "1"}], "to": None}),
    (CreateShipment, {"order_id": "o", "lines": [{"sku": "a", "qty": True}], "to": None}),
    (CreateShipment, {"order_id": "o", "lines": [{"sku": "a", "qty": 1, "unit": "ton"}], "to": None}),
    (CreateShipment, {"order_id": "o", "lines": []}),
    (CreateShipment, {"lines": [], "to": None}),
    (CreateShipment, {"order_id": "o", "lines": [], "to": None, "mode": "sea"}),
    (CreateShipment, {"order_id": "o", "lines": [], "to": None, "weight": 2}),
    (CreateShipment, {"order_id": "o", "lines": [], "to": None, "labels": {"a": 1}}),
    (CreateShipment, {"order_id": "o", "lines": [], "to": None, "unknown": 1}),
    (CreateShipment, []),
    (Node, {"name": "a", "children": [{"name": "b", "children": [{"name": 1}]}]}),
    (Node, {"name": "a", "parent": {"node": {"name": "b"}}}),
    (Node, {"name": "a", "parent": {"node": {}}}),
    (list[int], [1, 2]),
    (list[int], [1, None]),
    (int | str, 1.5),
    (Optional[int], None),
    (dict[str, Unit], {"a": "kg", "b": "lb"}),
]


@pytest.mark.parametrize(("tp", "value"), SAMPLES)
def test_the_schema_accepts_exactly_what_the_codec_parses(tp: Any, value: Any):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema(tp)
    jsonschema.Draft202012Validator.check_schema(schema)
    try:
        decode(value, tp)
        parses = True
    except ParseError:
        parses = False
    assert jsonschema.Draft202012Validator(schema).is_valid(value) == parses
