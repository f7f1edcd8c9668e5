"""What a handler sees of the message it handles, and its capabilities."""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, overload

from . import codec
from .errors import EmitError, Invalid, RepoError
from .rules import MAX_U32, MAX_U64

T = TypeVar("T")
R = TypeVar("R")


class Level(enum.Enum):
    """Levels of the host's structured log."""

    TRACE = "trace"
    DEBUG = "debug"
    INFO = "info"
    WARN = "warn"
    ERROR = "error"


@dataclass(frozen=True)
class Document:
    """A stored document as the repository import returns it."""

    key: str
    #: JSON text.
    value: str
    #: Starts at 1 and grows by one with every committed write.
    version: int


@dataclass(frozen=True)
class Versioned(Generic[T]):
    """A document read from the repository, with the version to pass back to
    :meth:`Ctx.put` for an optimistic update."""

    #: The document, decoded (into the type asked for, if any).
    value: T
    #: Starts at 1 and grows by one with every committed write.
    version: int


class Backend(Protocol):
    """What a :class:`Ctx` calls: the WIT imports inside a component, the
    in-memory host of :mod:`switchyard_sdk.testing` natively. The
    signatures are the WIT functions'; repository calls raise
    :class:`RepoError`, ``emit`` raises :class:`EmitError`."""

    def get(self, collection: str, key: str) -> Document | None: ...

    def put(self, collection: str, key: str, value: str, expected: int | None) -> int: ...

    def delete(self, collection: str, key: str, expected: int | None) -> bool: ...

    def scan(self, collection: str, prefix: str, limit: int) -> list[Document]: ...

    def read(self, owner: str, collection: str, key: str) -> Document | None: ...

    def read_scan(self, owner: str, collection: str, prefix: str, limit: int) -> list[Document]: ...

    def emit(self, topic: str, subtopic: str, body: str, headers: list[tuple[str, str]]) -> str: ...

    def config(self, key: str) -> str | None: ...

    def config_all(self) -> list[tuple[str, str]]: ...

    def log(self, level: Level, message: str) -> None: ...

    def now_ms(self) -> int: ...


def _repository(call: Callable[..., R], *args: Any) -> R:
    """Runs a repository import; its error becomes the handler error it maps to."""
    try:
        return call(*args)
    except RepoError as e:
        raise e.to_handler_error() from e


def _whole(n: object, top: int) -> bool:
    return isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= top


def _check_version(expected: int | None) -> None:
    if expected is not None and not _whole(expected, MAX_U64):
        raise Invalid(f"an expected version is a whole number from 0, not {expected!r}")


def _check_limit(limit: int) -> None:
    if not _whole(limit, MAX_U32):
        raise Invalid(f"a scan limit is a whole number from 0 to {MAX_U32}, not {limit!r}")


def _decode(collection: str, doc: Document, tp: Any) -> Versioned[Any]:
    try:
        value = codec.loads(doc.value)
        if tp is not None:
            value = codec.decode(value, tp)
    except ValueError as e:  # not JSON, or a codec.ParseError
        raise Invalid(f"stored document {collection}/{doc.key} does not decode: {e}") from None
    return Versioned(value, doc.version)


class Ctx:
    """The message being handled and the module's capabilities.

    Every call goes through the message's unit of work: reads see this
    message's own writes, and writes and events reach the store only if the
    handler returns (raising discards all of them). Failed calls raise the
    handler errors of :mod:`switchyard_sdk.errors`, which the handler
    usually lets propagate.
    """

    __slots__ = ("_id", "_topic", "_subtopic", "_headers", "_backend")

    def __init__(
        self,
        *,
        id: str,
        topic: str,
        subtopic: str,
        headers: Sequence[tuple[str, str]],
        backend: Backend,
    ) -> None:
        self._id = id
        self._topic = topic
        self._subtopic = subtopic
        self._headers = [(k, v) for k, v in headers]
        self._backend = backend

    @property
    def id(self) -> str:
        """The message id (the idempotency key)."""
        return self._id

    @property
    def topic(self) -> str:
        """The message's topic."""
        return self._topic

    @property
    def subtopic(self) -> str:
        """The message's subtopic (the action or the event's name)."""
        return self._subtopic

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Every header of the message, in order."""
        return list(self._headers)

    def header(self, name: str) -> str | None:
        """A header of the message, e.g. ``correlation-id``, ``partition-key``
        or ``attempt`` (names compare case-insensitively)."""
        wanted = name.lower()
        return next((v for k, v in self._headers if k.lower() == wanted), None)

    # -- this module's documents -------------------------------------------

    @overload
    def get(self, collection: str, key: str) -> Versioned[Any] | None: ...

    @overload
    def get(self, collection: str, key: str, type: type[T]) -> Versioned[T] | None: ...

    def get(self, collection: str, key: str, type: Any = None) -> Versioned[Any] | None:
        """One of this module's documents (this message's writes included),
        decoded from JSON, into ``type`` if given (a dataclass, ``list[...]``,
        ...); ``None`` if there is none. A stored value that does not decode
        is :class:`Invalid`."""
        doc = _repository(self._backend.get, collection, key)
        return None if doc is None else _decode(collection, doc, type)

    def put(self, collection: str, key: str, value: Any, expected: int | None = None) -> int:
        """Writes a document (``value``: anything :func:`~switchyard_sdk.encode`
        takes, e.g. a dataclass) and returns its new version.

        ``expected``: ``None`` writes whatever is there; ``0`` means "must
        not exist yet"; ``n`` means "must still be at version n". A mismatch
        raises :class:`~switchyard_sdk.VersionConflict` (a
        :class:`~switchyard_sdk.Transient`: the host runs the message again
        on fresh state).
        """
        _check_version(expected)
        try:
            text = codec.dumps(value)
        except (TypeError, ValueError) as e:
            raise Invalid(f"cannot serialise {collection}/{key}: {e}") from None
        return _repository(self._backend.put, collection, key, text, expected)

    def delete(self, collection: str, key: str, expected: int | None = None) -> bool:
        """Deletes a document; returns whether it existed. ``expected`` as
        in :meth:`put` (a version other than 0 for a document that does not
        exist is ``not-found``, :class:`Invalid`)."""
        _check_version(expected)
        return _repository(self._backend.delete, collection, key, expected)

    @overload
    def scan(self, collection: str, prefix: str, limit: int) -> list[tuple[str, Versioned[Any]]]: ...

    @overload
    def scan(
        self, collection: str, prefix: str, limit: int, type: type[T]
    ) -> list[tuple[str, Versioned[T]]]: ...

    def scan(
        self, collection: str, prefix: str, limit: int, type: Any = None
    ) -> list[tuple[str, Versioned[Any]]]:
        """This module's documents whose key starts with ``prefix`` (may be
        empty), in key order, at most ``limit`` (the host caps it at 1,000),
        as ``(key, Versioned)`` pairs decoded as in :meth:`get`."""
        _check_limit(limit)
        docs = _repository(self._backend.scan, collection, prefix, limit)
        return [(d.key, _decode(collection, d, type)) for d in docs]

    # -- other modules' documents ------------------------------------------

    @overload
    def read(self, owner: str, collection: str, key: str) -> Versioned[Any] | None: ...

    @overload
    def read(self, owner: str, collection: str, key: str, type: type[T]) -> Versioned[T] | None: ...

    def read(self, owner: str, collection: str, key: str, type: Any = None) -> Versioned[Any] | None:
        """A document of module ``owner``, which must be listed in this
        module's ``reads`` in plugins.toml (``Kit.reads`` in a test);
        without it :class:`Invalid` (``not permitted``)."""
        doc = _repository(self._backend.read, owner, collection, key)
        return None if doc is None else _decode(collection, doc, type)

    @overload
    def read_scan(
        self, owner: str, collection: str, prefix: str, limit: int
    ) -> list[tuple[str, Versioned[Any]]]: ...

    @overload
    def read_scan(
        self, owner: str, collection: str, prefix: str, limit: int, type: type[T]
    ) -> list[tuple[str, Versioned[T]]]: ...

    def read_scan(
        self, owner: str, collection: str, prefix: str, limit: int, type: Any = None
    ) -> list[tuple[str, Versioned[Any]]]:
        """:meth:`scan` of a collection of module ``owner`` (needs ``reads``)."""
        _check_limit(limit)
        docs = _repository(self._backend.read_scan, owner, collection, prefix, limit)
        return [(d.key, _decode(collection, d, type)) for d in docs]

    # -- events --------------------------------------------------------------

    def emit(
        self,
        topic: str,
        subtopic: str,
        body: Any,
        headers: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    ) -> str:
        """Emits an event and returns its id. It is published only if this
        message's handling succeeds; ``topic`` must be among the module's
        ``emits`` (else :class:`Invalid`). ``headers``: extra headers, e.g. a
        ``partition-key``; the host sets ``correlation-id``, ``causation-id``
        and ``timestamp`` itself."""
        try:
            text = codec.dumps(body)
        except (TypeError, ValueError) as e:
            raise Invalid(f"cannot serialise event {topic}/{subtopic}: {e}") from None
        pairs = list(headers.items()) if isinstance(headers, Mapping) else list(headers or [])
        try:
            return self._backend.emit(topic, subtopic, text, [(str(k), str(v)) for k, v in pairs])
        except EmitError as e:
            raise e.to_handler_error() from e

    # -- config, log, clock --------------------------------------------------

    def config(self, key: str) -> str | None:
        """A value of the module's ``config`` table in plugins.toml: strings
        as they are, other TOML values as JSON text."""
        return self._backend.config(key)

    def config_all(self) -> dict[str, str]:
        """Every key and value of the module's ``config`` table."""
        return dict(self._backend.config_all())

    def log(self, level: Level | str, message: str) -> None:
        """Writes to the host's log, tagged with module, message id and
        correlation id. ``level``: a :class:`Level` or its name (``"info"``)."""
        self._backend.log(level if isinstance(level, Level) else Level(level.lower()), str(message))

    def debug(self, message: str) -> None:
        """:meth:`log` at ``debug``."""
        self.log(Level.DEBUG, message)

    def info(self, message: str) -> None:
        """:meth:`log` at ``info``."""
        self.log(Level.INFO, message)

    def warn(self, message: str) -> None:
        """:meth:`log` at ``warn``."""
        self.log(Level.WARN, message)

    def error(self, message: str) -> None:
        """:meth:`log` at ``error``."""
        self.log(Level.ERROR, message)

    def now_ms(self) -> int:
        """Wall-clock milliseconds since the Unix epoch, from the host (the
        module has no clock of its own)."""
        return self._backend.now_ms()
