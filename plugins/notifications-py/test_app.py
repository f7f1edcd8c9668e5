"""The notifications module, natively: `python3 -m pytest plugins/notifications-py`."""

import json
import sys
from pathlib import Path

try:
    import switchyard_sdk  # noqa: F401  (installed: pip install -e plugins/sdk-py)
except ModuleNotFoundError:  # in the repository: the SDK beside this module
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sdk-py"))

import pytest
from app import module
from switchyard_sdk import Invalid, Rejected, Transient
from switchyard_sdk.testing import DEFAULT_NOW_MS, Kit

EVENTS = "orders.events"


@pytest.fixture
def kit() -> Kit:
    return Kit(module)


def history(kit: Kit, order_id: str) -> list[str]:
    return [h["event"] for h in kit.doc("notifications", order_id)["history"]]


def test_placed_then_confirmed(kit: Kit):
    kit.event(EVENTS, "placed", {"order_id": "o1", "sku": "apple", "qty": 2}, id="e-1")
    assert kit.doc("notifications", "o1") == {
        "order_id": "o1",
        "status": "placed",
        "text": "We received your order o1.",
        "history": [{"event": "placed", "at_ms": DEFAULT_NOW_MS, "id": "e-1"}],
    }
    kit.advance_clock(5)
    kit.event(EVENTS, "confirmed", {"order_id": "o1"}, id="e-2")
    answer = kit.command("notifications", "get", {"order_id": "o1"})
    assert answer["status"] == "confirmed"
    assert answer["text"] == "Your order o1 is confirmed."
    assert answer["history"][1] == {"event": "confirmed", "at_ms": DEFAULT_NOW_MS + 5, "id": "e-2"}
    assert kit.version("notifications", "o1") == 2
    assert kit.logged("notification for o1: confirmed")


def test_rejected(kit: Kit):
    kit.event(EVENTS, "placed", {"order_id": "o2"})
    kit.event(EVENTS, "rejected", {"order_id": "o2"})
    doc = kit.doc("notifications", "o2")
    assert (doc["status"], doc["text"]) == ("rejected", "Sorry, your order o2 could not be fulfilled.")
    assert history(kit, "o2") == ["placed", "rejected"]


def test_a_late_placed_does_not_undo_the_fate(kit: Kit):
    kit.event(EVENTS, "confirmed", {"order_id": "o3"})
    kit.event(EVENTS, "placed", {"order_id": "o3"})
    doc = kit.doc("notifications", "o3")
    assert (doc["status"], doc["text"]) == ("confirmed", "Your order o3 is confirmed.")
    assert history(kit, "o3") == ["confirmed", "placed"]


def test_the_same_transition_under_another_id_is_recorded_once(kit: Kit):
    kit.event(EVENTS, "placed", {"order_id": "o4"}, id="e-1")
    kit.event(EVENTS, "placed", {"order_id": "o4"}, id="e-2")
    assert history(kit, "o4") == ["placed"]
    assert kit.version("notifications", "o4") == 1


def test_other_order_events_are_ignored(kit: Kit):
    assert kit.event(EVENTS, "cancelled", {"anything": True}) is None
    assert kit.events() == [] and kit.doc("notifications", "o1") is None


def test_get_without_a_notification_is_rejected(kit: Kit):
    assert kit.error("notifications", "get", {"order_id": "o9"}) == Rejected("no notification for order 'o9'")


def test_bodies_without_an_order_id_are_invalid(kit: Kit):
    assert kit.error("notifications", "get", {"order": "o1"}) == Invalid(
        "body of notifications/get: missing field `order_id`"
    )
    assert kit.error("notifications", "get", {"order_id": ""}) == Invalid(
        "body of notifications/get: order_id must not be empty"
    )
    assert kit.error(EVENTS, "placed", {"order_id": 7}) == Invalid(
        "body of orders.events/placed: /order_id: expected a string, got 7"
    )


def test_a_concurrent_writer_makes_the_event_transient(kit: Kit, monkeypatch: pytest.MonkeyPatch):
    kit.event(EVENTS, "placed", {"order_id": "o5"})
    real_get = kit.host.get

    def get_then_someone_writes(collection: str, key: str):  # another message commits in between
        found = real_get(collection, key)
        kit.seed(collection, key, kit.doc(collection, key))
        return found

    monkeypatch.setattr(kit.host, "get", get_then_someone_writes)
    error = kit.error(EVENTS, "confirmed", {"order_id": "o5"})
    assert isinstance(error, Transient) and "version conflict (current version 2)" in str(error)
    monkeypatch.undo()
    kit.event(EVENTS, "confirmed", {"order_id": "o5"})  # the retry, on fresh state
    assert kit.doc("notifications", "o5")["status"] == "confirmed"


def test_describe_declares_typed_messages(kit: Kit):
    d = kit.describe()
    assert (d.name, d.topics, d.subscribes, d.emits) == ("notifications", ["notifications"], [EVENTS], [])
    listed = {(m.direction.value, m.topic, m.subtopic): m for m in d.messages}
    assert sorted(listed) == [
        ("command", "notifications", "get"),
        ("consumes", EVENTS, "confirmed"),
        ("consumes", EVENTS, "placed"),
        ("consumes", EVENTS, "rejected"),
    ]
    get = listed[("command", "notifications", "get")]
    assert get.summary == "The notification of one order."
    assert json.loads(get.body_schema or "")["required"] == ["order_id"]
    answer = json.loads(get.answer_schema or "")
    assert answer["required"] == ["order_id", "status", "text"]
    assert answer["$defs"]["Status"]["enum"] == ["placed", "confirmed", "rejected"]
    assert answer["$defs"]["Entry"]["properties"]["at_ms"]["description"].startswith("When it was handled")
