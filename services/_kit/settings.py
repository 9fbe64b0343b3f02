"""One settings object for every CloudMart process, read from the environment.

Every variable carries the ``CLOUDMART_`` prefix (``CLOUDMART_DATABASE_URL``...). A profile is
chosen with ``CLOUDMART_ENV=dev|test|prod``; values are read, lowest priority first, from
``.env``, then ``.env.<profile>``, then the process environment. Only :func:`get_settings`
touches the environment: everything else receives a ``Settings`` instance.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from engine import RetryPolicy
from services._kit import failpoints

Profile = Literal["dev", "test", "prod"]


class Settings(BaseSettings):
    """Configuration of one process; plain data, built once in the composition root."""

    model_config = SettingsConfigDict(
        env_prefix="CLOUDMART_", env_file=".env", extra="ignore", frozen=True
    )

    env: Profile = "dev"
    pattern: Literal["orchestration", "choreography"] = "orchestration"
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL, e.g. mysql+aiomysql://root@127.0.0.1:3306/cloudmart. "
        "Unset: embedded mode (SQLite file, in-process transport).",
    )
    rabbitmq_url: str | None = "amqp://guest:guest@127.0.0.1:5672/"
    redis_url: str | None = "redis://127.0.0.1:6379/0"
    namespace: str = Field(default="cloudmart", pattern=r"^[A-Za-z0-9_.-]{1,40}$")
    api_key: SecretStr | None = None
    host: str = "127.0.0.1"

    sqlite_path: str = "cloudmart.db"
    db_pool_size: int = Field(default=10, ge=1, le=40)
    db_max_overflow: int = Field(default=0, ge=0, le=40)
    db_pool_timeout: float = Field(default=10.0, gt=0)
    db_lock_retries: int = Field(default=8, ge=1, le=50)
    db_idle_transaction_timeout: int = Field(
        default=10,
        ge=0,
        description="Seconds before MariaDB ends an idle open transaction (0: never); "
        "keeps a frozen process from holding row locks. Below lease_seconds.",
    )

    request_timeout: float = Field(default=10.0, gt=0, description="Seconds per step request.")
    saga_deadline: float = Field(default=300.0, gt=0, description="Seconds a saga may run.")
    lease_seconds: float = Field(
        default=15.0, gt=0, description="How long an orchestrator owns a saga between renewals."
    )
    max_running_sagas: int = Field(
        default=64,
        ge=1,
        description="Orchestration: sagas one orchestrator drives at once; a start beyond it "
        "is committed and waits its turn (any orchestrator with room takes one that waited "
        "longer than a lease).",
    )
    max_queued_sagas: int = Field(
        default=10_000,
        ge=0,
        description="Sagas that may wait: in one orchestrator, those started beyond "
        "max_running_sagas; in the choreography, the PENDING orders. Past it a start is "
        "refused with 503 and Retry-After, nothing written.",
    )
    compensation_alert_attempts: int = Field(
        default=10,
        ge=1,
        description="Failed attempts of one compensation, or of one step past the pivot, "
        "before the saga is flagged needs_operator.",
    )
    step_retry_initial: float = Field(
        default=0.2,
        ge=0,
        description="Seconds before a step's first retry (transport errors "
        "and timeouts; business refusals are never retried).",
    )
    step_retry_backoff: float = Field(
        default=2.0, ge=1, description="Each retry waits this × longer."
    )
    step_retry_max_interval: float = Field(
        default=5.0, ge=0, description="Longest wait between retries."
    )
    step_retry_max_attempts: int = Field(
        default=5,
        ge=1,
        description="Attempts of a step before the saga compensates (steps "
        "past the pivot are retried until done).",
    )
    compensation_retry_initial: float = Field(
        default=0.5, ge=0, description="Seconds before a compensation's first retry."
    )
    compensation_retry_max_interval: float = Field(
        default=30.0,
        ge=0,
        description="Longest wait between a compensation's retries (it is "
        "retried for as long as it takes).",
    )
    workflows: str = Field(
        default="orchestration_pattern.orchestrator",
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        description="Orchestration: the module whose WORKFLOWS tuple the orchestrator "
        "registers (runs, recovers and starts by name) and `cloudmart replay` replays "
        "histories against; another module runs other code, e.g. an older version of a "
        "workflow.",
    )
    max_body_bytes: int = Field(default=1_000_000, ge=1024)
    served_countries: Annotated[tuple[str, ...], NoDecode] = ("JP",)

    event_claim_idle: float = Field(
        default=30.0,
        gt=0,
        description="Choreography: seconds an event may sit unacknowledged with a consumer "
        "before another consumer of its group claims it (XAUTOCLAIM).",
    )
    event_max_deliveries: int = Field(
        default=5,
        ge=1,
        description="Choreography: deliveries before an event is dead-lettered (a database, "
        "broker or network fault is waited out and never counts).",
    )
    command_max_deliveries: int = Field(
        default=5,
        ge=1,
        description="Orchestration: failed deliveries before a command is dead-lettered "
        "(a database, broker or network fault is waited out and never counts).",
    )
    command_batch_max: int = Field(
        default=32,
        ge=1,
        le=1000,
        description="Orchestration: commands for one service that may leave in one message "
        "(those queued while the previous publish to it awaited its confirm; nothing waits "
        "for a batch to fill); 1 sends every command alone.",
    )
    event_trim_interval: float = Field(
        default=60.0,
        gt=0,
        description="Choreography: seconds between trims of the event stream below the "
        "oldest entry a service's group still needs.",
    )
    outbox_poll_interval: float = Field(
        default=0.5, gt=0, description="Choreography: seconds between outbox relay polls."
    )
    colocated: bool = Field(
        default=False,
        description="Every service of the pattern in one process on the configured database, "
        "messaging in-process (what `cloudmart up --colocated` runs).",
    )
    failpoint: str | None = Field(
        default=None,
        description="Test profile only: a failure point to arm, e.g. 'crash_before_ack:<service>' "
        "or 'crash_after_history:<N>' (every spelling: services/_kit/failpoints.py).",
    )

    log_level: str = "INFO"
    log_json: bool | None = Field(default=None, description="JSON logs; default: only in prod.")

    @field_validator("served_countries", mode="before")
    @classmethod
    def _split_countries(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().upper() for part in value.split(",") if part.strip())
        return value

    @model_validator(mode="after")
    def _failpoints_only_in_tests(self) -> Settings:
        if self.failpoint and self.env != "test":
            raise ValueError("CLOUDMART_FAILPOINT is refused outside CLOUDMART_ENV=test")
        if self.failpoint:
            failpoints.parse(self.failpoint)  # a misspelt point fails at start, not silently
        return self

    @property
    def step_retry(self) -> RetryPolicy:
        """How the orchestrator retries a service command (a workflow may pass its own)."""
        return RetryPolicy(
            initial_interval=self.step_retry_initial,
            backoff=self.step_retry_backoff,
            max_interval=self.step_retry_max_interval,
            max_attempts=self.step_retry_max_attempts,
        )

    @property
    def compensation_retry(self) -> RetryPolicy:
        """How the orchestrator retries a compensation: until it is done."""
        return RetryPolicy(
            initial_interval=self.compensation_retry_initial,
            backoff=self.step_retry_backoff,
            max_interval=self.compensation_retry_max_interval,
            max_attempts=None,
        )

    @property
    def embedded(self) -> bool:
        """True when no database server is configured: SQLite and in-process messaging."""
        return self.database_url is None

    @property
    def in_process(self) -> bool:
        """Messaging inside this one process (embedded or co-located): commands are direct
        calls of the business operations and events an in-memory bus, no broker."""
        return self.embedded or self.colocated

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite+aiosqlite:///{self.sqlite_path}"

    @property
    def json_logs(self) -> bool:
        return self.env == "prod" if self.log_json is None else self.log_json


class _ProfileOnly(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CLOUDMART_", env_file=".env", extra="ignore")
    env: Profile = "dev"


def get_settings(**overrides: Any) -> Settings:
    """Read settings from ``.env``, ``.env.<profile>`` and the environment (highest wins)."""
    profile = _ProfileOnly().env
    return Settings(_env_file=(".env", f".env.{profile}"), **overrides)
