"""One typed settings object: defaults from settings.toml, overridden by the environment.

The pinned variables (DATABASE_URL, REDIS_URL, ...) are read under their own names; every other key
is AIPT_<SECTION>_<KEY>. A malformed value stops start-up with one line naming the variable.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from pydantic import AliasChoices, BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

PINNED = ("database_url", "redis_url", "stripe_webhook_secret", "port", "alert_webhook_url", "log_format")


class ConfigError(Exception):
    """A required setting is missing or malformed."""


def _settings_file() -> Path:
    if explicit := os.environ.get("AIPT_SETTINGS_FILE"):
        return Path(explicit)
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "settings.toml", here / "_data" / "settings.toml"):
        if candidate.exists():
            return candidate
    raise ConfigError("settings.toml not found (set AIPT_SETTINGS_FILE)")


class Web(BaseModel):
    host: str
    body_limit_bytes: int = Field(gt=0)
    signature_tolerance_seconds: int = Field(gt=0)
    max_header_bytes: int = Field(ge=1024)
    header_timeout_seconds: float = Field(gt=0)
    body_timeout_seconds: float = Field(gt=0)
    keepalive_timeout_seconds: float = Field(gt=0)
    max_connections: int = Field(gt=0)


class Db(BaseModel):
    pool_min_size: int = Field(ge=0)
    pool_max_size: int = Field(gt=0)
    connect_timeout_seconds: float = Field(gt=0)
    command_timeout_seconds: float = Field(gt=0)


class Queue(BaseModel):
    name: str
    max_jobs: int = Field(gt=0)
    job_timeout_seconds: float = Field(gt=0)
    poll_delay_seconds: float = Field(gt=0)
    health_check_seconds: float = Field(gt=0, le=60)
    shutdown_grace_seconds: int = Field(ge=0)


class Retry(BaseModel):
    attempts: int = Field(ge=1)
    base_seconds: float = Field(ge=0)
    factor: float = Field(ge=1)
    cap_seconds: float = Field(ge=0)


class Sweeper(BaseModel):
    every_seconds: int = Field(gt=0)
    pending_after_seconds: float = Field(ge=0)
    batch_size: int = Field(gt=0)

    @field_validator("every_seconds")
    @classmethod
    def _fits_a_clock(cls, v: int) -> int:
        if not (60 % v == 0 or (v % 60 == 0 and 3600 % v == 0)):
            raise ValueError("must divide 60, or be a whole number of minutes dividing an hour")
        return v


class Stripe(BaseModel):
    accepted_modes: str = Field(pattern="^(live|test|both)$")

    def refuses(self, livemode: bool) -> str | None:
        """Why an event of this mode is not applied, or None when it is accepted."""
        mode = "live" if livemode else "test"
        if self.accepted_modes in ("both", mode):
            return None
        return (
            f"{mode}-mode event not applied: this service accepts {self.accepted_modes}-mode events only "
            "(settings [stripe] accepted_modes)"
        )


class Ratelimit(BaseModel):
    webhook_enabled: bool
    webhook_lease: int = Field(ge=1)


CLEANUP_JOBS = ("stripe_events", "webhook_failures", "rate_limit", "deleted_content")


class Cleanup(BaseModel):
    # The floors of 46_retention_v2.sql: Stripe redelivers for 3 days, so events stay at least 7.
    stripe_events_days: int = Field(ge=7)
    webhook_failures_days: int = Field(ge=1)
    rate_limit_log_days: int = Field(ge=1)
    rate_limit_buckets_days: int = Field(ge=1)
    batch_size: int = Field(gt=0, le=100_000)
    pause_seconds: float = Field(ge=0)
    max_seconds: float = Field(gt=0)
    stripe_events_at: str
    webhook_failures_at: str
    rate_limit_at: str
    deleted_content_at: str

    @field_validator("stripe_events_at", "webhook_failures_at", "rate_limit_at", "deleted_content_at")
    @classmethod
    def _time_of_day(cls, v: str) -> str:
        v = v.strip().lower()
        if v != "off":
            hour, _, minute = v.partition(":")
            if not (hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60 and len(minute) == 2):
                raise ValueError('must be a time of day as HH:MM (e.g. "03:10"), or "off"')
        return v

    def at(self, job: str) -> tuple[int, int] | None:
        """(hour, minute) when the job runs each day, or None when it is off."""
        value = getattr(self, f"{job}_at")
        if value == "off":
            return None
        hour, minute = value.split(":")
        return int(hour), int(minute)


class Status(BaseModel):
    pending_max_age_seconds: float = Field(gt=0)


class Metrics(BaseModel):
    worker_host: str
    worker_port: int = Field(ge=0, lt=65536)
    refresh_seconds: float = Field(gt=0)


class Alerts(BaseModel):
    dead_threshold: int = Field(ge=1)
    timeout_seconds: float = Field(gt=0)


def _pinned(name: str) -> AliasChoices:
    return AliasChoices(name.upper(), name)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="AIPT_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="ignore",
        case_sensitive=False,
    )

    database_url: str = Field(validation_alias=_pinned("database_url"))
    redis_url: str = Field(validation_alias=_pinned("redis_url"))
    stripe_webhook_secret: str = Field(validation_alias=_pinned("stripe_webhook_secret"))
    port: int = Field(validation_alias=_pinned("port"), gt=0, lt=65536)
    alert_webhook_url: str = Field(validation_alias=_pinned("alert_webhook_url"))
    log_format: str = Field(validation_alias=_pinned("log_format"), pattern="^(json|console|auto)$")
    log_level: str

    web: Web
    db: Db
    queue: Queue
    retry: Retry
    sweeper: Sweeper
    alerts: Alerts
    stripe: Stripe
    ratelimit: Ratelimit
    cleanup: Cleanup
    status: Status
    metrics: Metrics

    @classmethod
    def settings_customise_sources(
        cls, settings_cls, init_settings, env_settings, dotenv_settings, file_secret_settings
    ):
        toml: PydanticBaseSettingsSource = TomlConfigSettingsSource(settings_cls, toml_file=_settings_file())
        return (init_settings, env_settings, toml)

    @property
    def webhook_secrets(self) -> list[str]:
        return [s.strip() for s in self.stripe_webhook_secret.split(",") if s.strip()]

    def require(self, *names: str) -> None:
        """Stop with one clear line when a setting this command needs is empty."""
        for name in names:
            if not str(getattr(self, name)).strip():
                raise ConfigError(f"{_env_name(name)} is not set (required)")


def _env_name(loc: tuple | str) -> str:
    parts = [str(p) for p in (loc if isinstance(loc, tuple) else (loc,))]
    if parts[0].lower() in PINNED:
        return parts[0].upper()
    return "AIPT_" + "_".join(parts).upper()


def load() -> Settings:
    """Read the settings now, turning validation errors into one ConfigError line."""
    try:
        return Settings()
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"invalid setting {_env_name(first['loc'])}: {first['msg']}") from None


@functools.lru_cache(maxsize=1)
def get() -> Settings:
    """The process-wide settings, read once."""
    return load()
