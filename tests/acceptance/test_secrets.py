"""Secrets stay where they belong: the public development secret only in `aipt dev` and
`aipt send-test-event`, nothing of `aipt dev`'s file in the services, alert URLs never in a log."""

from __future__ import annotations

import pytest

from aipt import alerts
from aipt.cli.service import DEV_SECRET
from tests.receiver import Receiver
from tests.servers import captured_logs, make_settings

SLACK_PATH = "/services/T0AIPT/B0AIPT/xoxSecretTokenPart"


@pytest.fixture
def in_dev_folder(tmp_path, monkeypatch, db_url, settings):
    """A folder where `aipt dev` ran: its file names the servers and the development secret."""
    (tmp_path / ".aipt").mkdir()
    (tmp_path / ".aipt" / "dev.env").write_text(
        f"DATABASE_URL={db_url}\nREDIS_URL={settings.redis_url}\nSTRIPE_WEBHOOK_SECRET={DEV_SECRET}\n"
    )
    monkeypatch.chdir(tmp_path)
    for name in ("DATABASE_URL", "REDIS_URL", "STRIPE_WEBHOOK_SECRET", "AIPT_DEV_DATA"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


async def test_web_refuses_the_development_secret(aipt, monkeypatch):
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", f"whsec_real,{DEV_SECRET}")
    result = await aipt("web")
    assert result.exit_code == 1
    assert "public development secret" in result.output and "whsec_" in result.output


async def test_web_and_worker_read_nothing_from_the_dev_folder(aipt, in_dev_folder, monkeypatch):
    for name in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)  # the aipt fixture set them; here only the file has them
    web = await aipt("web")
    assert web.exit_code == 1 and "DATABASE_URL is not set" in web.output
    worker = await aipt("worker")
    assert worker.exit_code == 1 and "DATABASE_URL is not set" in worker.output


async def test_operator_commands_take_the_dev_servers_but_never_the_secret(aipt, in_dev_folder, monkeypatch):
    import os

    for name in ("DATABASE_URL", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    listed = await aipt("events", "list", "--json")
    assert listed.exit_code == 0, listed.output  # DATABASE_URL came from the file
    assert "STRIPE_WEBHOOK_SECRET" not in os.environ


@pytest.mark.parametrize("status", [404, None])  # a receiver that answers an error, and one that is not there
async def test_an_alert_that_fails_logs_the_host_never_the_url(db_url, status):
    receiver = await Receiver(status=status or 200).start()
    url = receiver.url.replace("/alert", SLACK_PATH)
    if status is None:
        await receiver.close()  # nothing listens any more: connection refused
    s = make_settings(db_url, alert_webhook_url=url, alerts={"timeout_seconds": 0.5})
    try:
        with captured_logs() as logs:
            assert await alerts.post(s, "an event died") is False
    finally:
        if status is not None:
            await receiver.close()
    [line] = [e for e in logs if e["event"] == "alert not delivered"]
    assert line["alert_host"] == "127.0.0.1"
    assert "xoxSecretTokenPart" not in repr(line) and SLACK_PATH not in repr(line)
    if status:
        assert line["error"] == "HTTP 404 from the alert webhook"
