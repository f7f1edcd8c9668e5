"""Registration, describe and dispatch, as the component's exports see them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pytest
from switchyard_sdk import Ctx, Direction, Invalid, Module, export
from switchyard_sdk.schema import DIALECT
from switchyard_sdk.testing import Kit


@dataclass
class Create:
    """Creates an item.

    Second paragraph.
    """

    id: str
    note: str = ""


@dataclass
class Item:
    """An item as stored."""

    id: str
    note: str


@dataclass
class Placed:
    """An order was placed."""

    order_id: str


@dataclass
class Created:
    """An item was created."""

    id: str


def build() -> Module:
    module = Module("items", "1.2.3")

    @module.command("items", "create")
    def create(ctx: Ctx, cmd: Create) -> Item:
        return Item(cmd.id, cmd.note)

    @module.command("items", "count")
    def count(ctx: Ctx, body: dict) -> int:
        return len(body)

    @module.on_event("orders.events", "placed")
    @module.on_event("orders.events", "confirmed")
    def on_order(ctx: Ctx, event: Placed) -> None:
        ctx.info(f"{ctx.subtopic} {event.order_id}")

    module.emits("audit")
    module.emits_event("items.events", "created", Created)
    return module


def test_describe_declares_topics_and_every_message_with_its_schemas():
    d = build().describe()
    assert (d.name, d.version) == ("items", "1.2.3")
    assert d.topics == ["items"]
    assert d.subscribes == ["orders.events"]
    assert d.emits == ["audit", "items.events"]
    listed = [(m.direction, m.topic, m.subtopic, m.summary) for m in d.messages]
    assert listed == [
        (Direction.COMMAND, "items", "create", "Creates an item."),
        (Direction.COMMAND, "items", "count", ""),
        (Direction.CONSUMES, "orders.events", "confirmed", "An order was placed."),
        (Direction.CONSUMES, "orders.events", "placed", "An order was placed."),
        (Direction.EMITS, "items.events", "created", "An item was created."),
    ]
    create, count, confirmed, _, created = d.messages
    assert json.loads(create.body_schema or "") == {
        "$schema": DIALECT,
        "title": "Create",
        "description": "Creates an item.",
        "type": "object",
        "properties": {"id": {"type": "string"}, "note": {"type": "string", "default": ""}},
        "required": ["id"],
    }
    assert json.loads(create.answer_schema or "")["title"] == "Item"
    assert json.loads(count.body_schema or "") == {"$schema": DIALECT, "type": "object"}
    assert json.loads(count.answer_schema or "") == {"$schema": DIALECT, "type": "integer"}
    assert confirmed.answer_schema is None  # events have no answer
    assert json.loads(created.body_schema or "")["required"] == ["id"]
    assert created.answer_schema is None


def test_schema_finds_bodies_and_answers():
    module = build()
    assert module.schema("items", "create")["title"] == "Create"  # type: ignore[index]
    assert module.schema("items", "create", answer=True)["title"] == "Item"  # type: ignore[index]
    assert module.schema("items.events", "created")["title"] == "Created"  # type: ignore[index]
    assert module.schema("items", "nope") is None


def test_a_handler_without_hints_takes_any_body_and_declares_no_answer():
    module = Module("m", "0.1.0")
    module.command("m", "echo", lambda ctx, body: body)
    (echo,) = module.describe().messages
    assert json.loads(echo.body_schema or "") == {"$schema": DIALECT}
    assert echo.answer_schema is None
    assert Kit(module).command("m", "echo", [1, {"a": None}]) == [1, {"a": None}]


def test_a_none_answer_is_null():
    module = Module("m", "0.1.0")

    @module.command("m", "noop")
    def noop(ctx: Ctx, body: Any) -> None:
        return None

    assert json.loads(module.describe().messages[0].answer_schema or "") == {
        "$schema": DIALECT,
        "type": "null",
    }
    assert Kit(module).command("m", "noop", {}) is None


def test_unknown_subtopics_of_owned_topics_are_invalid_and_of_subscriptions_ignored():
    kit = Kit(build())
    assert kit.error("items", "delete", {}) == Invalid(
        "unknown subtopic 'delete' for topic 'items' (known: create, count)"
    )
    assert kit.event("orders.events", "cancelled", {"whatever": 1}) is None
    assert kit.error("billing", "pay", {}) == Invalid("module items does not handle topic 'billing'")
    kit.event("orders.events", "confirmed", {"order_id": "o1"})
    assert kit.logged("confirmed o1")


def test_bodies_that_do_not_parse_are_invalid_naming_the_field():
    kit = Kit(build())
    assert kit.error("items", "create", {"note": "x"}) == Invalid("body of items/create: missing field `id`")
    assert kit.error("items", "create", {"id": 7}) == Invalid(
        "body of items/create: /id: expected a string, got 7"
    )
    error = kit.error("items", "create", raw="{not json")
    assert isinstance(error, Invalid) and str(error).startswith("body of items/create is not JSON:")
    assert kit.error("items", "count", [1]) == Invalid(
        "body of items/count: expected an object, got an array"
    )


def test_an_answer_that_does_not_serialise_is_invalid():
    module = Module("m", "0.1.0")
    module.command("m", "bad", lambda ctx, body: {"when": object()})
    error = Kit(module).error("m", "bad", {})
    assert isinstance(error, Invalid) and str(error).startswith("result of m/bad does not serialise:")


def test_registration_refuses_what_the_host_would():
    module = build()
    with pytest.raises(ValueError, match="registered twice"):
        module.command("items", "create", lambda ctx, body: None)
    with pytest.raises(ValueError, match="registered twice"):
        module.emits_event("items.events", "created", dict)
    with pytest.raises(ValueError, match=r"\[A-Za-z0-9._-\]"):
        module.command("items", "", lambda ctx, body: None)
    with pytest.raises(ValueError, match=r"\[A-Za-z0-9._-\]"):
        module.emits("bad topic")
    with pytest.raises(TypeError, match=r"must take \(ctx, body\)"):
        module.command("items", "one", lambda ctx: None)
    with pytest.raises(TypeError, match="command items/sets: .*has no JSON form"):

        @module.command("items", "sets")
        def sets(ctx: Ctx, body: set[int]) -> None: ...

    with pytest.raises(TypeError, match="emits items.events/odd: .*has no JSON form"):
        module.emits_event("items.events", "odd", complex)


def test_the_decorator_returns_the_function_unchanged():
    module = Module("m", "0.1.0")

    def f(ctx: Ctx, body: Any) -> Any:
        return body

    assert module.command("m", "f")(f) is f
    assert module.on_event("e", "f", f) is f


def test_export_is_none_natively():
    assert export(build()) is None
