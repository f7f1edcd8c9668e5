"""The component's side: world ``module`` of WIT ``switchyard:module@0.2.0``
as componentize-py generates it (``wit_world``), run by a :class:`Module`.

Imported only inside a component, by :func:`switchyard_sdk.export`: natively
there are no bindings, and the tests use :mod:`switchyard_sdk.testing`.

- ``describe`` answers the module's :meth:`Module.describe`;
- ``handle`` builds a :class:`Ctx` over the WIT imports (:class:`WitHost`)
  and runs :meth:`Module.dispatch`; a :class:`HandlerError` becomes the
  ``handle-error`` of its kind. Any other exception is a bug: its type,
  message and frames go to the host's log at ``error`` and the message fails
  as ``transient`` (retried, then dead-lettered, as a Rust module's panic
  is). Letting it escape would make componentize-py print a traceback,
  which reads the source files, and a module has no filesystem: the trap
  would only say so.

The WIT 0.2.0 world keeps the 0.1.0 interfaces for its imports; the
generated modules are ``wit_world.imports.{repository,events,config,log,clock,types}``
and a WIT ``result`` error is raised as ``componentize_py_types.Err``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import wit_world
from componentize_py_types import Err
from wit_world.imports import clock, config, events, log, repository, types

from .ctx import Ctx, Document, Level
from .errors import EmitError, EmitErrorKind, HandlerError, RepoError, RepoErrorKind
from .module import Direction, Module

R = TypeVar("R")

_module: Module | None = None

_DIRECTIONS = {
    Direction.COMMAND: wit_world.Direction.COMMAND,
    Direction.CONSUMES: wit_world.Direction.CONSUMES,
    Direction.EMITS: wit_world.Direction.EMITS,
}

_HANDLE_ERRORS: dict[str, Callable[[str], Any]] = {
    "invalid": types.HandleError_Invalid,
    "rejected": types.HandleError_Rejected,
    "transient": types.HandleError_Transient,
}


def _repo_error(error: repository.RepoError) -> RepoError:
    match error:
        case repository.RepoError_NotFound():
            return RepoError(RepoErrorKind.NOT_FOUND)
        case repository.RepoError_VersionConflict(value=current):
            return RepoError(RepoErrorKind.VERSION_CONFLICT, current=current)
        case repository.RepoError_NotPermitted(value=detail):
            return RepoError(RepoErrorKind.NOT_PERMITTED, detail)
        case repository.RepoError_TooLarge(value=detail):
            return RepoError(RepoErrorKind.TOO_LARGE, detail)
        case repository.RepoError_Invalid(value=detail):
            return RepoError(RepoErrorKind.INVALID, detail)
        case repository.RepoError_Unavailable(value=detail):
            return RepoError(RepoErrorKind.UNAVAILABLE, detail)
    return RepoError(RepoErrorKind.UNAVAILABLE, f"unknown repository error {error!r}")


def _emit_error(error: events.EmitError) -> EmitError:
    match error:
        case events.EmitError_NotPermitted(value=detail):
            return EmitError(EmitErrorKind.NOT_PERMITTED, detail)
        case events.EmitError_TooLarge(value=detail):
            return EmitError(EmitErrorKind.TOO_LARGE, detail)
        case events.EmitError_Invalid(value=detail):
            return EmitError(EmitErrorKind.INVALID, detail)
    return EmitError(EmitErrorKind.INVALID, f"unknown emit error {error!r}")


def _repository(call: Callable[..., R], *args: Any) -> R:
    try:
        return call(*args)
    except Err as e:
        raise _repo_error(e.value) from None


def _document(doc: repository.Document | None) -> Document | None:
    return None if doc is None else Document(doc.key, doc.value, doc.version)


class WitHost:
    """The :class:`~switchyard_sdk.ctx.Backend` of a component: every call
    is a WIT import, answered by the host within the message's unit of work."""

    def get(self, collection: str, key: str) -> Document | None:
        return _document(_repository(repository.get, collection, key))

    def put(self, collection: str, key: str, value: str, expected: int | None) -> int:
        return _repository(repository.put, collection, key, value, expected)

    def delete(self, collection: str, key: str, expected: int | None) -> bool:
        return _repository(repository.delete, collection, key, expected)

    def scan(self, collection: str, prefix: str, limit: int) -> list[Document]:
        docs = _repository(repository.scan, collection, prefix, limit)
        return [Document(d.key, d.value, d.version) for d in docs]

    def read(self, owner: str, collection: str, key: str) -> Document | None:
        return _document(_repository(repository.read, owner, collection, key))

    def read_scan(self, owner: str, collection: str, prefix: str, limit: int) -> list[Document]:
        docs = _repository(repository.read_scan, owner, collection, prefix, limit)
        return [Document(d.key, d.value, d.version) for d in docs]

    def emit(self, topic: str, subtopic: str, body: str, headers: list[tuple[str, str]]) -> str:
        try:
            return events.emit(topic, subtopic, body, headers)
        except Err as e:
            raise _emit_error(e.value) from None

    def config(self, key: str) -> str | None:
        return config.get(key)

    def config_all(self) -> list[tuple[str, str]]:
        return list(config.get_all())

    def log(self, level: Level, message: str) -> None:
        log.log(log.Level[level.name], message)

    def now_ms(self) -> int:
        return clock.now_ms()


def _registered() -> Module:
    if _module is None:
        raise RuntimeError("no module is exported: call switchyard_sdk.export(module) in the app")
    return _module


def _unexpected(error: Exception) -> tuple[str, str]:
    """One line for the handle-error and the frames for the log, without
    reading source files (``traceback.walk_tb`` only walks the frames)."""
    frames = [
        f"{frame.f_code.co_filename}:{line} in {frame.f_code.co_name}"
        for frame, line in traceback.walk_tb(error.__traceback__)
    ]
    where = f" (at {frames[-1]})" if frames else ""
    return f"unhandled {type(error).__name__}: {error}{where}", "\n  ".join(["traceback:", *frames])


class WitWorld(wit_world.WitWorld):
    """The exports of world ``module``; componentize-py looks for this class
    as ``WitWorld`` in the app module (``WitWorld = export(module)``)."""

    def describe(self) -> wit_world.Descriptor:
        d = _registered().describe()
        return wit_world.Descriptor(
            name=d.name,
            version=d.version,
            topics=d.topics,
            subscribes=d.subscribes,
            emits=d.emits,
            messages=[
                wit_world.MessageContract(
                    direction=_DIRECTIONS[m.direction],
                    topic=m.topic,
                    subtopic=m.subtopic,
                    summary=m.summary,
                    body_schema=m.body_schema,
                    answer_schema=m.answer_schema,
                )
                for m in d.messages
            ],
        )

    def handle(self, message: types.Envelope) -> str:
        ctx = Ctx(
            id=message.id,
            topic=message.topic,
            subtopic=message.subtopic,
            headers=message.headers,
            backend=WitHost(),
        )
        try:
            return _registered().dispatch(ctx, message.body)
        except HandlerError as e:
            raise Err(_HANDLE_ERRORS[e.kind](e.message)) from None
        except Exception as e:
            line, frames = _unexpected(e)
            log.log(log.Level.ERROR, f"{line}\n{frames}")
            raise Err(types.HandleError_Transient(line)) from None


def bind(module: Module) -> type[WitWorld]:
    """Registers ``module`` as the one the exports run; returns the class
    componentize-py calls."""
    global _module
    _module = module
    return WitWorld
