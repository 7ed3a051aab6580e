"""AppTest: the Reward model page names the version each one was compared with."""

from __future__ import annotations

import json

from annotate import retrain
from annotate.models import ModelVersion, TrainingRun, utcnow
from tests.ui.conftest import open_page


def _gate(new: float, active: float | None) -> str:
    return retrain.promotion_decision(new, active, 0.01, has_active=active is not None, n_held_out=500)[1]


def _add_versions(app_db, gates: list[tuple[bool, str]], *, active: int) -> None:
    """Versions 1, 2, … with ``(promoted, gate reason)``; version ``active`` is the active one."""
    with app_db.begin() as s:
        for i, (promoted, gate) in enumerate(gates, start=1):
            s.add(ModelVersion(artifact_path=f"/m{i}", encoder_id="enc", is_active=i == active, promoted=promoted,
                               promoted_at=utcnow() if promoted else None, n_train=60 + i, n_test=400,
                               metrics={"accuracy": 0.7, "gate": gate}))


def test_the_gate_reason_names_the_then_active_version(app_db, people):
    """The active version said 'held-out accuracy 0.7400 vs active 0.7345', as if compared with itself."""
    gates = [(True, _gate(0.7345, None)), (False, _gate(0.60, 0.7345)), (True, _gate(0.74, 0.7345)),
             (False, _gate(0.70, 0.74))]
    _add_versions(app_db, gates, active=3)
    at = open_page(people[1], "models.py")
    assert not at.exception, at.exception
    assert any("Held-out accuracy 0.7400 vs then-active v1 0.7345 (tolerance 0.01)" in c.value
               for c in at.caption), [c.value for c in at.caption]
    why = at.dataframe[0].value["why"].tolist()  # newest first
    assert why == ["held-out accuracy 0.7000 is worse than the then-active v3's 0.7400 by more than 0.01",
                   "held-out accuracy 0.7400 vs then-active v1 0.7345 (tolerance 0.01)",
                   "held-out accuracy 0.6000 is worse than the then-active v1's 0.7345 by more than 0.01",
                   "first model"], why


def test_few_held_out_pairs_name_the_then_active_version_too(app_db, people):
    few = retrain.promotion_decision(0.8, 0.7, 0.01, has_active=True, n_held_out=5, new_n_train=90,
                                     active_n_train=60)[1]
    with app_db.begin() as s:
        s.add(ModelVersion(artifact_path="/m1", encoder_id="enc", is_active=False, promoted=True,
                           promoted_at=utcnow(), n_train=60, n_test=5, metrics={"gate": "first model"}))
        s.add(ModelVersion(artifact_path="/m2", encoder_id="enc", is_active=True, promoted=True,
                           promoted_at=utcnow(), n_train=90, n_test=5, metrics={"gate": few}))
    at = open_page(people[1], "models.py")
    assert not at.exception, at.exception
    [why, _] = at.dataframe[0].value["why"].tolist()
    assert why.endswith("promoted the model trained on more labels (90 vs then-active v1 60)"), why


def test_the_paired_gate_reason_names_the_then_active_version(app_db, people):
    """The paired gate's reason names the active model twice: in the accuracies and in the counts."""
    def paired(new_only: int, active_only: int) -> str:
        new = [1] * new_only + [0] * active_only + [1] * (200 - new_only - active_only)
        act = [0] * new_only + [1] * active_only + [1] * (200 - new_only - active_only)
        counts = retrain.paired_comparison(new, act, list(range(200)))
        return retrain.promotion_decision(1 - active_only / 200, 1 - new_only / 200, 0.01, has_active=True,
                                          n_held_out=200, paired=counts, confidence=0.95)[1]
    gates = [(True, "first model"), (True, paired(18, 22)), (False, paired(3, 30))]
    _add_versions(app_db, gates, active=2)
    at = open_page(people[1], "models.py")
    assert not at.exception, at.exception
    refused, kept, _ = at.dataframe[0].value["why"].tolist()  # newest first
    assert refused.startswith("held-out accuracy 0.8500 is worse than the then-active v2's 0.9850 on the same "
                              "200 pairs by more than the 0.01 tolerance, beyond noise (the new model alone right "
                              "on 3 pairs, the then-active v2 alone on 30; p<0.001, below 0.05)"), refused
    assert kept.startswith("held-out accuracy 0.8900 vs then-active v1 0.9100 on the same 200 pairs: not worse "
                           "by more than the 0.01 tolerance beyond noise (the new model alone right on 18 pairs, "
                           "the then-active v1 alone on 22; p="), kept
    assert "active model" not in refused + kept


def test_the_recorded_compared_version_wins_over_the_rule(app_db, people):
    """The job records which version a candidate was gated against (``gate_compared_with``); the page names
    that one, not the last promoted version before it, which it infers only for versions without the record."""
    with app_db.begin() as s:
        for i, promoted in enumerate([True, True, False], start=1):
            metrics = {"accuracy": 0.7, "gate": "first model" if i == 1 else _gate(0.70, 0.74)}
            if i == 3:
                metrics["gate_compared_with"] = 1  # as recorded: not v2, which the rule would name
            s.add(ModelVersion(artifact_path=f"/m{i}", encoder_id="enc", is_active=i == 2, promoted=promoted,
                               promoted_at=utcnow() if promoted else None, n_train=60 + i, n_test=400,
                               metrics=metrics))
    at = open_page(people[1], "models.py")
    assert not at.exception, at.exception
    third, second, _ = at.dataframe[0].value["why"].tolist()  # newest first
    assert "the then-active v1's 0.7400" in third, third
    assert "the then-active v1's 0.7400" in second, second  # no record: the rule


def test_a_rejected_model_is_rejected_in_both_tables_and_its_reason_no_error(app_db, people):
    """Versions called a rejected model "refused" and Training runs "rejected", with the gate's reason in a
    column headed "error"; the health page's runs too."""
    reason = _gate(0.60, 0.7345)
    with app_db.begin() as s:
        run = TrainingRun(status="rejected", step="promote", started_at=utcnow(), finished_at=utcnow(), error=reason)
        s.add(run)
        s.flush()
        s.add(ModelVersion(artifact_path="/m1", encoder_id="enc", is_active=True, promoted=True, promoted_at=utcnow(),
                           n_train=60, n_test=400, metrics={"accuracy": 0.7345, "gate": "first model"}))
        s.add(ModelVersion(artifact_path="/m2", encoder_id="enc", is_active=False, promoted=False, n_train=70,
                           n_test=400, training_run_id=run.id, metrics={"accuracy": 0.6, "gate": reason}))
    for page in ("models.py", "model_health.py"):
        at = open_page(people[1], page)
        assert not at.exception, at.exception
        [runs] = [d for d in at.dataframe if "step" in d.value.columns]
        assert runs.value[["status", "error"]].values.tolist() == [["rejected", reason]]
        assert json.loads(runs.proto.columns)["error"]["label"] == "why", runs.proto.columns
        if page == "models.py":
            assert at.dataframe[0].value["status"].tolist() == ["rejected", "active"]
