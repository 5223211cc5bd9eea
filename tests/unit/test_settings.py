"""Settings: settings.toml's defaults, the environment over them, and one clear line for a bad value."""

from __future__ import annotations

import pytest

from aipt import settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """Only what each test sets: none of the developer's or CI's variables."""
    for name in list(__import__("os").environ):
        if name.startswith("AIPT_") or name in (
            "DATABASE_URL",
            "REDIS_URL",
            "STRIPE_WEBHOOK_SECRET",
            "PORT",
            "LOG_FORMAT",
        ):
            monkeypatch.delenv(name)


def test_defaults_come_from_settings_toml_and_pinned_names_override_them(monkeypatch):
    s = settings.load()
    assert (s.port, s.retry.attempts, s.retry.base_seconds, s.retry.cap_seconds) == (8000, 3, 60, 3600)
    assert (s.sweeper.every_seconds, s.sweeper.pending_after_seconds) == (60, 60)
    monkeypatch.setenv("PORT", "9001")
    monkeypatch.setenv("AIPT_RETRY_BASE_SECONDS", "0.2")
    monkeypatch.setenv("STRIPE_WEBHOOK_SECRET", "whsec_a, whsec_b,")
    s = settings.load()
    assert (s.port, s.retry.base_seconds, s.webhook_secrets) == (9001, 0.2, ["whsec_a", "whsec_b"])


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        ("PORT", "eighty", "invalid setting PORT:"),
        ("PORT", "70000", "invalid setting PORT:"),
        ("LOG_FORMAT", "xml", "invalid setting LOG_FORMAT:"),
        ("AIPT_RETRY_ATTEMPTS", "0", "invalid setting AIPT_RETRY_ATTEMPTS:"),
        ("AIPT_CLEANUP_STRIPE_EVENTS_DAYS", "3", "invalid setting AIPT_CLEANUP_STRIPE_EVENTS_DAYS:"),  # the 7-day floor
        ("AIPT_CLEANUP_RATE_LIMIT_AT", "25:00", "must be a time of day as HH:MM"),
        ("AIPT_SWEEPER_EVERY_SECONDS", "7", "must divide 60"),
        ("AIPT_STRIPE_ACCEPTED_MODES", "sandbox", "invalid setting AIPT_STRIPE_ACCEPTED_MODES:"),
    ],
)
def test_a_malformed_value_is_one_line_naming_the_variable(monkeypatch, name, value, line):
    monkeypatch.setenv(name, value)
    with pytest.raises(settings.ConfigError) as refused:
        settings.load()
    assert line in str(refused.value) and "\n" not in str(refused.value)


def test_a_missing_required_setting_names_its_variable():
    s = settings.load()
    with pytest.raises(settings.ConfigError, match="^DATABASE_URL is not set \\(required\\)$"):
        s.require("database_url", "redis_url")


def test_the_cleanup_schedule_reads_times_of_day_and_off(monkeypatch):
    monkeypatch.setenv("AIPT_CLEANUP_STRIPE_EVENTS_AT", "02:05")
    monkeypatch.setenv("AIPT_CLEANUP_RATE_LIMIT_AT", "OFF")
    c = settings.load().cleanup
    assert (c.at("stripe_events"), c.at("rate_limit")) == ((2, 5), None)


@pytest.mark.parametrize(
    ("modes", "live", "test"), [("live", None, "refused"), ("test", "refused", None), ("both", None, None)]
)
def test_accepted_modes_say_why_an_event_is_not_applied(modes, live, test):
    stripe = settings.Stripe(accepted_modes=modes)
    assert [None if stripe.refuses(m) is None else "refused" for m in (True, False)] == [live, test]
    if live:
        assert "live-mode event not applied" in stripe.refuses(True)
