"""The component glue against the bindings componentize-py generates for
wit/switchyard.wit, with the imports stubbed (skipped without componentize-py)."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from switchyard_sdk import Ctx, Module, Rejected, export

WIT = Path(__file__).resolve().parents[3] / "wit"
COMPONENTIZE = shutil.which("componentize-py")
pytestmark = pytest.mark.skipif(COMPONENTIZE is None, reason="componentize-py is not installed")


@pytest.fixture(scope="module")
def wit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    out = tmp_path_factory.mktemp("bindings")
    subprocess.run([str(COMPONENTIZE), "-d", str(WIT), "-w", "module", "bindings", str(out)], check=True)
    sys.path.insert(0, str(out))
    try:
        yield SimpleNamespace(
            world=importlib.import_module("wit_world"),
            types=importlib.import_module("wit_world.imports.types"),
            repository=importlib.import_module("wit_world.imports.repository"),
            events=importlib.import_module("wit_world.imports.events"),
            config=importlib.import_module("wit_world.imports.config"),
            log=importlib.import_module("wit_world.imports.log"),
            clock=importlib.import_module("wit_world.imports.clock"),
            Err=importlib.import_module("componentize_py_types").Err,
        )
    finally:
        sys.path.remove(str(out))
        for name in list(sys.modules):
            if name.startswith(("wit_world", "componentize_py", "switchyard_sdk.component")):
                del sys.modules[name]


@dataclass
class Key:
    """A document by key."""

    key: str


def module() -> Module:
    m = Module("glue", "0.3.0")
    m.emits("glue.events")

    @m.command("glue", "get")
    def get(ctx: Ctx, body: Key) -> Any:
        found = ctx.get("docs", body.key)
        return None if found is None else [found.value, found.version]

    @m.command("glue", "write")
    def write(ctx: Ctx, body: Key) -> list[Any]:
        version = ctx.put("docs", body.key, {"k": body.key}, expected=0)
        existed = ctx.delete("docs", "old", None)
        scanned = [k for k, _ in ctx.scan("docs", "", 5)]
        read = ctx.read("other", "docs", body.key)
        read_scan = ctx.read_scan("other", "docs", "p", 2)
        event = ctx.emit("glue.events", "written", {"k": body.key}, {"partition-key": body.key})
        ctx.info("wrote")
        return [
            version,
            existed,
            scanned,
            read and read.value,
            len(read_scan),
            event,
            ctx.config("c"),
            ctx.config_all(),
            ctx.now_ms(),
        ]

    @m.command("glue", "refuse")
    def refuse(ctx: Ctx, body: Key) -> None:
        raise Rejected(f"no {body.key}")

    @m.command("glue", "crash")
    def crash(ctx: Ctx, body: Key) -> None:
        counts: dict[str, int] = {}
        counts[body.key] += 1  # a bug: KeyError

    return m


def envelope(wit: SimpleNamespace, subtopic: str, body: str) -> Any:
    return wit.types.Envelope(
        id="m-1", topic="glue", subtopic=subtopic, headers=[("attempt", "1")], body=body
    )


def failure(wit: SimpleNamespace, world: Any, subtopic: str, body: str) -> Any:
    with pytest.raises(wit.Err) as e:
        world.handle(envelope(wit, subtopic, body))
    return e.value.value


def test_export_binds_the_module_to_the_generated_world(wit: SimpleNamespace):
    world_class = export(module())
    assert world_class is not None and wit.world.WitWorld in world_class.__mro__
    d = world_class().describe()
    assert isinstance(d, wit.world.Descriptor)
    assert (d.name, d.version, d.topics, d.subscribes, d.emits) == (
        "glue",
        "0.3.0",
        ["glue"],
        [],
        ["glue.events"],
    )
    first = d.messages[0]
    assert isinstance(first, wit.world.MessageContract)
    assert first.direction == wit.world.Direction.COMMAND
    assert (first.topic, first.subtopic, first.summary) == ("glue", "get", "A document by key.")
    assert first.body_schema is not None and '"required":["key"]' in first.body_schema


def test_handle_calls_the_imports(wit: SimpleNamespace, monkeypatch: pytest.MonkeyPatch):
    calls: list[tuple[Any, ...]] = []
    doc = wit.repository.Document

    def recorded(name: str, result: Any) -> Any:
        def call(*args: Any) -> Any:
            calls.append((name, *args))
            return result

        return call

    monkeypatch.setattr(wit.repository, "put", recorded("put", 1))
    monkeypatch.setattr(wit.repository, "delete", recorded("delete", False))
    monkeypatch.setattr(wit.repository, "scan", lambda *a: [doc("a", "1", 1), doc("b", "2", 4)])
    monkeypatch.setattr(wit.repository, "read", recorded("read", doc("x", '"r"', 2)))
    monkeypatch.setattr(wit.repository, "read_scan", recorded("read_scan", []))
    monkeypatch.setattr(wit.events, "emit", recorded("emit", "evt-9"))
    monkeypatch.setattr(wit.config, "get", lambda key: {"c": "v"}.get(key))
    monkeypatch.setattr(wit.config, "get_all", lambda: [("c", "v")])
    monkeypatch.setattr(wit.log, "log", recorded("log", None))
    monkeypatch.setattr(wit.clock, "now_ms", lambda: 123)
    world = export(module())()  # type: ignore[misc]
    answer = world.handle(envelope(wit, "write", '{"key": "k1"}'))
    assert answer == '[1,false,["a","b"],"r",0,"evt-9","v",{"c":"v"},123]'
    assert calls == [
        ("put", "docs", "k1", '{"k":"k1"}', 0),
        ("delete", "docs", "old", None),
        ("read", "other", "docs", "k1"),
        ("read_scan", "other", "docs", "p", 2),
        ("emit", "glue.events", "written", '{"k":"k1"}', [("partition-key", "k1")]),
        ("log", wit.log.Level.INFO, "wrote"),
    ]


def test_handler_errors_become_handle_errors(wit: SimpleNamespace):
    world = export(module())()  # type: ignore[misc]
    assert failure(wit, world, "refuse", '{"key": "x"}') == wit.types.HandleError_Rejected("no x")
    assert failure(wit, world, "get", "{}") == wit.types.HandleError_Invalid(
        "body of glue/get: missing field `key`"
    )
    assert failure(wit, world, "nope", "{}") == wit.types.HandleError_Invalid(
        "unknown subtopic 'nope' for topic 'glue' (known: get, write, refuse, crash)"
    )


@pytest.mark.parametrize(
    ("error", "kind", "message"),
    [
        ("RepoError_NotFound()", "Invalid", "repository: document not found"),
        ("RepoError_VersionConflict(3)", "Transient", "repository: version conflict (current version 3)"),
        ("RepoError_NotPermitted('no')", "Invalid", "repository: not permitted: no"),
        ("RepoError_TooLarge('big')", "Invalid", "repository: too large: big"),
        ("RepoError_Invalid('bad')", "Invalid", "repository: invalid: bad"),
        ("RepoError_Unavailable('down')", "Transient", "repository: store unavailable: down"),
    ],
)
def test_repository_errors_map_as_in_the_rust_sdk(
    wit: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, error: str, kind: str, message: str
):
    value = eval(error, vars(wit.repository))  # noqa: S307 - a constructor call from the table above

    def get(collection: str, key: str) -> Any:
        raise wit.Err(value)

    monkeypatch.setattr(wit.repository, "get", get)
    world = export(module())()  # type: ignore[misc]
    assert failure(wit, world, "get", '{"key": "k"}') == getattr(wit.types, f"HandleError_{kind}")(message)


def test_emit_errors_are_invalid(wit: SimpleNamespace, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(wit.repository, "put", lambda *a: 1)
    monkeypatch.setattr(wit.repository, "delete", lambda *a: False)
    monkeypatch.setattr(wit.repository, "scan", lambda *a: [])
    monkeypatch.setattr(wit.repository, "read", lambda *a: None)
    monkeypatch.setattr(wit.repository, "read_scan", lambda *a: [])

    def emit(*args: Any) -> str:
        raise wit.Err(wit.events.EmitError_NotPermitted("not granted"))

    monkeypatch.setattr(wit.events, "emit", emit)
    world = export(module())()  # type: ignore[misc]
    assert failure(wit, world, "write", '{"key": "k"}') == wit.types.HandleError_Invalid(
        "emit: not permitted: not granted"
    )


def test_an_unexpected_exception_is_logged_and_transient(
    wit: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
):
    logged: list[tuple[Any, str]] = []
    monkeypatch.setattr(wit.log, "log", lambda level, text: logged.append((level, text)))
    world = export(module())()  # type: ignore[misc]
    error = failure(wit, world, "crash", '{"key": "x"}')
    assert isinstance(error, wit.types.HandleError_Transient)
    assert error.value.startswith("unhandled KeyError: 'x' (at ")
    assert error.value.endswith(" in crash)")
    ((level, text),) = logged
    assert level == wit.log.Level.ERROR
    assert "traceback:" in text and "in dispatch" in text
