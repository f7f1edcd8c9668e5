"""The Switchyard guest SDK for Python: what a module author writes against.

A module is a :class:`Module`: a name, a version, and handlers registered
per command and per event with decorators. The SDK derives the component's
``describe`` (with a JSON Schema per message) from the handlers' type hints,
parses each body into the handler's dataclass (a body that does not fit is
:class:`Invalid`, naming the field's JSON path), and serialises what the
handler returns as the answer.

Everything a handler depends on comes through :class:`Ctx`: documents with
versions, event emission, configuration, logging and the clock. In the
component :class:`Ctx` calls the host's WIT imports; in tests it calls the
in-memory host of :mod:`switchyard_sdk.testing`, so handlers are tested with
plain ``pytest``::

    from dataclasses import dataclass
    from switchyard_sdk import Ctx, Module, Rejected, export

    @dataclass
    class Restock:
        \"\"\"Adds stock of one sku.\"\"\"
        sku: str
        qty: int

    @dataclass
    class Stock:
        sku: str
        available: int

    module = Module("inventory", "0.1.0")
    module.emits_event("inventory.events", "restocked", Stock)

    @module.command("inventory", "restock")
    def restock(ctx: Ctx, cmd: Restock) -> Stock:
        if cmd.qty < 1:
            raise Rejected("qty must be at least 1")
        current = ctx.get("stock", cmd.sku, Stock)
        available, version = (current.value.available, current.version) if current else (0, 0)
        stock = Stock(cmd.sku, available + cmd.qty)
        ctx.put("stock", cmd.sku, stock, expected=version)  # refused if it moved on
        ctx.emit("inventory.events", "restocked", stock)
        return stock

    WitWorld = export(module)  # the component's describe and handle
"""

from __future__ import annotations

import importlib.util

from .codec import ParseError, decode, encode
from .ctx import Ctx, Level, Versioned
from .errors import (
    EmitError,
    EmitErrorKind,
    HandlerError,
    Invalid,
    Rejected,
    RepoError,
    RepoErrorKind,
    Transient,
    VersionConflict,
)
from .module import Descriptor, Direction, MessageContract, Module
from .schema import json_schema

__all__ = [
    "Ctx",
    "Descriptor",
    "Direction",
    "EmitError",
    "EmitErrorKind",
    "HandlerError",
    "Invalid",
    "Level",
    "MessageContract",
    "Module",
    "ParseError",
    "Rejected",
    "RepoError",
    "RepoErrorKind",
    "Transient",
    "VersionConflict",
    "Versioned",
    "decode",
    "encode",
    "export",
    "json_schema",
]


def export(module: Module) -> type | None:
    """The component's exports for ``module``: assign the result to
    ``WitWorld`` in the app module componentize-py builds
    (``WitWorld = export(module)``), as a Rust module uses
    ``export_module!``.

    Natively, where the WIT bindings (``wit_world``) do not exist, this is
    ``None`` and nothing else happens: tests run the same module through
    :class:`switchyard_sdk.testing.Kit`.
    """
    if importlib.util.find_spec("wit_world") is None:
        return None
    from . import component

    return component.bind(module)
