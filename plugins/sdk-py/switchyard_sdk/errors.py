"""Why a handler fails, and how the host's repository and emit errors map
onto that.

A handler fails by raising one of :class:`Invalid`, :class:`Rejected` or
:class:`Transient`; the host decides what happens next from the kind:

- :class:`Invalid`: HTTP 422, not retried, a failure event, dead-lettered;
- :class:`Rejected`: HTTP 409, not retried, a failure event, no dead letter;
- :class:`Transient`: retried with backoff up to ``max-attempts``; after the
  last attempt HTTP 503, a failure event and a dead letter.

In every case the message's writes and events are discarded.

The repository and event imports fail with a :class:`RepoError` or an
:class:`EmitError`; :class:`~switchyard_sdk.Ctx` turns those into handler
errors the way the Rust SDK does (a version conflict or an unavailable store
is worth retrying, anything else is a defect of the module or its grants),
keeping the original as ``__cause__``.
"""

from __future__ import annotations

import enum
from typing import ClassVar


class HandlerError(Exception):
    """Base of the three ways a handler fails. ``str(error)`` is the message
    the host records; two errors are equal when kind and message are."""

    #: ``invalid``, ``rejected`` or ``transient``: the WIT ``handle-error`` case.
    kind: ClassVar[str] = ""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, HandlerError):
            return NotImplemented
        return (self.kind, self.message) == (other.kind, other.message)

    def __hash__(self) -> int:
        return hash((self.kind, self.message))


class Invalid(HandlerError):
    """The message cannot be processed as it is (a body that does not parse,
    a call outside the module's grants): dead-lettered, not retried."""

    kind = "invalid"


class Rejected(HandlerError):
    """A business rule refused the command: not retried, not dead-lettered."""

    kind = "rejected"


class Transient(HandlerError):
    """Worth another attempt: the host retries with backoff."""

    kind = "transient"


class VersionConflict(Transient):
    """A write's expected version was stale (:class:`Transient`: the host
    runs the message again on fresh state). Catch it to turn "someone created
    it first" into a business answer. ``current`` is the version found
    (0: the document does not exist)."""

    def __init__(self, message: str, current: int) -> None:
        super().__init__(message)
        self.current = current


class RepoErrorKind(enum.Enum):
    """The cases of the WIT ``repo-error`` variant."""

    #: A delete or a put with an expected version found no document.
    NOT_FOUND = "not-found"
    #: The expected version is stale; the error carries the current one.
    VERSION_CONFLICT = "version-conflict"
    #: The call reaches outside what the manifest grants.
    NOT_PERMITTED = "not-permitted"
    #: A key, collection or value over the host's limits.
    TOO_LARGE = "too-large"
    #: A malformed argument (empty key, value that is not JSON, ...).
    INVALID = "invalid"
    #: The store could not answer.
    UNAVAILABLE = "unavailable"


class RepoError(Exception):
    """A repository import failed (the WIT ``repo-error``). Handlers see it
    only as the ``__cause__`` of the :class:`HandlerError` it maps to."""

    def __init__(self, kind: RepoErrorKind, detail: str = "", current: int = 0) -> None:
        self.kind = kind
        self.detail = detail
        self.current = current
        super().__init__(self.sentence())

    def sentence(self) -> str:
        """A readable sentence, as the Rust SDK words it."""
        match self.kind:
            case RepoErrorKind.NOT_FOUND:
                return "document not found"
            case RepoErrorKind.VERSION_CONFLICT:
                return f"version conflict (current version {self.current})"
            case RepoErrorKind.NOT_PERMITTED:
                return f"not permitted: {self.detail}"
            case RepoErrorKind.TOO_LARGE:
                return f"too large: {self.detail}"
            case RepoErrorKind.INVALID:
                return f"invalid: {self.detail}"
            case RepoErrorKind.UNAVAILABLE:
                return f"store unavailable: {self.detail}"

    def to_handler_error(self) -> HandlerError:
        """A version conflict or an unavailable store is :class:`Transient`
        (a conflict as :class:`VersionConflict`); anything else is
        :class:`Invalid`, dead-lettered for a replay once fixed."""
        message = f"repository: {self.sentence()}"
        match self.kind:
            case RepoErrorKind.VERSION_CONFLICT:
                return VersionConflict(message, self.current)
            case RepoErrorKind.UNAVAILABLE:
                return Transient(message)
            case _:
                return Invalid(message)


class EmitErrorKind(enum.Enum):
    """The cases of the WIT ``emit-error`` variant."""

    #: The topic is not among the module's ``emits``.
    NOT_PERMITTED = "not-permitted"
    #: Body too large, or too many events for one message.
    TOO_LARGE = "too-large"
    #: Malformed topic, subtopic, header or body.
    INVALID = "invalid"


class EmitError(Exception):
    """The event import failed (the WIT ``emit-error``)."""

    def __init__(self, kind: EmitErrorKind, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(self.sentence())

    def sentence(self) -> str:
        """A readable sentence, as the Rust SDK words it."""
        what = {
            EmitErrorKind.NOT_PERMITTED: "not permitted",
            EmitErrorKind.TOO_LARGE: "too large",
            EmitErrorKind.INVALID: "invalid",
        }[self.kind]
        return f"{what}: {self.detail}"

    def to_handler_error(self) -> HandlerError:
        """Every emit error is a defect (a topic outside the grants, an
        oversized or malformed event): :class:`Invalid`."""
        return Invalid(f"emit: {self.sentence()}")
