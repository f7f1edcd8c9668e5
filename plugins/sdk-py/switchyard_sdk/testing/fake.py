"""The in-memory host behind a :class:`~switchyard_sdk.Ctx` in tests: one
module's documents, events, log and inbox, and the unit of work of the
message being handled, under the host's rules (:mod:`switchyard_sdk.rules`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from .. import codec
from ..ctx import Document, Level
from ..errors import EmitError, EmitErrorKind, RepoError, RepoErrorKind
from ..rules import (
    MAX_EVENTS,
    MAX_SCAN_BYTES,
    MAX_SCAN_LIMIT,
    MAX_TOPIC_LEN,
    MAX_VALUE_BYTES,
    MAX_WRITES,
    collection_problem,
    key_problem,
    size,
    valid_name,
    write_budget_problem,
)

#: The clock's reading until a test sets it: 2026-01-01T00:00:00Z.
DEFAULT_NOW_MS = 1_767_225_600_000

#: (owner module, collection, key)
DocId = tuple[str, str, str]


@dataclass(frozen=True)
class Stored:
    """A document as the store holds it."""

    value: str
    version: int


@dataclass(frozen=True)
class Event:
    """An event a handled message emitted (and whose unit of work committed)."""

    #: ``evt-1``, ``evt-2``, ... in emission order.
    id: str
    topic: str
    subtopic: str
    #: The module's headers plus ``correlation-id`` and ``causation-id``.
    headers: dict[str, str]
    #: The JSON body, decoded.
    body: Any


@dataclass(frozen=True)
class LogLine:
    """One line the module logged."""

    level: Level
    message: str


@dataclass
class Uow:
    """The message being handled: what commit or rollback needs."""

    message_id: str
    correlation_id: str
    #: The documents as they were before the message: restored on an error,
    #: and the base of the versions its writes get.
    before: dict[DocId, Stored]
    written: dict[DocId, None] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    #: Bytes of the events' topics, subtopics, bodies and headers.
    event_bytes: int = 0


def _repo(kind: str, detail: str) -> RepoError:
    return RepoError(RepoErrorKind(kind), detail)


def _check_collection(collection: str) -> None:
    if problem := collection_problem(collection):
        raise _repo(*problem)


def _check_key(key: str, *, prefix: bool = False) -> None:
    if problem := key_problem(key, may_be_empty=prefix):
        raise _repo(*problem)


def _check_expected(expected: int | None, current: int) -> None:
    if expected is not None and expected != current:
        raise RepoError(RepoErrorKind.VERSION_CONFLICT, current=current)


def _fit_scan(docs: list[Document], what: str) -> list[Document]:
    """The scan's answer if it fits :data:`MAX_SCAN_BYTES`; else
    ``too-large`` with how many of its first documents fit, as the host says it."""
    total = 0
    fit = 0
    for d in docs:
        total += size(d.key) + size(d.value)
        if total > MAX_SCAN_BYTES:
            break
        fit += 1
    if fit == len(docs):
        return docs
    raise _repo(
        "too-large",
        f"a scan of {what} would return more than {MAX_SCAN_BYTES} bytes (max-scan-bytes): "
        f"the first {fit} documents fit; ask for at most {fit}, or narrow the prefix",
    )


def _write_size(doc: DocId, value_len: int) -> int:
    _, collection, key = doc
    return size(collection) + size(key) + value_len


class FakeHost:
    """The in-memory host of a :class:`~switchyard_sdk.testing.Kit`; it
    implements :class:`~switchyard_sdk.ctx.Backend`."""

    def __init__(self, module: str, emits: list[str]) -> None:
        self.module = module
        self.reads: list[str] = []
        self.emits = emits
        self.config_table: dict[str, str] = {}
        self.clock_ms = DEFAULT_NOW_MS
        self.docs: dict[DocId, Stored] = {}
        self.events: list[Event] = []
        self.logs: list[LogLine] = []
        #: Committed answers by message id.
        self.inbox: dict[str, str] = {}
        self.uow: Uow | None = None
        self.next_message = 0
        self.next_event = 0

    def own(self, collection: str, key: str) -> DocId:
        return (self.module, collection, key)

    def _document(self, doc: DocId) -> Document | None:
        stored = self.docs.get(doc)
        return None if stored is None else Document(doc[2], stored.value, stored.version)

    def _check_read_grant(self, owner: str) -> None:
        if owner != self.module and owner not in self.reads:
            raise _repo(
                "not-permitted",
                f"module '{self.module}' may not read module '{owner}': "
                "list it in `reads` in plugins.toml (Kit.reads in a test)",
            )

    def _scan_of(self, owner: str, collection: str, prefix: str, limit: int) -> list[Document]:
        _check_collection(collection)
        _check_key(prefix, prefix=True)
        # A guest-chosen limit: capped as the host caps it.
        limit = min(limit, MAX_SCAN_LIMIT)
        found = sorted(
            (k, d)
            for (o, c, k), d in self.docs.items()
            if o == owner and c == collection and k.startswith(prefix)
        )
        docs = [Document(k, d.value, d.version) for k, d in found[:limit]]
        return _fit_scan(docs, collection if owner == self.module else f"{owner}/{collection}")

    def _current_uow(self) -> Uow:
        if self.uow is None:
            raise _repo("unavailable", "no message is being handled")
        return self.uow

    def _held(self, except_doc: DocId | None = None) -> int:
        """What this message's writes (collection, key and value each) and
        events hold, leaving out the write of ``except_doc``."""
        if self.uow is None:
            return 0
        writes = sum(
            _write_size(w, size(self.docs[w].value) if w in self.docs else 0)
            for w in self.uow.written
            if w != except_doc
        )
        return writes + self.uow.event_bytes

    def _write(self, doc: DocId, value: str | None) -> int:
        """The version a write in this message produces: one past the
        version before the message, however often the message writes it."""
        held = self._held(doc) + _write_size(doc, 0 if value is None else size(value))
        if problem := write_budget_problem(held):
            raise _repo("too-large", problem)
        uow = self._current_uow()
        base = uow.before[doc].version if doc in uow.before else 0
        if doc not in uow.written:
            if len(uow.written) >= MAX_WRITES:
                raise _repo("too-large", f"more than {MAX_WRITES} documents written by one message")
            uow.written[doc] = None
        if value is None:
            self.docs.pop(doc, None)
        else:
            self.docs[doc] = Stored(value, base + 1)
        return base + 1

    # -- the Backend -----------------------------------------------------------

    def get(self, collection: str, key: str) -> Document | None:
        _check_collection(collection)
        _check_key(key)
        return self._document(self.own(collection, key))

    def put(self, collection: str, key: str, value: str, expected: int | None) -> int:
        _check_collection(collection)
        _check_key(key)
        if size(value) > MAX_VALUE_BYTES:
            raise _repo(
                "too-large",
                f"value of {collection}/{key} is {size(value)} bytes; the limit is {MAX_VALUE_BYTES}",
            )
        try:
            codec.loads(value)
        except ValueError as e:
            raise _repo("invalid", f"value of {collection}/{key} is not JSON: {e}") from None
        doc = self.own(collection, key)
        _check_expected(expected, self.docs[doc].version if doc in self.docs else 0)
        return self._write(doc, value)

    def delete(self, collection: str, key: str, expected: int | None) -> bool:
        _check_collection(collection)
        _check_key(key)
        doc = self.own(collection, key)
        current = self.docs[doc].version if doc in self.docs else 0
        if current == 0:
            if expected is not None and expected != 0:
                raise RepoError(RepoErrorKind.NOT_FOUND)
            return False
        _check_expected(expected, current)
        self._write(doc, None)
        return True

    def scan(self, collection: str, prefix: str, limit: int) -> list[Document]:
        return self._scan_of(self.module, collection, prefix, limit)

    def read(self, owner: str, collection: str, key: str) -> Document | None:
        self._check_read_grant(owner)
        _check_collection(collection)
        _check_key(key)
        return self._document((owner, collection, key))

    def read_scan(self, owner: str, collection: str, prefix: str, limit: int) -> list[Document]:
        self._check_read_grant(owner)
        return self._scan_of(owner, collection, prefix, limit)

    def emit(self, topic: str, subtopic: str, body: str, headers: list[tuple[str, str]]) -> str:
        if topic not in self.emits:
            raise EmitError(
                EmitErrorKind.NOT_PERMITTED,
                f"module '{self.module}' may not emit to '{topic}': add it to `emits` "
                f"(declared: {', '.join(self.emits)})",
            )
        if not valid_name(topic) or not valid_name(subtopic):
            raise EmitError(
                EmitErrorKind.INVALID,
                f"topic and subtopic must be 1 to {MAX_TOPIC_LEN} of [A-Za-z0-9._-]: {topic!r}/{subtopic!r}",
            )
        event_size = size(topic) + size(subtopic) + size(body) + sum(size(k) + size(v) for k, v in headers)
        if problem := write_budget_problem(self._held() + event_size):
            raise EmitError(EmitErrorKind.TOO_LARGE, problem)
        try:
            value = codec.loads(body)
        except ValueError as e:
            raise EmitError(EmitErrorKind.INVALID, f"event body is not JSON: {e}") from None
        self.next_event += 1
        event_id = f"evt-{self.next_event}"
        if self.uow is None:
            raise EmitError(EmitErrorKind.INVALID, "no message is being handled")
        uow = self.uow
        if len(uow.events) >= MAX_EVENTS:
            raise EmitError(EmitErrorKind.TOO_LARGE, f"more than {MAX_EVENTS} events from one message")
        uow.event_bytes += event_size
        tags = dict(headers) | {"correlation-id": uow.correlation_id, "causation-id": uow.message_id}
        uow.events.append(Event(event_id, topic, subtopic, tags, value))
        return event_id

    def config(self, key: str) -> str | None:
        return self.config_table.get(key)

    def config_all(self) -> list[tuple[str, str]]:
        return sorted(self.config_table.items())

    def log(self, level: Level, message: str) -> None:
        # Shown by pytest when a test fails (captured stderr).
        print(f"[{self.module} {level.value}] {message}", file=sys.stderr)
        self.logs.append(LogLine(level, message))

    def now_ms(self) -> int:
        return self.clock_ms
