"""The native test kit: a module's handlers run under plain ``pytest``, on
CPython, against an in-memory host that keeps the real host's rules, so a
test that passes here means the same thing in a host:

- one unit of work per message: writes and emitted events are kept only if
  the handler returns, and are all discarded when it raises;
- versions start at 1 and grow by one per committed write; ``expected``
  versions are checked (``0`` = must not exist), a stale one is a
  :class:`~switchyard_sdk.VersionConflict` (``transient``) naming the
  current version;
- reading another module's collections needs :meth:`Kit.reads` (the
  manifest's ``reads``); emitting needs the topic among the module's
  ``emits`` (the manifest's ``emits``; :meth:`Kit.emit_grants` replaces them);
- the host's limits on names, keys, values, scans and events (an empty key,
  or one with a control character, is ``invalid``);
- an emitted event declared with ``emits_event`` must fit its type, or the
  message fails ``invalid``, as the host's schema check makes it;
- a message id already handled is answered with its first answer and changes
  nothing (the inbox);
- emitted events carry ``correlation-id`` and ``causation-id`` as the host
  sets them; config comes from :meth:`Kit.config`, time from a clock the test
  sets (:meth:`Kit.clock`); log lines are kept (:meth:`Kit.logged`) and
  printed to the test's captured output.

Outcomes are Pythonic: :meth:`Kit.command` returns the answer (decoded JSON)
or raises the handler's :class:`~switchyard_sdk.Invalid`,
:class:`~switchyard_sdk.Rejected` or :class:`~switchyard_sdk.Transient`;
:meth:`Kit.error` runs a message that must fail and returns its error, for
one-line assertions (handler errors compare by kind and message)::

    kit = Kit(module).reads("inventory").config("currency", "EUR")
    assert kit.command("orders", "place", {"order_id": "o1", "qty": 2})["status"] == "placed"
    assert kit.emitted("orders.events", "placed")
    assert kit.error("orders", "place", {"order_id": "o1", "qty": 0}) == Rejected("qty must be at least 1")

An exception that is not a handler error (a bug) rolls the message back and
propagates, so pytest shows its traceback; in a component the SDK reports it
as ``transient`` instead (see :mod:`switchyard_sdk.component`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar, overload

from .. import codec
from ..ctx import Ctx, Versioned
from ..errors import HandlerError, Invalid
from ..module import Descriptor, Module
from ..rules import (
    MAX_COLLECTION_LEN,
    MAX_EVENTS,
    MAX_KEY_LEN,
    MAX_SCAN_BYTES,
    MAX_SCAN_LIMIT,
    MAX_TOPIC_LEN,
    MAX_VALUE_BYTES,
    MAX_WRITE_BYTES,
    MAX_WRITES,
)
from .fake import DEFAULT_NOW_MS, Event, FakeHost, LogLine, Stored, Uow

__all__ = [
    "DEFAULT_NOW_MS",
    "MAX_COLLECTION_LEN",
    "MAX_EVENTS",
    "MAX_KEY_LEN",
    "MAX_SCAN_BYTES",
    "MAX_SCAN_LIMIT",
    "MAX_TOPIC_LEN",
    "MAX_VALUE_BYTES",
    "MAX_WRITES",
    "MAX_WRITE_BYTES",
    "Event",
    "FakeHost",
    "Kit",
    "LogLine",
    "Message",
]

T = TypeVar("T")

Headers = Mapping[str, str] | Sequence[tuple[str, str]]


def _pairs(headers: Headers | None) -> list[tuple[str, str]]:
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(k), str(v)) for k, v in items]


@dataclass(frozen=True)
class Message:
    """A message to hand to :meth:`Kit.handle`, for when its id, headers or
    raw text matter (:meth:`Kit.command` and :meth:`Kit.event` take the same
    keywords)."""

    topic: str
    subtopic: str
    #: The body, serialised to JSON (a dict, a dataclass, a list, ...).
    body: Any = None
    #: The message id; otherwise ``msg-1``, ``msg-2``, ...
    id: str | None = None
    #: Headers, e.g. ``{"correlation-id": "c-1", "partition-key": "o1"}``.
    headers: Headers = field(default_factory=list)
    #: The body text as it is, instead of ``body`` (e.g. text that is not JSON).
    raw: str | None = None

    def text(self) -> str:
        """The body as the module receives it."""
        if self.raw is not None:
            return self.raw
        return codec.dumps(self.body)


def _answer(text: str) -> Any:
    try:
        return codec.loads(text)
    except ValueError:
        return text


class Kit:
    """A module under test with its in-memory host.

    The builder methods (:meth:`reads`, :meth:`emit_grants`, :meth:`config`,
    :meth:`clock`) return the kit, so a test sets it up in one expression.
    """

    def __init__(self, module: Module) -> None:
        """``module`` with an empty repository; its emit grants are the
        topics it declares (:meth:`Module.emits`), as an unlisted module gets them."""
        self.module = module
        self.host = FakeHost(module.name, module.declared_emits)

    # -- set-up ------------------------------------------------------------------

    def reads(self, *owners: str) -> Self:
        """Grants reading ``owners``' collections (the manifest's ``reads``)."""
        self.host.reads.extend(owners)
        return self

    def emit_grants(self, *topics: str) -> Self:
        """Replaces the emit grants (the manifest's ``emits``), e.g. to test
        what the module does when a grant is missing."""
        self.host.emits = list(topics)
        return self

    def config(self, key: str, value: Any) -> Self:
        """Sets a key of the module's ``config`` table: a string as it is,
        another value as JSON text (as the host passes TOML values)."""
        self.host.config_table[key] = value if isinstance(value, str) else codec.dumps(value)
        return self

    def clock(self, now_ms: int) -> Self:
        """Sets the clock (milliseconds since the Unix epoch)."""
        self.set_clock(now_ms)
        return self

    def set_clock(self, now_ms: int) -> None:
        """Sets the clock between messages."""
        self.host.clock_ms = now_ms

    def advance_clock(self, ms: int) -> None:
        """Moves the clock on by ``ms``."""
        self.host.clock_ms += ms

    # -- messages ----------------------------------------------------------------

    def command(
        self,
        topic: str,
        subtopic: str,
        body: Any = None,
        *,
        id: str | None = None,
        headers: Headers | None = None,
        raw: str | None = None,
    ) -> Any:
        """Handles a command as the host would; returns the handler's answer
        as JSON decodes it (dicts, lists, ...) or raises its
        :class:`~switchyard_sdk.HandlerError`."""
        return self.handle(Message(topic, subtopic, body, id, _pairs(headers), raw))

    def event(
        self,
        topic: str,
        subtopic: str,
        body: Any = None,
        *,
        id: str | None = None,
        headers: Headers | None = None,
        raw: str | None = None,
    ) -> Any:
        """Delivers an event to the module's subscription: the same as
        :meth:`command`, named for what the test means."""
        return self.handle(Message(topic, subtopic, body, id, _pairs(headers), raw))

    def deliver(self, event: Event) -> Any:
        """Delivers an event another module's kit emitted (same id and
        headers), to test a saga across modules natively."""
        return self.handle(
            Message(event.topic, event.subtopic, event.body, event.id, list(event.headers.items()))
        )

    def error(
        self,
        topic: str,
        subtopic: str,
        body: Any = None,
        *,
        id: str | None = None,
        headers: Headers | None = None,
        raw: str | None = None,
    ) -> HandlerError:
        """Handles a message that must fail and returns its error (an
        ``AssertionError`` if it succeeded), for one-line assertions:
        ``assert kit.error("t", "s", body) == Rejected("...")``."""
        try:
            answer = self.handle(Message(topic, subtopic, body, id, _pairs(headers), raw))
        except HandlerError as e:
            return e
        raise AssertionError(f"{topic}/{subtopic} succeeded with {answer!r}; an error was expected")

    def handle(self, message: Message) -> Any:
        """Handles one message in its own unit of work: when the handler
        returns, its writes and events are kept; when it raises, all of them
        are discarded. A message id handled before is answered with the first
        answer and changes nothing."""
        host = self.host
        if message.id is None:
            host.next_message += 1
            message_id = f"msg-{host.next_message}"
        else:
            message_id = message.id
        if message_id in host.inbox:
            return _answer(host.inbox[message_id])
        headers = _pairs(message.headers)
        correlation_id = next((v for k, v in headers if k.lower() == "correlation-id"), message_id)
        if not any(k == "correlation-id" for k, _ in headers):
            headers.append(("correlation-id", correlation_id))
        # The host tells the module which attempt this is.
        headers.append(("attempt", "1"))
        uow = Uow(message_id=message_id, correlation_id=correlation_id, before=dict(host.docs))
        host.uow = uow
        ctx = Ctx(
            id=message_id, topic=message.topic, subtopic=message.subtopic, headers=headers, backend=host
        )
        try:
            answer = self.module.dispatch(ctx, message.text())
            for event in uow.events:
                problem = self.module.check_emitted(event.topic, event.subtopic, event.body)
                if problem:
                    raise Invalid(
                        f"emitted event {event.topic}/{event.subtopic} does not match its declared schema: {problem}"
                    )
        except BaseException:
            host.docs = uow.before
            raise
        finally:
            host.uow = None
        host.events.extend(uow.events)
        host.inbox[message_id] = answer
        return _answer(answer)

    # -- what happened -----------------------------------------------------------

    def emitted(self, topic: str, subtopic: str) -> bool:
        """Whether a handled message emitted ``topic``/``subtopic`` (since
        the last :meth:`clear_events`)."""
        return any(e.topic == topic and e.subtopic == subtopic for e in self.host.events)

    def emitted_body(self, topic: str, subtopic: str) -> Any:
        """The body of the last ``topic``/``subtopic`` event emitted; an
        ``AssertionError`` listing what was emitted if there is none."""
        for e in reversed(self.host.events):
            if e.topic == topic and e.subtopic == subtopic:
                return e.body
        seen = ", ".join(f"{e.topic}/{e.subtopic}" for e in self.host.events)
        raise AssertionError(f"no {topic}/{subtopic} event was emitted (emitted: [{seen}])")

    def events(self) -> list[Event]:
        """Every event emitted since the last :meth:`clear_events`, in order."""
        return list(self.host.events)

    def take_events(self) -> list[Event]:
        """Returns and forgets the emitted events (e.g. to :meth:`deliver`
        them to another module's kit)."""
        events, self.host.events = self.host.events, []
        return events

    def clear_events(self) -> None:
        """Forgets the emitted events."""
        self.host.events.clear()

    @overload
    def doc(self, collection: str, key: str) -> Any: ...

    @overload
    def doc(self, collection: str, key: str, type: type[T]) -> T | None: ...

    def doc(self, collection: str, key: str, type: Any = None) -> Any:
        """One of the module's documents, decoded (into ``type`` if given);
        ``None`` if there is none."""
        found = self.doc_of(self.module.name, collection, key, type)
        return None if found is None else found.value

    def version(self, collection: str, key: str) -> int:
        """The current version of one of the module's documents (0 = absent)."""
        stored = self.host.docs.get(self.host.own(collection, key))
        return 0 if stored is None else stored.version

    def doc_of(self, owner: str, collection: str, key: str, type: Any = None) -> Versioned[Any] | None:
        """Any module's document with its version, decoded (into ``type``
        if given)."""
        stored = self.host.docs.get((owner, collection, key))
        if stored is None:
            return None
        value = codec.loads(stored.value)
        return Versioned(value if type is None else codec.decode(value, type), stored.version)

    def seed(self, collection: str, key: str, value: Any) -> int:
        """Writes one of the module's documents outside any message (state
        before the test, or another writer between messages); returns the
        new version."""
        return self.seed_for(self.module.name, collection, key, value)

    def seed_for(self, owner: str, collection: str, key: str, value: Any) -> int:
        """:meth:`seed` for another module's collection, for
        :meth:`Ctx.read` (grant it with :meth:`reads`)."""
        doc = (owner, collection, key)
        stored = self.host.docs.get(doc)
        version = (0 if stored is None else stored.version) + 1
        self.host.docs[doc] = Stored(codec.dumps(value), version)
        return version

    def logged(self, needle: str) -> bool:
        """Whether the module logged a line containing ``needle``."""
        return any(needle in line.message for line in self.host.logs)

    def logs(self) -> list[LogLine]:
        """Every line the module logged."""
        return list(self.host.logs)

    def describe(self) -> Descriptor:
        """The module's ``describe``: name, version, topics and schemas."""
        return self.module.describe()
