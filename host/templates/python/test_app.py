"""The {{name}} module's tests, natively (no wasm, no host):
`python3 -m pytest -q plugins/{{name}}`."""

import sys
from pathlib import Path

try:
    import switchyard_sdk  # noqa: F401  (installed: pip install -e plugins/sdk-py)
except ModuleNotFoundError:  # in the repository: the SDK beside this module
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "sdk-py"))

from app import EVENTS, module
from switchyard_sdk import Invalid, Rejected
from switchyard_sdk.testing import Kit


def test_create_stores_the_item_once_and_emits_created():
    kit = Kit(module)
    item = {"id": "a", "note": "hello"}
    assert kit.command("{{name}}", "create", item) == item
    assert kit.emitted_body(EVENTS, "created") == {"id": "a"}
    assert kit.command("{{name}}", "get", {"id": "a"}) == item
    assert kit.error("{{name}}", "create", {"id": "a", "note": "again"}) == Rejected(
        "item 'a' already exists"
    )
    assert len(kit.events()) == 1
    assert kit.version("items", "a") == 1


def test_bodies_are_checked():
    kit = Kit(module)
    assert kit.error("{{name}}", "create", {"id": "a"}) == Invalid(
        "body of {{name}}/create: missing field `note`"
    )
    assert kit.error("{{name}}", "create", {"id": "", "note": "x"}) == Invalid("id must not be empty")
    assert kit.error("{{name}}", "get", {"id": "b"}) == Rejected("unknown item 'b'")


def test_an_order_placed_is_logged():
    kit = Kit(module)
    kit.event("orders.events", "placed", {"order_id": "o1"})
    assert kit.logged("an order was placed")
