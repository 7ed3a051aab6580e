"""The ORM: typed SQLAlchemy 2 models with named constraints.

Judgments are append-only: a revision inserts a new row and marks the old one
``superseded``; an undo marks it ``retracted``. Nothing is ever deleted.
"""

from __future__ import annotations

import enum
from datetime import date, datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
    text,
)
from sqlalchemy.types import TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


def _enum(cls: type[enum.Enum], name: str) -> Enum:
    # Stored as the value string with a named CHECK constraint (portable, and
    # adding a member is a plain migration on both backends).
    return Enum(cls, name=name, native_enum=False, create_constraint=True, length=16,
                values_callable=lambda e: [m.value for m in e], validate_strings=True)


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is not None and dialect.name == "sqlite":
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        elif value is not None and value.tzinfo is None and dialect.name != "sqlite":
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


TS = UTCDateTime()


class Role(str, enum.Enum):
    admin = "admin"
    annotator = "annotator"


class Choice(str, enum.Enum):
    """A judgment in canonical terms (A and B as stored, not as shown)."""

    a = "a"
    b = "b"
    tie = "tie"
    both_bad = "both_bad"


class ComparisonStatus(str, enum.Enum):
    open = "open"
    complete = "complete"
    retired = "retired"


class JudgmentState(str, enum.Enum):
    active = "active"
    superseded = "superseded"
    retracted = "retracted"


class JudgmentSource(str, enum.Enum):
    annotator = "annotator"
    imported = "imported"


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        # "carol" and "Carol" would be two accounts no one can tell apart (in the audit log, the
        # annotator table): the database refuses the second, even when two are created at once.
        Index("uq_users_username_lower", func.lower(text("username")), unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[Role] = mapped_column(_enum(Role, "role"))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=text("true"))
    failed_logins: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    locked_until: Mapped[datetime | None] = mapped_column(TS)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class ImportBatch(Base):
    __tablename__ = "import_batches"

    id: Mapped[int] = mapped_column(primary_key=True)
    filename: Mapped[str] = mapped_column(String(512))
    file_hash: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(32))
    source_tag: Mapped[str | None] = mapped_column(String(128))
    counts: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class Prompt(Base):
    """A prompt: plain ``text`` or a list of chat ``messages`` (exactly one is set)."""

    __tablename__ = "prompts"
    __table_args__ = (
        CheckConstraint("(text IS NULL) <> (messages IS NULL)", name="text_xor_messages"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    content_hash: Mapped[str] = mapped_column(String(64), unique=True)
    text: Mapped[str | None] = mapped_column(Text)
    messages: Mapped[list[Any] | None] = mapped_column(JSON(none_as_null=True))
    source_tag: Mapped[str | None] = mapped_column(String(128), index=True)
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON(none_as_null=True))
    external_id: Mapped[str | None] = mapped_column(String(256))
    import_batch_id: Mapped[int | None] = mapped_column(ForeignKey("import_batches.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)

    responses: Mapped[list[Response]] = relationship(back_populates="prompt")

    @property
    def is_chat(self) -> bool:
        return self.messages is not None


def _n_chars(context) -> int:
    # A context-sensitive default: every insert path (ORM, Core executemany) stores
    # the length without the caller passing it, so reports never read the texts.
    return len(context.get_current_parameters().get("text") or "")


class Response(Base):
    __tablename__ = "responses"
    __table_args__ = (UniqueConstraint("prompt_id", "content_hash"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    content_hash: Mapped[str] = mapped_column(String(64))
    text: Mapped[str] = mapped_column(Text)
    n_chars: Mapped[int | None] = mapped_column(Integer, default=_n_chars)
    """``len(text)`` in characters, stored at insert (responses are never edited)."""
    generator: Mapped[str | None] = mapped_column(String(256))
    meta: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON(none_as_null=True))
    external_id: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)

    prompt: Mapped[Prompt] = relationship(back_populates="responses")


class Comparison(Base):
    """Two responses to one prompt in canonical order (A, B)."""

    __tablename__ = "comparisons"
    __table_args__ = (
        UniqueConstraint("response_a_id", "response_b_id"),
        CheckConstraint("response_a_id <> response_b_id", name="distinct_responses"),
        CheckConstraint("overlap_target >= 1", name="overlap_positive"),
        CheckConstraint("judgment_count >= 0", name="count_nonnegative"),
        CheckConstraint("(NOT is_gold) OR gold_choice IS NOT NULL", name="gold_has_answer"),
        # The queue lookup: open comparisons by priority. Partial, so finished
        # work does not bloat it.
        Index("ix_comparisons_queue", "is_gold", "priority", "id",
              postgresql_where=text("status = 'open'"), sqlite_where=text("status = 'open'")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    response_a_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    response_b_id: Mapped[int] = mapped_column(ForeignKey("responses.id", ondelete="CASCADE"), index=True)
    status: Mapped[ComparisonStatus] = mapped_column(
        _enum(ComparisonStatus, "comparison_status"), default=ComparisonStatus.open)
    overlap_target: Mapped[int] = mapped_column(Integer, default=1)
    judgment_count: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    gold_choice: Mapped[Choice | None] = mapped_column(_enum(Choice, "gold_choice"))
    priority: Mapped[float] = mapped_column(Float, default=0.0)
    """Higher is served first. Seeded random until a reward model scores the pool."""
    priority_score: Mapped[float | None] = mapped_column(Float)
    """The acquisition score behind ``priority`` (provenance)."""
    priority_model_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL"))
    priority_strategy: Mapped[str | None] = mapped_column(String(64))
    """The strategy behind ``priority``: ``random`` from import until a retrain past the cold start."""
    model_p_a: Mapped[float | None] = mapped_column(Float)
    """The scoring model's P(A better than B) (ensemble mean)."""
    source_tag: Mapped[str | None] = mapped_column(String(128), index=True)
    external_id: Mapped[str | None] = mapped_column(String(256))
    """The ``id`` of the imported row the pair came from (the first import that added it)."""
    import_batch_id: Mapped[int | None] = mapped_column(ForeignKey("import_batches.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)

    prompt: Mapped[Prompt] = relationship()
    response_a: Mapped[Response] = relationship(foreign_keys=[response_a_id])
    response_b: Mapped[Response] = relationship(foreign_keys=[response_b_id])


def retired_comparison_ids():
    """The ids of the comparisons an admin retired, as a subquery: the queue never serves them (nor
    probes them) and their judgments train nothing (``Judgment.comparison_id.not_in(...)``)."""
    return select(Comparison.id).where(Comparison.status == ComparisonStatus.retired)


class Judgment(Base):
    """One person's (or one imported) judgment of a comparison. Append-only."""

    __tablename__ = "judgments"
    __table_args__ = (
        CheckConstraint("strength IS NULL OR (strength >= 1 AND strength <= 3)", name="strength_range"),
        # One live judgment per annotator and comparison (probes aside): the
        # database, not only the queue, guarantees "never twice on one pair".
        Index("uq_judgments_live", "comparison_id", "annotator_id", unique=True,
              postgresql_where=text("state = 'active' AND NOT is_probe"),
              sqlite_where=text("state = 'active' AND NOT is_probe")),
        Index("ix_judgments_annotator_created", "annotator_id", "created_at"),
        Index("ix_judgments_comparison_state", "comparison_id", "state"),
    )
    # Each row is written, and its annotate.rollups event applied, before the next one: the
    # running counts of one row depend on which other rows are already counted.
    __mapper_args__ = {"batch": False}

    id: Mapped[int] = mapped_column(primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"))
    annotator_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    source: Mapped[JudgmentSource] = mapped_column(
        _enum(JudgmentSource, "judgment_source"), default=JudgmentSource.annotator)
    choice: Mapped[Choice] = mapped_column(_enum(Choice, "choice"))
    strength: Mapped[int | None] = mapped_column(Integer)
    """1 slightly, 2 clearly, 3 much better; NULL when not given (and for ties)."""
    rationale: Mapped[str | None] = mapped_column(Text)
    flags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    a_on_left: Mapped[bool | None] = mapped_column(Boolean)
    time_spent_ms: Mapped[int | None] = mapped_column(Integer)
    is_probe: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    """A swapped repeat shown to measure self-consistency; not counted toward overlap."""
    was_gold: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    acquisition_strategy: Mapped[str | None] = mapped_column(String(64))
    acquisition_score: Mapped[float | None] = mapped_column(Float)
    state: Mapped[JudgmentState] = mapped_column(
        _enum(JudgmentState, "judgment_state"), default=JudgmentState.active)
    supersedes_id: Mapped[int | None] = mapped_column(ForeignKey("judgments.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow, index=True)
    retracted_at: Mapped[datetime | None] = mapped_column(TS)
    external_annotator: Mapped[str | None] = mapped_column(String(256))
    """An imported judgment's rater, as the file named them (its row's ``annotator``); NULL otherwise."""

    comparison: Mapped[Comparison] = relationship()
    annotator: Mapped[User | None] = relationship()


class Lease(Base):
    """A comparison reserved for one annotator until judged or expired."""

    __tablename__ = "leases"
    __table_args__ = (
        UniqueConstraint("comparison_id", "annotator_id"),
        Index("ix_leases_annotator_expires", "annotator_id", "expires_at"),
        Index("ix_leases_comparison_expires", "comparison_id", "expires_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"))
    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    expires_at: Mapped[datetime] = mapped_column(TS)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    is_probe: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    is_gold: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    skipped: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    """The annotator skipped the pair: the lease is released (expired) but kept
    so the pair is not served to them again."""
    model_version_id: Mapped[int | None] = mapped_column(ForeignKey("model_versions.id", ondelete="SET NULL"))
    acquisition_strategy: Mapped[str | None] = mapped_column(String(64))
    acquisition_score: Mapped[float | None] = mapped_column(Float)


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        # Exactly one active version, enforced by the database.
        Index("uq_model_versions_active", "is_active", unique=True,
              postgresql_where=text("is_active"), sqlite_where=text("is_active")),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    artifact_path: Mapped[str] = mapped_column(String(1024))
    encoder_id: Mapped[str] = mapped_column(String(128))
    is_active: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    promoted: Mapped[bool] = mapped_column(Boolean, default=False, server_default=text("false"))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    n_train: Mapped[int] = mapped_column(Integer, default=0)
    n_test: Mapped[int] = mapped_column(Integer, default=0)
    training_run_id: Mapped[int | None] = mapped_column(ForeignKey("training_runs.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    promoted_at: Mapped[datetime | None] = mapped_column(TS)


class TrainingRun(Base):
    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default="running", index=True)
    """running, succeeded, rejected (trained but not promoted), failed."""
    step: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    host: Mapped[str | None] = mapped_column(String(256))
    pid: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    heartbeat_at: Mapped[datetime | None] = mapped_column(TS)
    finished_at: Mapped[datetime | None] = mapped_column(TS)


class JobLock(Base):
    """A named lock with a heartbeat (used on SQLite; PostgreSQL uses advisory locks)."""

    __tablename__ = "job_locks"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(256))
    acquired_at: Mapped[datetime] = mapped_column(TS, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class AppSetting(Base):
    """Campaign options admins change at run time (JSON value per key)."""

    __tablename__ = "app_settings"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[Any] = mapped_column(JSON)
    updated_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    updated_at: Mapped[datetime] = mapped_column(TS, default=utcnow)


class AuditEvent(Base):
    """Who did what as an admin (imports, exports, settings, users)."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    actor_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)
    action: Mapped[str] = mapped_column(String(64), index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(TS, default=utcnow, index=True)


# --------------------------------------------------------------------------- running counts for the admin console
# Kept in step with every judgment write by annotate.rollups (same transaction, atomic increments);
# rebuilt from scratch by annotate.rollups.rebuild. "Live" judgments: active, by an annotator.


class ComparisonVotes(Base):
    """Live, non-probe annotator votes per comparison."""

    __tablename__ = "comparison_votes"

    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id", ondelete="CASCADE"), primary_key=True)
    n_a: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_b: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_tie: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_both_bad: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class AnnotatorVotes(Base):
    """Live non-probe judgments per annotator, UTC day, own choice and the other annotators' votes
    on the same comparison (all time): what agreement, majority, κ and α are computed from."""

    __tablename__ = "annotator_votes"

    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    choice: Mapped[str] = mapped_column(String(16), primary_key=True)
    o_a: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    o_b: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    o_tie: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    o_both_bad: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class AnnotatorDay(Base):
    """Per annotator and UTC day: counts and sums of the live judgments made that day."""

    __tablename__ = "annotator_days"

    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_sided: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_left: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_ties: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_both_bad: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_gold: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_gold_correct: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_length_decisive: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_longer: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_timed: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    sx: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    sy: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    sxx: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    syy: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    sxy: Mapped[float] = mapped_column(Float, default=0.0, server_default=text("0"))
    n_probes: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    n_flips: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class AnnotatorHistogram(Base):
    """Per annotator and UTC day: log-scale histograms (``kind`` ``time``: ms per judgment;
    ``speed``: ms per 1,000 characters) that the medians are read off."""

    __tablename__ = "annotator_histograms"

    annotator_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)
    bucket: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
