"""The {{name}} module. Owns command topic `{{name}}`; listens to
`orders.events`/`placed` as an example of a subscription.

Test natively: `python3 -m pytest -q plugins/{{name}}`. Build the component
(what the manifest's `build` runs):

    componentize-py -d wit -w module componentize -p plugins/{{name}} -p plugins/sdk-py app \
        -o plugins/target/python/{{name}}.wasm
"""

from dataclasses import dataclass
from typing import Any

from switchyard_sdk import Ctx, Invalid, Module, Rejected, export

EVENTS = "{{name}}.events"


@dataclass
class Create:
    """Creates an item."""

    id: str
    """The item's id, unique in this module."""
    note: str
    """Free text kept with the item."""


@dataclass
class Get:
    """One item by its id."""

    id: str


@dataclass
class Item:
    """An item as stored."""

    id: str
    note: str


@dataclass
class Created:
    """An item was created."""

    id: str


module = Module("{{name}}", "0.1.0")
module.emits_event(EVENTS, "created", Created)


@module.command("{{name}}", "create")
def create(ctx: Ctx, cmd: Create) -> Item:
    if not cmd.id:
        raise Invalid("id must not be empty")
    if ctx.get("items", cmd.id) is not None:
        raise Rejected(f"item '{cmd.id}' already exists")
    item = Item(id=cmd.id, note=cmd.note)
    # expected=0: must still not exist at commit. If another message created
    # it meanwhile, this is a version conflict (transient): the host runs the
    # message again and the check above answers "already exists". Any other
    # error (store down, value too large) keeps its own kind.
    ctx.put("items", item.id, item, expected=0)
    ctx.emit(EVENTS, "created", Created(id=item.id))
    return item


@module.command("{{name}}", "get")
def get(ctx: Ctx, query: Get) -> Item:
    found = ctx.get("items", query.id, Item)
    if found is None:
        raise Rejected(f"unknown item '{query.id}'")
    return found.value


@module.on_event("orders.events", "placed")
def on_order_placed(ctx: Ctx, order: dict[str, Any]) -> None:
    ctx.info(f"an order was placed: {order}")


# The component's `describe` and `handle` (componentize-py looks for
# `WitWorld` here); None natively, where the tests use switchyard_sdk.testing.
WitWorld = export(module)
