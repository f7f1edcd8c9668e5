"""The notifications module, in Python: one notification document per order.

Subscribes to `orders.events`: `placed`, `confirmed` and `rejected` each
update the order's notification in this module's own `notifications`
collection (the text a customer would be sent, and the history of what
happened). Owns command topic `notifications`: `get {order_id}` answers the
document.

Written against world `module` of WIT switchyard:module@0.1.0
(`wit/deps/switchyard-module-0.1.0`: untyped, no schemas) and built into a component with
componentize-py (see README.md beside this file).
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import clock, log, repository, types

NAME = "notifications"
VERSION = "0.1.0"
COLLECTION = "notifications"
SUBSCRIBES = "orders.events"

TEXTS = {
    "placed": "We received your order {order_id}.",
    "confirmed": "Your order {order_id} is confirmed.",
    "rejected": "Sorry, your order {order_id} could not be fulfilled.",
}


class Invalid(Exception):
    """The message cannot be processed as it is: dead letter, no retry."""


class Rejected(Exception):
    """A business rule refused the command: no retry, no dead letter."""


class Transient(Exception):
    """Worth another attempt: the host retries with backoff."""


def repo_call(call, *args):
    """Runs a repository import; its errors become the module's errors the
    way the Rust SDK maps them (conflict/unavailable: transient)."""
    try:
        return call(*args)
    except Err as e:
        error = e.value
        kind = type(error).__name__.removeprefix("RepoError_")
        detail = getattr(error, "value", "")
        if isinstance(error, (repository.RepoError_VersionConflict, repository.RepoError_Unavailable)):
            raise Transient(f"repository: {kind} {detail}") from None
        raise Invalid(f"repository: {kind} {detail}") from None


def body_of(message: types.Envelope) -> dict:
    try:
        body = json.loads(message.body)
    except json.JSONDecodeError as e:
        raise Invalid(f"body of {message.topic}/{message.subtopic} is not JSON: {e}") from None
    if not isinstance(body, dict) or not isinstance(body.get("order_id"), str) or not body["order_id"]:
        raise Invalid(f"body of {message.topic}/{message.subtopic}: missing field `order_id`")
    return body


def on_order_event(message: types.Envelope) -> None:
    body = body_of(message)
    order_id = body["order_id"]
    existing = repo_call(repository.get, COLLECTION, order_id)
    if existing is None:
        doc, version = {"order_id": order_id, "history": []}, 0
    else:
        doc, version = json.loads(existing.value), existing.version
    # A redelivered event (same id) is dropped by the host's inbox; this
    # guards against the same transition arriving under another id.
    if any(h["event"] == message.subtopic for h in doc["history"]):
        return
    doc["history"].append({"event": message.subtopic, "at_ms": clock.now_ms(), "id": message.id})
    # `placed` may arrive after `confirmed` under a partition key: the last
    # word on the order's fate wins over `placed`.
    if message.subtopic != "placed" or "status" not in doc:
        doc["status"] = message.subtopic
        doc["text"] = TEXTS[message.subtopic].format(order_id=order_id)
    repo_call(repository.put, COLLECTION, order_id, json.dumps(doc), version)
    log.log(log.Level.INFO, f"notification for {order_id}: {doc['status']}")


def get(message: types.Envelope) -> dict:
    order_id = body_of(message)["order_id"]
    existing = repo_call(repository.get, COLLECTION, order_id)
    if existing is None:
        raise Rejected(f"no notification for order '{order_id}'")
    return json.loads(existing.value)


class WitWorld(wit_world.WitWorld):
    def describe(self) -> types.Descriptor:
        return types.Descriptor(
            name=NAME,
            version=VERSION,
            topics=[NAME],
            subscribes=[SUBSCRIBES],
            emits=[],
        )

    def handle(self, message: types.Envelope) -> str:
        try:
            if message.topic == SUBSCRIBES:
                if message.subtopic in TEXTS:
                    on_order_event(message)
                # Other order events are acknowledged and ignored.
                return "null"
            if message.topic == NAME and message.subtopic == "get":
                return json.dumps(get(message))
            raise Invalid(f"module {NAME} does not handle {message.topic}/{message.subtopic}")
        except Invalid as e:
            raise Err(types.HandleError_Invalid(str(e))) from None
        except Rejected as e:
            raise Err(types.HandleError_Rejected(str(e))) from None
        except Transient as e:
            raise Err(types.HandleError_Transient(str(e))) from None
