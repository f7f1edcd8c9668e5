"""A module: its identity, its typed handlers and the contract they declare."""

from __future__ import annotations

import enum
import inspect
import json
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, overload

from . import codec
from .ctx import Ctx
from .errors import Invalid
from .rules import valid_name
from .schema import json_schema, summary

F = TypeVar("F", bound=Callable[..., Any])


class Direction(enum.Enum):
    """Which way a message goes, seen from the module."""

    #: A command on a topic the module owns.
    COMMAND = "command"
    #: An event on a topic it subscribes to.
    CONSUMES = "consumes"
    #: An event it emits.
    EMITS = "emits"


@dataclass(frozen=True)
class MessageContract:
    """One kind of message the module takes or sends (WIT ``message-contract``)."""

    direction: Direction
    topic: str
    subtopic: str
    #: One line for people (may be empty).
    summary: str
    #: JSON Schema (draft 2020-12) of the body, as JSON text.
    body_schema: str | None
    #: JSON Schema of a command's answer; ``None``: not declared.
    answer_schema: str | None


@dataclass(frozen=True)
class Descriptor:
    """What ``describe`` answers (WIT 0.2.0 ``descriptor``)."""

    name: str
    version: str
    #: Command topics the module owns.
    topics: list[str]
    #: Event topics it listens to.
    subscribes: list[str]
    #: Topics it may emit to.
    emits: list[str]
    #: Every command, consumed event and emitted event, with its schema.
    messages: list[MessageContract]


def _text(schema: dict[str, Any] | None) -> str | None:
    return None if schema is None else json.dumps(schema, ensure_ascii=False, separators=(",", ":"))


@dataclass(eq=False)
class _Declared:
    """A message kind with its body type, shape and schemas (built once, at
    registration: inside a component that happens while componentize-py
    pre-initialises the app, so a message pays nothing for it)."""

    direction: Direction
    topic: str
    subtopic: str
    body: codec.Shape
    body_schema: dict[str, Any]
    answer_schema: dict[str, Any] | None
    summary: str
    handler: Callable[[Ctx, Any], Any] | None = None

    @property
    def label(self) -> str:
        return f"{self.topic}/{self.subtopic}"

    def contract(self) -> MessageContract:
        return MessageContract(
            direction=self.direction,
            topic=self.topic,
            subtopic=self.subtopic,
            summary=self.summary,
            body_schema=_text(self.body_schema),
            answer_schema=_text(self.answer_schema),
        )

    def run(self, ctx: Ctx, text: str) -> str:
        """Parses the body, calls the handler, serialises its answer."""
        assert self.handler is not None
        try:
            value = codec.loads(text)
        except ValueError as e:
            raise Invalid(f"body of {self.label} is not JSON: {e}") from None
        try:
            body = self.body.decode(value, "")
        except codec.ParseError as e:
            raise Invalid(f"body of {self.label}: {e}") from None
        answer = self.handler(ctx, body)
        try:
            return codec.dumps(answer)
        except (TypeError, ValueError) as e:
            raise Invalid(f"result of {self.label} does not serialise: {e}") from None


_UNDECLARED: Any = object()


def _types_of(handler: Callable[..., Any], label: str) -> tuple[Any, Any]:
    """The body type (hint of the second parameter, ``Any`` without one) and
    the answer type (return hint, :data:`_UNDECLARED` without one)."""
    try:
        signature = inspect.signature(handler)
    except (TypeError, ValueError):
        return Any, _UNDECLARED
    try:
        signature.bind(None, None)
    except TypeError:
        name = getattr(handler, "__qualname__", repr(handler))
        raise TypeError(f"the handler of {label} must take (ctx, body): {name}{signature}") from None
    try:
        hints = typing.get_type_hints(handler, include_extras=True)
    except NameError as e:
        raise TypeError(f"the type hints of the handler of {label} do not resolve: {e}") from None
    except TypeError:  # not a function (a partial, a callable object)
        hints = {}
    names = list(signature.parameters)
    body = hints.get(names[1], Any) if len(names) > 1 else Any
    return body, hints.get("return", _UNDECLARED)


class Module:
    """A module: a name, a version, and handlers registered per command and
    per event; it is what the component's ``describe`` and ``handle`` run.

    Build it at import time, as a module-level value, and export it with
    :func:`~switchyard_sdk.export`::

        module = Module("shipping", "0.1.0")

        @module.command("shipping", "create")
        def create(ctx: Ctx, cmd: CreateShipment) -> Shipment: ...

        module.emits_event("shipping.events", "created", Created)
        WitWorld = export(module)

    Registering derives each body's shape and JSON Schema from the handler's
    type hints; a type without a JSON form is a ``TypeError`` right there.
    """

    def __init__(self, name: str, version: str) -> None:
        self._name = name
        self._version = version
        self._commands: list[_Declared] = []
        self._events: list[_Declared] = []
        self._emitted: list[_Declared] = []
        self._emits: list[str] = []

    @property
    def name(self) -> str:
        """The module's name."""
        return self._name

    @property
    def version(self) -> str:
        """The module's version."""
        return self._version

    @property
    def declared_emits(self) -> list[str]:
        """Topics declared with :meth:`emits` or :meth:`emits_event`."""
        return list(self._emits)

    # -- registration ----------------------------------------------------------

    @overload
    def command(self, topic: str, subtopic: str) -> Callable[[F], F]: ...

    @overload
    def command(self, topic: str, subtopic: str, handler: F) -> F: ...

    def command(self, topic: str, subtopic: str, handler: Any = None) -> Any:
        """Handles command ``topic``/``subtopic``; the module owns ``topic``
        (no other module may). A decorator, or a call with the handler.

        The handler is ``f(ctx, body) -> answer``: the body is parsed into
        the type hint of its second parameter (a body that does not fit is
        :class:`~switchyard_sdk.Invalid`, naming the field), and what it
        returns, serialised, is the command's answer. ``describe`` declares
        the JSON Schemas of both (the answer's from the return hint), with
        the first line of the body class's docstring as the summary.
        """

        def register(fn: F) -> F:
            self._commands.append(self._declare(Direction.COMMAND, topic, subtopic, fn))
            return fn

        return register if handler is None else register(handler)

    @overload
    def on_event(self, topic: str, subtopic: str) -> Callable[[F], F]: ...

    @overload
    def on_event(self, topic: str, subtopic: str, handler: F) -> F: ...

    def on_event(self, topic: str, subtopic: str, handler: Any = None) -> Any:
        """Handles event ``topic``/``subtopic``; the module subscribes to
        ``topic``, and other subtopics of it are acknowledged and ignored.
        The body is parsed and declared as for :meth:`command`; what the
        handler returns is ignored by the host. Decorators stack, so one
        function may handle several subtopics (``ctx.subtopic`` tells which).
        """

        def register(fn: F) -> F:
            self._events.append(self._declare(Direction.CONSUMES, topic, subtopic, fn))
            return fn

        return register if handler is None else register(handler)

    def emits(self, topic: str) -> Module:
        """Declares a topic this module emits to (the manifest's ``emits``
        must grant it too; ``switchyard check`` compares them)."""
        if not valid_name(topic):
            raise ValueError(f"topic {topic!r} must be 1 to 255 of [A-Za-z0-9._-]")
        if topic not in self._emits:
            self._emits.append(topic)
        return self

    def emits_event(self, topic: str, subtopic: str, body: Any) -> Module:
        """Declares event ``topic``/``subtopic`` with a body of type ``body``
        (and ``topic`` as with :meth:`emits`): ``describe`` publishes its
        schema, and the host checks every such event the module emits
        against it, failing the message as ``invalid`` when one does not
        match (so does the test kit)."""
        self.emits(topic)
        self._check_new(Direction.EMITS, topic, subtopic, self._emitted)
        try:
            shape, schema = codec.shape_of(body), json_schema(body)
        except TypeError as e:
            raise TypeError(f"emits {topic}/{subtopic}: {e}") from None
        self._emitted.append(
            _Declared(
                direction=Direction.EMITS,
                topic=topic,
                subtopic=subtopic,
                body=shape,
                body_schema=schema,
                answer_schema=None,
                summary=summary(body),
            )
        )
        return self

    def _check_new(self, direction: Direction, topic: str, subtopic: str, known: list[_Declared]) -> None:
        label = f"{direction.value} {topic}/{subtopic}"
        if not valid_name(topic) or not valid_name(subtopic):
            raise ValueError(f"{label}: topic and subtopic must be 1 to 255 of [A-Za-z0-9._-]")
        if any(d.topic == topic and d.subtopic == subtopic for d in known):
            raise ValueError(f"{label} is registered twice")

    def _declare(
        self, direction: Direction, topic: str, subtopic: str, handler: Callable[..., Any]
    ) -> _Declared:
        known = self._commands if direction is Direction.COMMAND else self._events
        self._check_new(direction, topic, subtopic, known)
        label = f"{topic}/{subtopic}"
        body, answer = _types_of(handler, label)
        try:
            shape = codec.shape_of(body)
            body_schema = json_schema(body)
            answer_schema = (
                json_schema(answer) if direction is Direction.COMMAND and answer is not _UNDECLARED else None
            )
        except TypeError as e:
            raise TypeError(f"{direction.value} {label}: {e}") from None
        return _Declared(
            direction=direction,
            topic=topic,
            subtopic=subtopic,
            body=shape,
            body_schema=body_schema,
            answer_schema=answer_schema,
            summary=summary(body),
            handler=handler,
        )

    # -- what the host sees ------------------------------------------------------

    def describe(self) -> Descriptor:
        """Name, version, topics and every message's contract, as the
        component's ``describe`` answers them."""
        return Descriptor(
            name=self._name,
            version=self._version,
            topics=_distinct(d.topic for d in self._commands),
            subscribes=_distinct(d.topic for d in self._events),
            emits=list(self._emits),
            messages=[d.contract() for d in (*self._commands, *self._events, *self._emitted)],
        )

    def schema(self, topic: str, subtopic: str, answer: bool = False) -> dict[str, Any] | None:
        """The JSON Schema ``describe`` declares for the body of a command,
        consumed event or emitted event (``answer``: of a command's answer),
        if any."""
        for d in (*self._commands, *self._events, *self._emitted):
            if d.topic == topic and d.subtopic == subtopic:
                return d.answer_schema if answer else d.body_schema
        return None

    def check_emitted(self, topic: str, subtopic: str, body: Any) -> str | None:
        """Why an event's JSON ``body`` does not fit the type declared with
        :meth:`emits_event` (``None``: it fits, or none is declared), worded
        like the host's check: ``/qty: expected an integer, got "two"``."""
        for d in self._emitted:
            if d.topic == topic and d.subtopic == subtopic:
                try:
                    d.body.decode(body, "")
                except codec.ParseError as e:
                    return f"{e.path or 'body'}: {e.problem}"
        return None

    def dispatch(self, ctx: Ctx, body: str) -> str:
        """Routes one message to its handler, as the component's ``handle``
        does, and returns the answer as JSON text.

        An unknown subtopic of a command topic the module owns is
        :class:`~switchyard_sdk.Invalid` naming the known ones; one of a
        subscribed event topic is acknowledged with ``null``; any other
        topic is :class:`~switchyard_sdk.Invalid`.
        """
        for declared in (*self._commands, *self._events):
            if declared.topic == ctx.topic and declared.subtopic == ctx.subtopic:
                return declared.run(ctx, body)
        known = [d.subtopic for d in self._commands if d.topic == ctx.topic]
        if known:
            raise Invalid(
                f"unknown subtopic '{ctx.subtopic}' for topic '{ctx.topic}' (known: {', '.join(known)})"
            )
        if any(d.topic == ctx.topic for d in self._events):
            return "null"  # an event this module has no interest in
        raise Invalid(f"module {self._name} does not handle topic '{ctx.topic}'")


def _distinct(topics: typing.Iterable[str]) -> list[str]:
    return list(dict.fromkeys(topics))
