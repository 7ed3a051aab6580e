"""Campaign options admins change at run time, stored in ``app_settings``.

Operators set the defaults with ``PREFLOOP_*`` variables (:mod:`annotate.settings`);
a value saved here by an admin wins over the default.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from importlib import resources

from sqlalchemy import select
from sqlalchemy.orm import Session

from annotate.accounts import Actor, audit, require_admin
from annotate.errors import PrefloopError
from annotate.models import AppSetting, utcnow
from annotate.settings import MAX_OVERLAP, MAX_RETRAIN_MINUTES, MIN_RETRAIN_MINUTES, Settings, unknown_strategy


def default_guidelines() -> str:
    return resources.files("annotate").joinpath("demo/guidelines.md").read_text(encoding="utf-8")


@dataclass(frozen=True)
class CampaignOptions:
    overlap: int
    max_overlap: int
    gold_rate: float
    probe_rate: float
    strategy: str
    batch_size: int
    cold_start: int
    retrain_every_labels: int
    retrain_every_minutes: float
    target_judgments: int
    guidelines: str

    def validate(self) -> None:
        if self.overlap < 1 or self.max_overlap < self.overlap:
            raise PrefloopError("overlap must be at least 1 and at most the maximum overlap")
        if self.max_overlap > MAX_OVERLAP:
            raise PrefloopError(f"maximum overlap above {MAX_OVERLAP} is not supported")
        for name in ("gold_rate", "probe_rate"):
            if not 0.0 <= getattr(self, name) <= 0.5:
                raise PrefloopError(f"{name.replace('_', ' ')} must be between 0 and 0.5")
        if self.batch_size < 1 or self.cold_start < 0:
            raise PrefloopError("batch size must be positive and cold start non-negative")
        if problem := unknown_strategy(self.strategy):
            raise PrefloopError(problem)
        if self.retrain_every_labels < 1:
            raise PrefloopError("retrain every N new labels must be at least 1")
        if not MIN_RETRAIN_MINUTES <= self.retrain_every_minutes <= MAX_RETRAIN_MINUTES:  # NaN too
            raise PrefloopError(f"retrain every N minutes must be from {MIN_RETRAIN_MINUTES} to "
                                f"{MAX_RETRAIN_MINUTES:,} (a year)")
        if self.target_judgments < 0:
            raise PrefloopError("target judgments must be 0 (none) or more")
        if len(self.guidelines) > 100_000:
            raise PrefloopError("guidelines are limited to 100,000 characters")


def defaults(settings: Settings) -> CampaignOptions:
    return CampaignOptions(
        overlap=settings.overlap, max_overlap=settings.max_overlap, gold_rate=settings.gold_rate,
        probe_rate=settings.probe_rate, strategy=settings.strategy, batch_size=settings.batch_size,
        cold_start=settings.cold_start, retrain_every_labels=settings.retrain_every_labels,
        retrain_every_minutes=settings.retrain_every_minutes, target_judgments=0,
        guidelines=default_guidelines())


def get_options(session: Session, settings: Settings) -> CampaignOptions:
    """The effective campaign options (saved values over operator defaults)."""
    base = defaults(settings)
    names = {f.name for f in fields(CampaignOptions)}
    saved = {row.key: row.value for row in session.scalars(select(AppSetting)) if row.key in names}
    return replace(base, **saved) if saved else base


def update_options(session: Session, settings: Settings, *, actor: Actor | None, system: bool = False,
                   **changes) -> CampaignOptions:
    """Save changed options (admin only; ``system=True`` for the operator's own commands, such as the demo),
    validated, and audit the change."""
    if not system:
        require_admin(session, actor)
    by = actor.id if actor is not None else None
    current = get_options(session, settings)
    unknown = set(changes) - {f.name for f in fields(CampaignOptions)}
    if unknown:
        raise PrefloopError(f"unknown options: {', '.join(sorted(unknown))}")
    updated = replace(current, **changes)
    updated.validate()
    before = asdict(current)
    changed = {k: v for k, v in asdict(updated).items() if before[k] != v}
    for key, value in changed.items():
        row = session.get(AppSetting, key)
        if row is None:
            session.add(AppSetting(key=key, value=value, updated_by_id=by))
        else:
            row.value, row.updated_by_id, row.updated_at = value, by, utcnow()
    if changed:
        audit(session, actor, "settings.update",
              changes={k: (v if k != "guidelines" else f"{len(v)} characters") for k, v in changed.items()})
    return updated
