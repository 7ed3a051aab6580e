"""A short soak of the annotation path (bench/soak.py): a few annotators, some in two tabs, judging,
undoing, skipping, pressing twice and coming back after their lease ran out, while the retraining
job rewrites every open pair's priority; then the invariants. No timing is asserted."""

from __future__ import annotations

import pytest

from bench.soak import SoakConfig, run_soak

SHORT = SoakConfig(annotators=4, second_tabs=2, pairs=40, gold_pairs=4, seconds=8.0, retrain_pause_ms=100.0)


def _check(result) -> None:
    assert result.log.submits, "nobody judged anything"
    assert result.log.undos and result.log.skips, "the run was too short to undo and skip"
    assert not result.log.unexpected, "\n".join(result.log.unexpected[:3])
    assert result.defects == {}, (result.defects, {k: result.details.get(k) for k in result.defects})
    assert not result.log.rewrite_errors, result.log.rewrite_errors


def test_soak_sqlite(sqlite_url, tmp_path):
    _check(run_soak(sqlite_url, SHORT, data_dir=tmp_path))


@pytest.mark.postgres
def test_soak_postgres(pg_clean_url, tmp_path):
    _check(run_soak(pg_clean_url, SHORT, data_dir=tmp_path))
