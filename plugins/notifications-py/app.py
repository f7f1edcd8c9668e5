"""The notifications module, in Python: one notification document per order.

Subscribes to `orders.events`: `placed`, `confirmed` and `rejected` each
update the order's notification in this module's own `notifications`
collection (the text a customer would be sent, and the history of what
happened); other order events are acknowledged and ignored. Owns command
topic `notifications`: `get {order_id}` answers the document.

Written with the Python SDK (`plugins/sdk-py`) against world `module` of WIT
switchyard:module@0.2.0: `describe` declares a JSON Schema per message,
derived from the dataclasses below, so the host checks bodies before the
module runs. Built into a component with componentize-py (see README.md
beside this file); tested natively with `python3 -m pytest plugins/notifications-py`.
"""

from dataclasses import dataclass, field
from enum import Enum

from switchyard_sdk import Ctx, Module, Rejected, export

COLLECTION = "notifications"
ORDER_EVENTS = "orders.events"


class Status(Enum):
    """Where an order stands, as the order events tell it."""

    PLACED = "placed"
    CONFIRMED = "confirmed"
    REJECTED = "rejected"


TEXTS = {
    Status.PLACED: "We received your order {order_id}.",
    Status.CONFIRMED: "Your order {order_id} is confirmed.",
    Status.REJECTED: "Sorry, your order {order_id} could not be fulfilled.",
}


def _check_order_id(order_id: str) -> None:
    """Refuses an empty id (a ValueError here makes the body invalid)."""
    if not order_id:
        raise ValueError("order_id must not be empty")


@dataclass
class OrderEvent:
    """An order event; only the order it is about matters here."""

    order_id: str
    """The order's id."""

    def __post_init__(self) -> None:
        _check_order_id(self.order_id)


@dataclass
class GetNotification:
    """The notification of one order."""

    order_id: str
    """The order's id."""

    def __post_init__(self) -> None:
        _check_order_id(self.order_id)


@dataclass
class Entry:
    """One order event, as it arrived."""

    event: Status
    """Which event."""
    at_ms: int
    """When it was handled, in milliseconds since the Unix epoch."""
    id: str
    """The event's message id."""


@dataclass
class Notification:
    """What a customer is told about an order, and what happened to it."""

    order_id: str
    status: Status
    """The order's fate as far as known: a late `placed` does not undo it."""
    text: str
    """The text a customer would be sent."""
    history: list[Entry] = field(default_factory=list)
    """Every order event, once each, in the order they arrived."""


module = Module("notifications", "0.2.0")


@module.on_event(ORDER_EVENTS, Status.PLACED.value)
@module.on_event(ORDER_EVENTS, Status.CONFIRMED.value)
@module.on_event(ORDER_EVENTS, Status.REJECTED.value)
def on_order_event(ctx: Ctx, event: OrderEvent) -> None:
    happened = Status(ctx.subtopic)
    order_id = event.order_id
    current = ctx.get(COLLECTION, order_id, Notification)
    if current is None:
        doc = Notification(order_id, happened, TEXTS[happened].format(order_id=order_id))
        version = 0
    else:
        doc, version = current.value, current.version
    # A redelivered event (same id) is dropped by the host's inbox; this
    # guards against the same transition arriving under another id.
    if any(entry.event is happened for entry in doc.history):
        return
    doc.history.append(Entry(event=happened, at_ms=ctx.now_ms(), id=ctx.id))
    # `placed` may arrive after `confirmed` under a partition key: the last
    # word on the order's fate wins over `placed`.
    if happened is not Status.PLACED:
        doc.status = happened
        doc.text = TEXTS[happened].format(order_id=order_id)
    # Expected version: 0 (must not exist) or the one read; if another
    # message wrote meanwhile this is a conflict and the host runs it again.
    ctx.put(COLLECTION, order_id, doc, expected=version)
    ctx.info(f"notification for {order_id}: {doc.status.value}")


@module.command("notifications", "get")
def get(ctx: Ctx, query: GetNotification) -> Notification:
    found = ctx.get(COLLECTION, query.order_id, Notification)
    if found is None:
        raise Rejected(f"no notification for order '{query.order_id}'")
    return found.value


# The component's `describe` and `handle` (componentize-py looks for
# `WitWorld` here); None in native tests, which use switchyard_sdk.testing.
WitWorld = export(module)
