"""All configuration, read once from the environment into one pydantic model.

A bad value fails at start-up with the variable's name, what was expected and
what was found (secrets are never echoed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import SettingsError

# field name -> environment variable
ENV = {
    "dub_api_key": "DUB_API_KEY",
    "dub_api_url": "DUB_API_URL",
    "segment_shared_secret": "SEGMENT_SHARED_SECRET",
    "mappings_dir": "BRIDGE_MAPPINGS_DIR",
    "max_body_bytes": "BRIDGE_MAX_BODY_BYTES",
    "max_connections": "BRIDGE_MAX_CONNECTIONS",
    "max_buffered_bytes": "BRIDGE_MAX_BUFFERED_BYTES",
    "deadline_seconds": "BRIDGE_DEADLINE_SECONDS",
    "connect_timeout": "DUB_CONNECT_TIMEOUT",
    "read_timeout": "DUB_READ_TIMEOUT",
    "retry_after_seconds": "BRIDGE_RETRY_AFTER_SECONDS",
    "concurrency": "BRIDGE_CONCURRENCY",
    "rate_limit_per_minute": "DUB_RATE_LIMIT_PER_MINUTE",
    "rate_limit_per_second": "DUB_RATE_LIMIT_PER_SECOND",
    "workers": "WEB_CONCURRENCY",
    "db_path": "BRIDGE_DB",
    "ledger": "BRIDGE_LEDGER",
    "retention_days": "BRIDGE_RETENTION_DAYS",
    "lease_seconds": "BRIDGE_LEASE_SECONDS",
    "reload_seconds": "BRIDGE_RELOAD_SECONDS",
    "max_attempts": "BRIDGE_MAX_ATTEMPTS",
    "log_level": "BRIDGE_LOG_LEVEL",
    "cli_budget_seconds": "BRIDGE_CLI_BUDGET_SECONDS",
    "database_url": "DATABASE_URL",
    "threads": "GUNICORN_THREADS",
    "db_pool_size": "BRIDGE_DB_POOL_SIZE",
    "db_timeout": "BRIDGE_DB_TIMEOUT",
    "outbox_after_hours": "BRIDGE_OUTBOX_AFTER_HOURS",
    "outbox_max_age_hours": "BRIDGE_OUTBOX_MAX_AGE_HOURS",
    "dead_letter_retention_days": "BRIDGE_DEAD_LETTER_RETENTION_DAYS",
    "mappings_source": "BRIDGE_MAPPINGS_SOURCE",
    "metrics_token": "BRIDGE_METRICS_TOKEN",
    "metrics_public": "BRIDGE_METRICS_PUBLIC",
    "max_event_age_days": "BRIDGE_MAX_EVENT_AGE_DAYS",
    "unverified_events": "BRIDGE_UNVERIFIED_EVENTS",
    "allow_unsigned": "BRIDGE_ALLOW_UNSIGNED",
    "write_keys": "BRIDGE_WRITE_KEYS",
    "rudderstack_token": "BRIDGE_RUDDERSTACK_TOKEN",
    "accept_dub_source": "BRIDGE_ACCEPT_DUB_SOURCE",
    "console_token": "BRIDGE_CONSOLE_TOKEN",
    "queue_when_limited": "BRIDGE_QUEUE_WHEN_LIMITED",
}
CONSOLE_TOKEN_MIN = 16
SECRETS = {
    "dub_api_key",
    "segment_shared_secret",
    "database_url",
    "metrics_token",
    "write_keys",
    "rudderstack_token",
    "console_token",
}
# A write key given without a name is recorded under this one.
UNNAMED_WRITE_KEY = "sdk"
_SOURCE_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


class Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dub_api_key: SecretStr | None = None
    dub_api_url: str = "https://api.dub.co"
    segment_shared_secret: SecretStr | None = None
    mappings_dir: Path = Path("mappings")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Per gunicorn worker: open connections, and bytes of requests read but not yet answered.
    # Past either, the oldest unfinished request (or the one holding the most bytes) is
    # answered 503 with Retry-After and closed, so idle sockets and half-sent bodies cost
    # neither time nor memory to the requests that arrive whole.
    max_connections: int = Field(1000, ge=16, le=100_000)
    max_buffered_bytes: int = Field(32 * 1024 * 1024, ge=1024)
    # Segment waits 5 s for an answer; 4 s leaves room for the network.
    deadline_seconds: float = Field(4.0, gt=0, le=30)
    # connect + read stay under the deadline, so a single call can be sent inline.
    connect_timeout: float = Field(1.0, gt=0)
    read_timeout: float = Field(2.5, gt=0)
    retry_after_seconds: int = Field(30, ge=1, le=3600)
    concurrency: int = Field(8, ge=1, le=64)
    rate_limit_per_minute: int = Field(1200, ge=1)
    # Dub's plans state a minute only; when one states a per-second allowance too, no
    # second of the clock carries more calls than this (unset: the minute alone).
    rate_limit_per_second: int | None = Field(None, ge=1)
    workers: int = Field(2, ge=1, le=64)
    db_path: Path = Path("bridge-ledger.sqlite3")
    # on: the SQLite file. off (benchmarks only): redeliveries are sent again. memory: one
    # process's memory, for tests and benchmarks (each worker would have its own).
    ledger: Literal["on", "off", "memory"] = "on"
    retention_days: float = Field(7.0, gt=0)
    lease_seconds: float = Field(30.0, gt=0)
    reload_seconds: float = Field(2.0, ge=0)
    max_attempts: int = Field(20, ge=1)
    log_level: str = "INFO"
    # The time budget of each chunk that `replay --send` and `redrive` send: no Segment
    # timeout there, but still a bound.
    cli_budget_seconds: float = Field(60.0, gt=0, le=3600)
    # postgresql://user:password@host:port/db: one ledger for every instance.
    database_url: SecretStr | None = None
    threads: int = Field(4, ge=1, le=256)  # gunicorn's threads per worker (the Procfile)
    # Connections per process; default: one per request thread, one for the delivery pool's
    # bookkeeping, one for the background jobs.
    db_pool_size: int | None = Field(None, ge=1, le=100)
    db_timeout: float = Field(2.0, gt=0, le=30)
    # Segment retries for about four hours; after that the bridge's own outbox retries
    # what is still unsettled, until it is this old, and then it becomes a dead letter.
    outbox_after_hours: float = Field(4.0, gt=0)
    outbox_max_age_hours: float = Field(24.0, gt=0)
    # An event Dub's rate limit cannot serve within the request's budget is kept in the
    # ledger's queue and answered 200 `queued` (the outbox sends it at Dub's rate); off:
    # answered 503, and Segment's retries bring it back.
    queue_when_limited: bool = True
    dead_letter_retention_days: float = Field(30.0, gt=0)
    # files: each instance follows its mapping files; database: every instance follows the
    # set published with `bridge mappings publish`.
    mappings_source: Literal["files", "database"] = "files"
    metrics_token: SecretStr | None = None  # when set, /metrics wants `Bearer <token>`
    # Without a token /metrics is closed (403) unless this opens it to anyone who can reach
    # it: the figures name mappings and volumes, so serving them openly is a decision.
    metrics_public: bool = False
    # Older events are refused: past the ledger's memory a redelivery would be sent again.
    max_event_age_days: float = Field(6.0, gt=0)
    # Events a batch's signature does not vouch for: kept as dead letters, or the whole
    # request refused with 401.
    unverified_events: Literal["dead_letter", "refuse"] = "dead_letter"
    # Accepting unsigned requests lets anyone who can reach the service post sales: a
    # choice to make on purpose (a private network, local trials), never a default.
    allow_unsigned: bool = False
    # Segment's HTTP API for server SDKs (/v1/*): `name:key` or `key`, comma-separated.
    # Unset: the /v1 endpoints answer 404.
    write_keys: SecretStr | None = None
    # RudderStack's webhook destination (POST /rudderstack); unset: 404.
    rudderstack_token: SecretStr | None = None
    # Dub's own Segment source sends Dub's conversions back as track events: planning them
    # would track every sale twice, so they are skipped unless this says otherwise.
    accept_dub_source: bool = False
    # The ops console (/console) is served only when this is set: who knows it can redrive
    # dead letters and publish mappings.
    console_token: SecretStr | None = None

    @model_validator(mode="after")
    def _lease_outlives_a_call(self) -> Settings:
        # A claim must hold until its call can no longer be running, or a second worker
        # could take it over and send the same conversion again.
        longest = self.deadline_seconds + self.connect_timeout + self.read_timeout
        if self.lease_seconds <= longest:
            raise ValueError(
                f"lease_seconds: more than BRIDGE_DEADLINE_SECONDS + DUB_CONNECT_TIMEOUT"
                f" + DUB_READ_TIMEOUT ({longest:g} s)"
            )
        return self

    @model_validator(mode="after")
    def _published_mappings_need_a_database(self) -> Settings:
        if self.mappings_source == "database" and self.ledger != "on":
            raise ValueError(
                "mappings_source: 'files' unless the ledger is a database (BRIDGE_LEDGER=on)"
            )
        return self

    @model_validator(mode="after")
    def _a_whole_body_fits(self) -> Settings:
        if self.max_buffered_bytes < 2 * self.max_body_bytes:
            raise ValueError(
                "max_buffered_bytes: at least twice BRIDGE_MAX_BODY_BYTES "
                f"({2 * self.max_body_bytes}), or a body of the largest size is never read whole"
            )
        return self

    @model_validator(mode="after")
    def _age_within_memory(self) -> Settings:
        if self.max_event_age_days >= self.retention_days:
            raise ValueError(
                "max_event_age_days: less than BRIDGE_RETENTION_DAYS "
                f"({self.retention_days:g}), or a replayed event would be sent again"
            )
        return self

    @model_validator(mode="after")
    def _outbox_window(self) -> Settings:
        if self.outbox_max_age_hours <= self.outbox_after_hours:
            raise ValueError(
                "outbox_max_age_hours: more than BRIDGE_OUTBOX_AFTER_HOURS "
                f"({self.outbox_after_hours:g} h)"
            )
        return self

    @model_validator(mode="after")
    def _metrics_access_is_one_choice(self) -> Settings:
        if self.metrics_public and self.metrics_token is not None:
            raise ValueError(
                "metrics_public: unset when BRIDGE_METRICS_TOKEN is set (one or the other:"
                " scrapes with the token, or /metrics open to anyone)"
            )
        return self

    @field_validator("write_keys", mode="after")
    @classmethod
    def _write_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            parse_write_keys(value.get_secret_value())
        return value

    @property
    def write_key_names(self) -> dict[str, str]:
        """Each write key -> the name its events are recorded under (empty: /v1 is off)."""
        if self.write_keys is None:
            return {}
        return parse_write_keys(self.write_keys.get_secret_value())

    @field_validator("database_url", mode="after")
    @classmethod
    def _database(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(
            ("postgresql://", "postgres://")
        ):
            raise ValueError("a postgresql:// URL")
        return value

    @field_validator("console_token", mode="after")
    @classmethod
    def _console_token(cls, value: SecretStr | None) -> SecretStr | None:
        # A password guessed online is slowed, not stopped: it must be long enough.
        if value is not None and len(value.get_secret_value()) < CONSOLE_TOKEN_MIN:
            raise ValueError(f"a token of {CONSOLE_TOKEN_MIN} characters at least")
        return value

    @property
    def unsigned(self) -> bool:
        """Requests are accepted without a signature (chosen with BRIDGE_ALLOW_UNSIGNED=1)."""
        return self.segment_shared_secret is None

    @property
    def keyed_ways_in(self) -> bool:
        """A way in with keys of its own is configured (the SDK API, RudderStack)."""
        return self.write_keys is not None or self.rudderstack_token is not None

    @property
    def webhook_off(self) -> bool:
        """POST /segment is off: only keyed ways in are configured, without a shared secret
        (and unsigned requests were not chosen)."""
        return self.unsigned and not self.allow_unsigned and self.keyed_ways_in

    @property
    def ledger_chosen(self) -> bool:
        """Where the ledger lives was said, not defaulted: DATABASE_URL, BRIDGE_DB, or a
        BRIDGE_LEDGER other than the SQLite file."""
        return (
            self.database_url is not None
            or "db_path" in self.model_fields_set
            or self.ledger != "on"
        )

    @property
    def pool_size(self) -> int:
        return self.db_pool_size or self.threads + 2

    @property
    def postgres_url(self) -> str | None:
        return self.database_url.get_secret_value() if self.database_url else None

    @field_validator("dub_api_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("an http:// or https:// URL")
        return value.rstrip("/")

    @field_validator("ledger", mode="before")
    @classmethod
    def _ledger(cls, value: Any) -> Any:
        words = {"true": "on", "1": "on", "yes": "on", "false": "off", "0": "off", "no": "off"}
        return words.get(value.lower(), value.lower()) if isinstance(value, str) else value

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError("one of DEBUG, INFO, WARNING, ERROR")
        return level

    @field_validator(
        "dub_api_key",
        "segment_shared_secret",
        "database_url",
        "metrics_token",
        "write_keys",
        "rudderstack_token",
        "console_token",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, /, **overrides: Any) -> Settings:
        """Read every variable in ``ENV``; ``overrides`` (field names) win over the environment."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {f: environ[v] for f, v in ENV.items() if v in environ}
        values.update(overrides)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise SettingsError(_explain(exc, values)) from None

    @property
    def api_key(self) -> str | None:
        return self.dub_api_key.get_secret_value() if self.dub_api_key else None


def parse_write_keys(text: str) -> dict[str, str]:
    """``name:key,key,...`` -> {key: name}; ``ValueError`` (never quoting a key) when an
    entry is empty, a name is not a plain word, or a key is given twice."""
    keys: dict[str, str] = {}
    for number, entry in enumerate(text.split(","), 1):
        name, colon, key = entry.partition(":")
        name, key = (name.strip(), key.strip()) if colon else (UNNAMED_WRITE_KEY, name.strip())
        if not key:
            raise ValueError(f"entry {number} has no key: `name:key` or `key`, comma-separated")
        if not _SOURCE_NAME.fullmatch(name):
            raise ValueError(
                f"entry {number}: a name of letters, digits, '.', '_' or '-' (at most 64)"
            )
        if key in keys:
            raise ValueError(f"entry {number}: the same key is given twice")
        keys[key] = name
    return keys


def _explain(exc: ValidationError, values: Mapping[str, Any]) -> str:
    lines = []
    for error in exc.errors(include_url=False):
        expected = error["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
        if error["loc"]:
            field = str(error["loc"][0])
        else:  # a check across fields names its field first
            field, _, expected = expected.partition(": ")
        name = ENV.get(field, field)
        found = "(hidden)" if field in SECRETS else repr(values.get(field))
        lines.append(f"{name}: expected {expected}, found {found}")
    return "bad setting: " + "; ".join(lines)
