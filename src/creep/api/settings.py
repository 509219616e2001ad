"""Server settings from CREEP_* environment variables and command-line flags, validated at
start: every problem is one clear line, and nothing starts while any is left."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from creep.storage import DEFAULT_DATABASE_URL

#: The lowest request rate a limit may be, other than 0 (no limit): one request per ~12 days.
#: Below it, the wait for the next token overflows (1 / rate: a 500 instead of a 429) or
#: PostgreSQL's refill underflows.
MIN_RATE_PER_SECOND = 1e-6
#: The log levels every creep command accepts (--log-level, CREEP_LOG_LEVEL).
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
T = TypeVar("T")


class SettingsError(Exception):
    """Invalid settings; `problems` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8000
    #: Ensured to exist as an admin key at start (bootstrap); never logged.
    admin_key: str | None = None
    log_level: str = "INFO"
    #: JSON log lines (default) or plain text.
    log_json: bool = True
    #: Apply pending migrations at start (the embedded default); else check that the schema
    #: is the version this creep was written for, and refuse to start if not.
    auto_migrate: bool = True
    #: Per-tenant token bucket (requests/s; 0 turns it off) and its size.
    rate_limit_per_second: float = 0.0
    rate_limit_burst: int = 100
    #: Per-tenant cap on unfinished (PENDING + QUEUED + RUNNING) tasks (0: no cap).
    max_active_tasks: int = 0
    #: How long a verified key is trusted without asking the database again.
    key_cache_seconds: float = 5.0
    #: Readiness gives up on the database after this long.
    ready_timeout_seconds: float = 2.0
    #: How often a Server-Sent Events stream looks for new events.
    sse_poll_seconds: float = 0.5
    #: uvicorn worker processes.
    workers: int = 1
    #: Directory for artifact content (used by the artifacts routes).
    artifact_dir: str = "./creep-artifacts"
    #: Largest artifact upload in bytes (larger: 413).
    artifact_max_bytes: int = 100 * 1024 * 1024
    #: Largest request body in bytes (artifact uploads have their own limit); larger: 413,
    #: before the body is read.
    max_request_bytes: int = 32 * 1024 * 1024
    #: How often a long-polling worker claim looks for work (in-process submits wake it).
    claim_poll_seconds: float = 0.25
    #: Leader-only maintenance on the server (rescue expired claims, time outs); 0: off.
    maintenance_interval_seconds: float = 1.0
    #: /metrics reads the database at most this often; scrapes in between get the last
    #: numbers (so many scrapers cannot hammer the database). 0: every scrape reads.
    metrics_cache_seconds: float = 2.0
    #: /metrics answers only an admin key (a read-only one will do): its numbers are every
    #: tenant's (queue depths, ledger sums by currency). Off: no key, as Prometheus scrapes.
    metrics_require_key: bool = False
    #: Distinct task_type label values /metrics shows (task types are tenants' own strings,
    #: each up to ~100 series): types first seen past this many count as task_type="_other".
    metrics_max_task_types: int = 200
    #: Distinct currency label values of /metrics' ledger gauges (any 3-4 capital letters
    #: are a currency): the ones with the most entries; the rest count as currency="_other".
    metrics_max_currencies: int = 50

    @property
    def dialect(self) -> str:
        return "sqlite" if self.database_url.startswith("sqlite:") else "postgres"


# setting name -> (parser, check returning a problem or None)
Check = Callable[[Any], str | None]


def _int(raw: str) -> int:
    return int(raw)


def _float(raw: str) -> float:
    return float(raw)


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


def _range(lo: float, hi: float) -> Check:
    def check(value: Any) -> str | None:
        return None if lo <= value <= hi else f"must be from {lo:g} to {hi:g} (got {value})"

    return check


def _rate(value: float) -> str | None:
    if value == 0 or MIN_RATE_PER_SECOND <= value <= 1_000_000:
        return None
    return f"must be 0 (no limit) or from {MIN_RATE_PER_SECOND:g} to 1000000 (got {value})"


def _database_url(value: str) -> str | None:
    if value.startswith("sqlite:"):
        parts = urlsplit(value)
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc or not path or path == ":memory:":
            return f"must be sqlite:///relative/path or sqlite:////absolute/path (got {value!r})"
        parent = Path(path).parent
        if not parent.is_dir():
            return f"the directory {str(parent)!r} of the SQLite file does not exist"
        return None
    if value.startswith(("postgresql:", "postgres:", "postgresql+psycopg:")):
        parts = urlsplit(value)
        if not parts.hostname and "host=" not in parts.query:
            return f"a PostgreSQL URL needs a host: postgresql://USER@HOST:PORT/DB (got {_redact(value)!r})"
        try:
            _ = parts.port
        except ValueError:
            return f"has an invalid port (got {_redact(value)!r})"
        return None
    return f"unsupported scheme: use sqlite:///PATH or postgresql://HOST/DB (got {_redact(value)!r})"


def _redact(url: str) -> str:
    parts = urlsplit(url)
    return url.replace(f":{parts.password}@", ":***@") if parts.password else url


def _log_level(value: str) -> str | None:
    return None if value.upper() in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"


def _admin_key(value: str | None) -> str | None:
    if value is not None and (len(value) < 24 or value.strip() != value):
        return "must be at least 24 characters without surrounding spaces"
    return None


def _host(value: str) -> str | None:
    return None if value and " " not in value else "must be a host name or IP address"


def _artifact_dir(value: str) -> str | None:
    path = Path(value)
    if path.exists() and not path.is_dir():
        return f"{value!r} exists and is not a directory"
    if not path.exists() and not path.parent.is_dir():
        return f"neither {value!r} nor its parent directory exists"
    return None


_SPEC: dict[str, tuple[Callable[[str], Any], Check | None]] = {
    "database_url": (str, _database_url),
    "host": (str, _host),
    "port": (_int, _range(1, 65535)),
    "admin_key": (str, _admin_key),
    "log_level": (str, _log_level),
    "log_json": (_bool, None),
    "auto_migrate": (_bool, None),
    "rate_limit_per_second": (_float, _rate),
    "rate_limit_burst": (_int, _range(1, 1_000_000)),
    "max_active_tasks": (_int, _range(0, 1_000_000_000)),
    "key_cache_seconds": (_float, _range(0, 3600)),
    "ready_timeout_seconds": (_float, _range(0.1, 60)),
    "sse_poll_seconds": (_float, _range(0.01, 60)),
    "workers": (_int, _range(1, 256)),
    "artifact_dir": (str, lambda v: _artifact_dir(v)),
    "artifact_max_bytes": (_int, _range(1, 1 << 40)),
    "max_request_bytes": (_int, _range(1024, 1 << 40)),
    "claim_poll_seconds": (_float, _range(0.01, 60)),
    "maintenance_interval_seconds": (_float, _range(0, 3600)),
    "metrics_cache_seconds": (_float, _range(0, 300)),
    "metrics_require_key": (_bool, None),
    "metrics_max_task_types": (_int, _range(1, 100_000)),
    "metrics_max_currencies": (_int, _range(1, 10_000)),
}


def load_settings(
    environ: Mapping[str, str] | None = None, **overrides: Any
) -> Settings:
    """Settings from `environ` (CREEP_<NAME>) with `overrides` (flags) on top.

    Raises SettingsError listing every problem, one line each, naming the variable or flag.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    problems: list[str] = []
    for f in fields(Settings):
        parse, check = _SPEC[f.name]
        var = f"CREEP_{f.name.upper()}"
        override = overrides.get(f.name)
        source = f"--{f.name.replace('_', '-')}" if override is not None else var
        raw: Any = override if override is not None else env.get(var)
        if raw is None or raw == "":
            continue
        try:
            value = parse(raw) if isinstance(raw, str) else raw
        except ValueError:
            problems.append(f"{source}: cannot parse {raw!r} as {parse.__name__.strip('_')}")
            continue
        problem = check(value) if check else None
        if problem:
            problems.append(f"{source}: {problem}")
            continue
        values[f.name] = value
    unknown = set(overrides) - set(_SPEC)
    problems.extend(f"unknown setting {name!r}" for name in sorted(unknown))
    if problems:
        raise SettingsError(problems)
    settings = Settings(**values)
    if settings.log_level:
        settings = _replace(settings, log_level=settings.log_level.upper())
    return settings


def _replace(settings: Settings, **changes: Any) -> Settings:
    from dataclasses import replace

    return replace(settings, **changes)


def log_level_number(level: str) -> int:
    return int(logging.getLevelName(level.upper()))
