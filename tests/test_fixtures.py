"""The Stripe fixtures shipped in the package (send-test-event, tests) are the shared, real-shaped ones."""

import json
from pathlib import Path

from aipt import fixtures
from ingest import webhook

SHARED = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "stripe"


def packaged() -> dict[str, bytes]:
    return {str(p.relative_to(fixtures.ROOT)): p.read_bytes() for p in fixtures.ROOT.rglob("*.json")}


def test_every_packaged_fixture_is_a_snapshot_event_we_accept():
    files = packaged()
    assert len(files) == 15
    for name, body in files.items():
        event = webhook.parse(body.decode())
        assert event.id.startswith("evt_") and event.type == json.loads(body)["type"], name


def test_packaged_fixtures_match_the_shared_ones_where_shared_is_present():
    """Beside a checkout of the project shared/ is present (CI lays it there); the copies must not drift."""
    if SHARED.is_dir():
        shared = {str(p.relative_to(SHARED)): p.read_bytes() for p in SHARED.rglob("*.json")}
        assert packaged() == shared
