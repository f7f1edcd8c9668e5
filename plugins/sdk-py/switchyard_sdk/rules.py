"""The host's rules on names and sizes.

The module side uses the name rule to refuse a registration the host would
refuse at load; the in-memory host of :mod:`switchyard_sdk.testing` keeps all
of them, so a test sees the same refusals a running host gives. Sizes are in
bytes of UTF-8, as the host counts them.
"""

from __future__ import annotations

import re
import unicodedata

#: Longest collection name (as the host).
MAX_COLLECTION_LEN = 128
#: Longest document key, and scan prefix (as the host).
MAX_KEY_LEN = 512
#: Largest document value, in bytes of JSON (as the host).
MAX_VALUE_BYTES = 1024 * 1024
#: Most documents one message may write (as the host).
MAX_WRITES = 1_000
#: Most rows one scan returns, whatever the module asks for (as the host).
MAX_SCAN_LIMIT = 1_000
#: Most events one message may emit (as the host).
MAX_EVENTS = 1_000
#: Longest topic or subtopic (SPEC §3).
MAX_TOPIC_LEN = 255
#: Bytes one message may buffer in writes and events together (collection,
#: key and value of each write; topic, subtopic, body and headers of each
#: event): the host's default ``max-write-bytes``.
MAX_WRITE_BYTES = 8 * 1024 * 1024
#: Bytes of keys and values one scan may return: the host's default
#: ``max-scan-bytes``.
MAX_SCAN_BYTES = 4 * 1024 * 1024
#: Largest value of a WIT ``u32`` (a scan's limit).
MAX_U32 = 2**32 - 1
#: Largest value of a WIT ``u64`` (a version).
MAX_U64 = 2**64 - 1

_NAME = re.compile(r"[A-Za-z0-9._-]+")


def size(text: str) -> int:
    """Bytes of ``text`` in UTF-8."""
    return len(text.encode("utf-8"))


def valid_name(name: str) -> bool:
    """A topic, subtopic or collection name: non-empty ``[A-Za-z0-9._-]``
    (topics and subtopics also at most :data:`MAX_TOPIC_LEN` bytes)."""
    return _NAME.fullmatch(name) is not None and len(name) <= MAX_TOPIC_LEN


def collection_problem(collection: str) -> tuple[str, str] | None:
    """Why ``collection`` is refused, as ``(repo-error kind, message)``."""
    if _NAME.fullmatch(collection) is None:
        return ("invalid", f"collection {collection!r} must be non-empty [A-Za-z0-9._-]")
    if len(collection) > MAX_COLLECTION_LEN:
        return ("too-large", f"collection name over {MAX_COLLECTION_LEN} bytes")
    return None


def key_problem(key: str, *, may_be_empty: bool = False) -> tuple[str, str] | None:
    """Why a document key (or, with ``may_be_empty``, a scan prefix) is
    refused: empty, over :data:`MAX_KEY_LEN` bytes, or holding a control
    character (NUL included)."""
    if not key and not may_be_empty:
        return ("invalid", "a document key must not be empty")
    if size(key) > MAX_KEY_LEN:
        return ("too-large", f"key of {size(key)} bytes; the limit is {MAX_KEY_LEN}")
    if any(unicodedata.category(c) == "Cc" for c in key):
        return ("invalid", f"key {key!r} holds a control character")
    return None


def write_budget_problem(total: int) -> str | None:
    """The ``too-large`` message of a message whose writes and events would
    hold ``total`` bytes, if that is over :data:`MAX_WRITE_BYTES`."""
    if total > MAX_WRITE_BYTES:
        return (
            f"this message's writes and events would hold {total} bytes; "
            f"its budget is {MAX_WRITE_BYTES} (max-write-bytes)"
        )
    return None
