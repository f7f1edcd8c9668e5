"""Bodies parse into the handler's types like serde would, and an error
names the JSON path of the value at fault."""

from __future__ import annotations

import doctest
import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Optional

import pytest
from switchyard_sdk import ParseError, codec, decode, encode


class Unit(enum.Enum):
    KG = "kg"
    PIECE = "piece"


class Priority(enum.IntEnum):
    LOW = 1
    HIGH = 2


@dataclass
class Line:
    sku: str
    qty: int
    unit: Unit = Unit.PIECE


@dataclass
class Address:
    city: str
    zip: str | None = None


@dataclass
class Shipment:
    order_id: str
    lines: list[Line]
    to: Address
    note: Optional[str]
    weight: float = 0.0
    tags: dict[str, int] = field(default_factory=dict)
    express: bool = False


def problem(value: Any, tp: Any) -> str:
    with pytest.raises(ParseError) as e:
        decode(value, tp)
    return str(e.value)


GOOD = {
    "order_id": "o1",
    "lines": [{"sku": "apple", "qty": 2}, {"sku": "flour", "qty": 3, "unit": "kg"}],
    "to": {"city": "Lyon"},
    "note": None,
}


def test_a_body_parses_into_nested_dataclasses_with_defaults():
    shipment = decode(GOOD, Shipment)
    assert shipment == Shipment(
        order_id="o1",
        lines=[Line("apple", 2), Line("flour", 3, Unit.KG)],
        to=Address("Lyon"),
        note=None,
    )


def test_unknown_members_are_ignored():
    assert decode({**GOOD, "extra": [1, 2], "to": {"city": "Lyon", "x": 1}}, Shipment).to == Address("Lyon")


def test_an_optional_field_without_a_default_may_be_left_out():
    body = {k: v for k, v in GOOD.items() if k != "note"}
    assert decode(body, Shipment).note is None


def test_errors_name_the_path_of_the_value_at_fault():
    bad = {**GOOD, "lines": [{"sku": "apple", "qty": 2}, {"sku": "flour", "qty": "two"}]}
    assert problem(bad, Shipment) == '/lines/1/qty: expected an integer, got "two"'
    assert problem({**GOOD, "to": {"zip": "69000"}}, Shipment) == "/to: missing field `city`"
    assert problem({**GOOD, "to": {"city": "Lyon", "zip": 69000}}, Shipment) == (
        "/to/zip: expected a string or null, got 69000"
    )
    assert problem({"lines": []}, Shipment) == "missing field `order_id`"
    assert problem([GOOD], Shipment) == "expected an object, got an array"
    assert problem({**GOOD, "lines": {"sku": "a"}}, Shipment) == "/lines: expected an array, got an object"
    assert problem({**GOOD, "tags": {"a/b": "x"}}, Shipment) == '/tags/a~1b: expected an integer, got "x"'


def test_ints_are_json_integers_and_bool_is_not_one():
    assert decode(3, int) == 3
    assert problem(True, int) == "expected an integer, got true"
    assert problem(1.5, int) == "expected an integer, got 1.5"
    assert problem(None, int) == "expected an integer, got null"


def test_floats_take_any_number_and_strings_no_numbers():
    assert decode(2, float) == 2.0 and isinstance(decode(2, float), float)
    assert problem(False, float) == "expected a number, got false"
    assert problem(3, str) == "expected a string, got 3"
    assert problem("yes", bool) == 'expected a boolean, got "yes"'


def test_enums_parse_by_value():
    assert decode("kg", Unit) is Unit.KG
    assert decode(2, Priority) is Priority.HIGH
    assert problem("KG", Unit) == 'expected one of "kg", "piece", got "KG"'
    assert problem(True, Priority) == "expected one of 1, 2, got true"
    assert problem({**GOOD, "lines": [{"sku": "a", "qty": 1, "unit": "ton"}]}, Shipment) == (
        '/lines/0/unit: expected one of "kg", "piece", got "ton"'
    )


def test_literals_unions_and_optionals():
    assert decode("b", Literal["a", "b"]) == "b"
    assert problem("c", Literal["a", "b"]) == 'expected one of "a", "b", got "c"'
    assert decode("x", int | str) == "x"
    assert decode(4, int | str) == 4
    assert problem(1.5, int | str) == "expected an integer or a string, got 1.5"
    assert decode(None, Optional[Line]) is None
    assert decode({"sku": "a", "qty": 1}, Line | None) == Line("a", 1)
    assert problem({"sku": "a"}, Line | None) == "missing field `qty`"
    assert problem(3, Line | None) == "expected an object or null, got 3"


def test_collections():
    assert decode([1, 2], tuple[int, ...]) == (1, 2)
    assert decode([1, 2], Sequence[int]) == [1, 2]
    assert problem([1, "x"], list[int]) == '/1: expected an integer, got "x"'
    assert decode({"a": [1]}, dict[str, list[int]]) == {"a": [1]}
    assert problem({"a": [1, None]}, dict[str, list[int]]) == "/a/1: expected an integer, got null"


def test_any_dict_and_list_take_the_value_as_it_is():
    assert decode({"x": [1]}, Any) == {"x": [1]}
    assert decode({"x": [1]}, dict) == {"x": [1]}
    assert decode([{"x": 1}], list) == [{"x": 1}]
    assert problem([1], dict) == "expected an object, got an array"
    assert decode(None, None) is None
    assert decode(5, Annotated[int, "units"]) == 5
    assert decode(5, Annotated[int, {"unhashable": []}]) == 5


@dataclass
class Qty:
    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be at least 1")


@dataclass
class Order:
    lines: list[Qty]


def test_a_value_error_of_the_class_is_invalid_at_its_path():
    assert problem({"lines": [{"n": 1}, {"n": 0}]}, Order) == "/lines/1: n must be at least 1"


def test_recursive_dataclasses():
    @dataclass
    class Node:
        name: str
        children: list[Node] = field(default_factory=list)

    tree = decode({"name": "a", "children": [{"name": "b", "children": [{"name": 3}]}]}, Any)
    assert problem(tree, Node) == "/children/0/children/0/name: expected a string, got 3"
    assert decode({"name": "a", "children": [{"name": "b"}]}, Node) == Node("a", [Node("b")])


def test_types_without_a_json_form_are_refused_when_the_shape_is_made():
    with pytest.raises(TypeError, match="has no JSON form"):
        codec.shape_of(set[int])
    with pytest.raises(TypeError, match="keys are strings"):
        codec.shape_of(dict[int, str])

    @dataclass
    class Bad:
        when: complex

    with pytest.raises(TypeError, match="Bad: .*complex"):
        codec.shape_of(Bad)
    # Not cached half-made: it fails again, the same way.
    with pytest.raises(TypeError, match="Bad"):
        codec.shape_of(Bad)


def test_encode_turns_dataclasses_and_enums_into_json_values():
    shipment = decode(GOOD, Shipment)
    assert encode(shipment) == {
        "order_id": "o1",
        "lines": [
            {"sku": "apple", "qty": 2, "unit": "piece"},
            {"sku": "flour", "qty": 3, "unit": "kg"},
        ],
        "to": {"city": "Lyon", "zip": None},
        "note": None,
        "weight": 0.0,
        "tags": {},
        "express": False,
    }
    assert encode({Unit.KG: (1, 2)}) == {"kg": [1, 2]}
    assert decode(encode(shipment), Shipment) == shipment
    with pytest.raises(TypeError, match="object has no JSON form|a object"):
        encode(object())
    with pytest.raises(ValueError):
        codec.dumps(math.nan)
    assert codec.dumps({"é": [1, None]}) == '{"é":[1,null]}'


def test_json_text_without_nan():
    with pytest.raises(ValueError, match="NaN is not JSON"):
        codec.loads('{"x": NaN}')


def test_the_doc_examples_hold():
    assert doctest.testmod(codec).failed == 0
