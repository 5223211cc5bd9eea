"""The Stripe fixtures shipped in the package (send-test-event, tests) are the shared, real-shaped ones."""

import json

from aipt import fixtures
from ingest import webhook
from tests.supabase import shared_dir


def packaged() -> dict[str, bytes]:
    return {str(p.relative_to(fixtures.ROOT)): p.read_bytes() for p in fixtures.ROOT.rglob("*.json")}


def test_every_packaged_fixture_is_a_snapshot_event_we_accept():
    files = packaged()
    assert len(files) == 15
    for name, body in files.items():
        event = webhook.parse(body.decode())
        assert event.id.startswith("evt_") and event.type == json.loads(body)["type"], name


def test_packaged_fixtures_match_the_shared_ones():
    """The copies must not drift from shared/fixtures/stripe (found as the upgrade tests find shared/)."""
    folder = shared_dir() / "fixtures" / "stripe"
    assert packaged() == {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*.json")}
