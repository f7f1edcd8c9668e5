"""Every Ctx call against the in-memory host, which keeps the host's rules:
units of work, versions and conflicts, grants, limits, inbox, headers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from switchyard_sdk import (
    Ctx,
    Invalid,
    Level,
    Module,
    Rejected,
    RepoError,
    RepoErrorKind,
    Transient,
    VersionConflict,
    Versioned,
)
from switchyard_sdk.testing import DEFAULT_NOW_MS, MAX_VALUE_BYTES, Kit, Message


@dataclass
class Bump:
    key: str
    expected: int | None = None
    fail: bool = False


def counter() -> Module:
    module = Module("n", "0.1.0")

    @module.command("n", "bump")
    def bump(ctx: Ctx, cmd: Bump) -> int:
        current = ctx.get("n", cmd.key, int)
        following = 1 if current is None else current.value + 1
        version = ctx.put("n", cmd.key, following, expected=cmd.expected)
        ctx.emit("n.events", "bumped", {"key": cmd.key, "n": following})
        if cmd.fail:
            raise Transient("asked to fail")
        return version

    module.emits("n.events")
    return module


def test_a_failed_message_leaves_no_writes_and_no_events():
    kit = Kit(counter())
    assert kit.command("n", "bump", {"key": "a"}) == 1
    assert kit.error("n", "bump", {"key": "a", "fail": True}) == Transient("asked to fail")
    assert kit.doc("n", "a") == 1
    assert kit.version("n", "a") == 1
    assert len(kit.events()) == 1


def test_a_stale_expected_version_is_a_conflict_naming_the_current_one():
    kit = Kit(counter())
    kit.seed("n", "a", 5)
    assert kit.seed("n", "a", 6) == 2
    error = kit.error("n", "bump", {"key": "a", "expected": 1})
    assert error == Transient("repository: version conflict (current version 2)")
    assert isinstance(error, VersionConflict) and error.current == 2
    assert isinstance(error.__cause__, RepoError) and error.__cause__.kind is RepoErrorKind.VERSION_CONFLICT
    assert kit.command("n", "bump", {"key": "a", "expected": 2}) == 3
    assert kit.doc("n", "a") == 7
    # 0: must not exist yet.
    assert isinstance(kit.error("n", "bump", {"key": "a", "expected": 0}), VersionConflict)
    assert kit.command("n", "bump", {"key": "b", "expected": 0}) == 1


def test_a_repeated_message_id_is_answered_once():
    kit = Kit(counter())
    first = kit.command("n", "bump", {"key": "a"}, id="m-1")
    again = kit.command("n", "bump", {"key": "a"}, id="m-1")
    assert first == again == 1
    assert kit.doc("n", "a") == 1
    assert len(kit.events()) == 1
    # A failed message is not in the inbox: its retry runs again.
    kit.error("n", "bump", {"key": "b", "fail": True}, id="m-2")
    assert kit.command("n", "bump", {"key": "b"}, id="m-2") == 1


def test_events_carry_correlation_and_causation():
    kit = Kit(counter())
    kit.handle(Message("n", "bump", {"key": "a"}, id="m-7", headers={"correlation-id": "c-1"}))
    event = kit.events()[0]
    assert event.id == "evt-1"
    assert event.headers == {"correlation-id": "c-1", "causation-id": "m-7"}
    assert kit.emitted_body("n.events", "bumped") == {"key": "a", "n": 1}
    kit.command("n", "bump", {"key": "a"}, id="m-8")
    assert kit.events()[1].headers["correlation-id"] == "m-8"  # a new conversation


def test_emitted_body_names_what_was_emitted_when_the_event_is_missing():
    kit = Kit(counter())
    kit.command("n", "bump", {"key": "a"})
    with pytest.raises(
        AssertionError, match=r"no n.events/reset event was emitted \(emitted: \[n.events/bumped\]\)"
    ):
        kit.emitted_body("n.events", "reset")
    assert kit.emitted("n.events", "bumped") and not kit.emitted("n.events", "reset")
    taken = kit.take_events()
    assert [e.subtopic for e in taken] == ["bumped"] and kit.events() == []
    kit.command("n", "bump", {"key": "a"})
    kit.clear_events()
    assert not kit.emitted("n.events", "bumped")


def test_emitting_outside_the_grants_is_invalid_and_rolls_back():
    kit = Kit(counter()).emit_grants("other")
    error = kit.error("n", "bump", {"key": "a"})
    assert isinstance(error, Invalid)
    assert "emit: not permitted: module 'n' may not emit to 'n.events'" in str(error)
    assert kit.version("n", "a") == 0


def test_an_event_must_fit_its_declared_type():
    @dataclass
    class Bumped:
        key: str
        n: int

    module = Module("n", "0.1.0")
    module.emits_event("n.events", "bumped", Bumped)

    @module.command("n", "emit")
    def emit(ctx: Ctx, body: dict) -> None:
        ctx.put("c", "k", 1)
        ctx.emit("n.events", "bumped", body)
        ctx.emit("n.events", "undeclared", body)

    kit = Kit(module)
    assert kit.command("n", "emit", {"key": "a", "n": 1}) is None
    assert kit.error("n", "emit", {"key": "a", "n": "1"}) == Invalid(
        'emitted event n.events/bumped does not match its declared schema: /n: expected an integer, got "1"'
    )
    assert kit.error("n", "emit", {"n": 1}) == Invalid(
        "emitted event n.events/bumped does not match its declared schema: body: missing field `key`"
    )
    assert len(kit.events()) == 2 and kit.version("c", "k") == 1


@dataclass
class Stock:
    sku: str
    available: int


def store() -> Module:
    """A module whose commands call every Ctx function."""
    module = Module("shop", "0.1.0")
    module.emits("shop.events")

    @module.command("shop", "get")
    def get(ctx: Ctx, key: str) -> Any:
        found = ctx.get("stock", key, Stock)
        return None if found is None else {"value": found.value, "version": found.version}

    @module.command("shop", "get-raw")
    def get_raw(ctx: Ctx, key: str) -> Any:
        found = ctx.get("stock", key)
        return None if found is None else found.value

    @module.command("shop", "put")
    def put(ctx: Ctx, body: dict) -> int:
        return ctx.put("stock", body["key"], Stock(**body["value"]), expected=body.get("expected"))

    @module.command("shop", "delete")
    def delete(ctx: Ctx, body: dict) -> bool:
        return ctx.delete("stock", body["key"], expected=body.get("expected"))

    @module.command("shop", "scan")
    def scan(ctx: Ctx, body: dict) -> list[str]:
        return [k for k, _ in ctx.scan("stock", body["prefix"], body["limit"], Stock)]

    @module.command("shop", "read")
    def read(ctx: Ctx, key: str) -> Any:
        found = ctx.read("inventory", "stock", key, Stock)
        return None if found is None else found.value

    @module.command("shop", "read-scan")
    def read_scan(ctx: Ctx, prefix: str) -> list[Any]:
        return [[k, v.value, v.version] for k, v in ctx.read_scan("inventory", "stock", prefix, 10)]

    @module.command("shop", "put-then-read")
    def put_then_read(ctx: Ctx, key: str) -> list[Any]:
        first = ctx.put("stock", key, Stock(key, 1))
        second = ctx.put("stock", key, Stock(key, 2), expected=first)
        seen = ctx.get("stock", key, Stock)
        gone = ctx.delete("stock", key)
        return [first, second, seen.value.available if seen else None, gone, ctx.get("stock", key)]

    @module.command("shop", "emit")
    def emit(ctx: Ctx, body: dict) -> str:
        return ctx.emit("shop.events", body["subtopic"], Stock("a", 1), headers={"partition-key": "a"})

    @module.command("shop", "context")
    def context(ctx: Ctx, body: Any) -> dict:
        ctx.log(Level.DEBUG, "debug line")
        ctx.log("trace", "trace line")
        ctx.info("info line")
        ctx.warn("warn line")
        ctx.error("error line")
        return {
            "id": ctx.id,
            "topic": ctx.topic,
            "subtopic": ctx.subtopic,
            "trace": ctx.header("X-Trace"),
            "attempt": ctx.header("attempt"),
            "missing": ctx.header("nope"),
            "headers": ctx.headers,
            "currency": ctx.config("currency"),
            "max": ctx.config("max"),
            "absent": ctx.config("absent"),
            "config": ctx.config_all(),
            "now": ctx.now_ms(),
        }

    return module


def test_context_headers_config_log_and_clock():
    kit = Kit(store()).config("currency", "EUR").config("max", 5)
    answer = kit.command("shop", "context", None, id="m-1", headers=[("x-trace", "t-1")])
    assert answer == {
        "id": "m-1",
        "topic": "shop",
        "subtopic": "context",
        "trace": "t-1",
        "attempt": "1",
        "missing": None,
        "headers": [["x-trace", "t-1"], ["correlation-id", "m-1"], ["attempt", "1"]],
        "currency": "EUR",
        "max": "5",
        "absent": None,
        "config": {"currency": "EUR", "max": "5"},
        "now": DEFAULT_NOW_MS,
    }
    assert [line.level for line in kit.logs()] == [
        Level.DEBUG,
        Level.TRACE,
        Level.INFO,
        Level.WARN,
        Level.ERROR,
    ]
    assert kit.logged("warn line") and not kit.logged("nothing")
    kit.set_clock(42)
    assert kit.command("shop", "context", None)["now"] == 42
    kit.advance_clock(8)
    assert kit.command("shop", "context", None)["now"] == 50
    assert Kit(store()).clock(7).command("shop", "context", None)["now"] == 7


def test_get_put_delete_with_types_and_versions():
    kit = Kit(store())
    assert kit.command("shop", "get", "apple") is None
    assert kit.command("shop", "put", {"key": "apple", "value": {"sku": "apple", "available": 5}}) == 1
    assert kit.command("shop", "get", "apple") == {"value": {"sku": "apple", "available": 5}, "version": 1}
    assert kit.doc("stock", "apple", Stock) == Stock("apple", 5)
    assert kit.doc_of("shop", "stock", "apple") == Versioned({"sku": "apple", "available": 5}, 1)
    assert (
        kit.command("shop", "put", {"key": "apple", "value": {"sku": "apple", "available": 4}, "expected": 1})
        == 2
    )
    assert isinstance(
        kit.error("shop", "put", {"key": "apple", "value": {"sku": "a", "available": 1}, "expected": 1}),
        VersionConflict,
    )
    assert kit.error("shop", "delete", {"key": "pear", "expected": 3}) == Invalid(
        "repository: document not found"
    )
    assert kit.command("shop", "delete", {"key": "pear"}) is False
    assert kit.command("shop", "delete", {"key": "pear", "expected": 0}) is False
    assert isinstance(kit.error("shop", "delete", {"key": "apple", "expected": 1}), VersionConflict)
    assert kit.command("shop", "delete", {"key": "apple", "expected": 2}) is True
    assert kit.version("stock", "apple") == 0 and kit.doc("stock", "apple") is None


def test_writes_in_one_message_are_seen_by_it_and_get_one_version():
    kit = Kit(store())
    kit.seed("stock", "a", {"sku": "a", "available": 0})
    # Two puts in one message: both get version 2 (one past the version before it).
    assert kit.command("shop", "put-then-read", "a") == [2, 2, 2, True, None]
    assert kit.version("stock", "a") == 0


def test_a_stored_document_that_does_not_decode_is_invalid():
    kit = Kit(store())
    kit.seed("stock", "bad", {"sku": "bad"})
    assert kit.error("shop", "get", "bad") == Invalid(
        "stored document stock/bad does not decode: missing field `available`"
    )
    assert kit.command("shop", "get-raw", "bad") == {"sku": "bad"}


def test_scans_are_in_key_order_by_prefix_with_a_limit():
    kit = Kit(store())
    for k in ["b2", "a1", "b1", "b3"]:
        kit.seed("stock", k, {"sku": k, "available": 1})
    assert kit.command("shop", "scan", {"prefix": "b", "limit": 2}) == ["b1", "b2"]
    assert kit.command("shop", "scan", {"prefix": "", "limit": 10}) == ["a1", "b1", "b2", "b3"]
    assert kit.command("shop", "scan", {"prefix": "c", "limit": 10}) == []
    assert kit.error("shop", "scan", {"prefix": "", "limit": -1}) == Invalid(
        "a scan limit is a whole number from 0 to 4294967295, not -1"
    )


def test_reading_another_module_needs_the_grant():
    kit = Kit(store())
    kit.seed_for("inventory", "stock", "apple", {"sku": "apple", "available": 5})
    error = kit.error("shop", "read", "apple")
    assert isinstance(error, Invalid)
    assert "repository: not permitted: module 'shop' may not read module 'inventory'" in str(error)
    assert kit.error("shop", "read-scan", "") == error

    granted = Kit(store()).reads("inventory")
    granted.seed_for("inventory", "stock", "apple", {"sku": "apple", "available": 5})
    granted.seed_for("inventory", "stock", "avocado", {"sku": "avocado", "available": 1})
    assert granted.command("shop", "read", "apple") == {"sku": "apple", "available": 5}
    assert granted.command("shop", "read", "pear") is None
    assert granted.command("shop", "read-scan", "a") == [
        ["apple", {"sku": "apple", "available": 5}, 1],
        ["avocado", {"sku": "avocado", "available": 1}, 1],
    ]


def test_emit_returns_the_event_id_and_passes_headers():
    kit = Kit(store())
    assert kit.command("shop", "emit", {"subtopic": "changed"}) == "evt-1"
    (event,) = kit.events()
    assert event.body == {"sku": "a", "available": 1}
    assert event.headers["partition-key"] == "a"
    assert kit.error("shop", "emit", {"subtopic": "no spaces"}) == Invalid(
        "emit: invalid: topic and subtopic must be 1 to 255 of [A-Za-z0-9._-]: 'shop.events'/'no spaces'"
    )


def test_empty_keys_and_control_characters_are_invalid_as_in_the_host():
    kit = Kit(store())
    for bad in ["", "a\0b", "line\nbreak", "del\x7f"]:
        for call, body in [("get", bad), ("put", {"key": bad, "value": {"sku": "x", "available": 1}})]:
            error = kit.error("shop", call, body)
            assert isinstance(error, Invalid) and "key" in str(error), (call, bad, error)
    assert kit.version("stock", "") == 0
    assert kit.error("shop", "scan", {"prefix": "\0", "limit": 1}) == Invalid(
        "repository: invalid: key '\\x00' holds a control character"
    )
    assert kit.command("shop", "put", {"key": "été", "value": {"sku": "x", "available": 1}}) == 1


def test_collection_names_are_checked():
    module = Module("c", "0.1.0")
    module.command("c", "get", lambda ctx, name: ctx.get(name, "k"))
    kit = Kit(module)
    assert kit.error("c", "get", "a/b") == Invalid(
        "repository: invalid: collection 'a/b' must be non-empty [A-Za-z0-9._-]"
    )
    assert kit.error("c", "get", "x" * 129) == Invalid(
        "repository: too large: collection name over 128 bytes"
    )


def test_the_fake_keeps_the_hosts_default_byte_budgets():
    module = Module("b", "0.1.0")

    @module.command("b", "fill")
    def fill(ctx: Ctx, n: int) -> int:
        blob = "x" * (MAX_VALUE_BYTES - 2)  # the JSON string's quotes make 1 MiB
        for i in range(n):
            ctx.put("blobs", f"b{i}", blob)
        return n

    @module.command("b", "scan")
    def scan(ctx: Ctx, limit: int) -> int:
        return len(ctx.scan("blobs", "", limit))

    @module.command("b", "big")
    def big(ctx: Ctx, body: Any) -> int:
        return ctx.put("blobs", "big", "x" * MAX_VALUE_BYTES)

    kit = Kit(module)
    assert kit.command("b", "fill", 7) == 7  # 1 MiB + "blobs" + "bN" each: seven fit 8 MiB
    error = kit.error("b", "fill", 8)
    assert isinstance(error, Invalid) and "max-write-bytes" in str(error)
    assert kit.command("b", "scan", 3) == 3  # three of them fit one scan's 4 MiB
    error = kit.error("b", "scan", 10)
    assert isinstance(error, Invalid) and "at most 3" in str(error)
    error = kit.error("b", "big", None)
    assert isinstance(error, Invalid) and "the limit is 1048576" in str(error)


def test_a_bug_rolls_back_and_propagates_with_its_traceback():
    module = Module("m", "0.1.0")

    @module.command("m", "crash")
    def crash(ctx: Ctx, body: Any) -> None:
        ctx.put("c", "k", 1)
        raise KeyError("oops")

    kit = Kit(module)
    with pytest.raises(KeyError, match="oops"):
        kit.command("m", "crash", {})
    assert kit.version("c", "k") == 0
    # The kit is usable again afterwards.
    with pytest.raises(KeyError):
        kit.command("m", "crash", {})


def test_error_fails_the_test_when_the_message_succeeds():
    with pytest.raises(AssertionError, match="n/bump succeeded with 1; an error was expected"):
        Kit(counter()).error("n", "bump", {"key": "a"})


def test_handler_errors_compare_by_kind_and_message():
    assert Rejected("x") == Rejected("x")
    assert Rejected("x") != Invalid("x")
    assert VersionConflict("m", 3) == Transient("m")
    assert str(Rejected("no")) == "no" and repr(Rejected("no")) == "Rejected('no')"
    assert len({Rejected("x"), Rejected("x")}) == 1


def test_a_saga_across_two_kits():
    orders = Module("orders", "0.1.0").emits("orders.events")

    @orders.command("orders", "place")
    def place(ctx: Ctx, body: dict) -> None:
        ctx.emit("orders.events", "placed", body)

    notes = Module("notes", "0.1.0")

    @notes.on_event("orders.events", "placed")
    def placed(ctx: Ctx, body: dict) -> None:
        ctx.put(
            "seen", body["order_id"], {"by": ctx.header("causation-id"), "corr": ctx.header("correlation-id")}
        )

    a, b = Kit(orders), Kit(notes)
    a.command("orders", "place", {"order_id": "o1"}, id="m-1")
    (event,) = a.take_events()
    b.deliver(event)
    assert b.doc("seen", "o1") == {"by": "m-1", "corr": "m-1"}
    assert b.deliver(event) is None  # the same event id again: answered once
    assert b.version("seen", "o1") == 1


def test_calls_outside_a_message_are_refused():
    kit = Kit(counter())
    ctx = Ctx(id="x", topic="n", subtopic="bump", headers=[], backend=kit.host)
    with pytest.raises(Transient, match="no message is being handled"):
        ctx.put("n", "a", 1)
    with pytest.raises(Invalid, match="expected version is a whole number"):
        ctx.put("n", "a", 1, expected=-1)
    with pytest.raises(Invalid, match="cannot serialise n/a"):
        ctx.put("n", "a", object())
