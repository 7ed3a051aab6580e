"""Where the benchmarks find the real HH-RLHF data by default."""

from __future__ import annotations

from pathlib import Path

HH_NAME = "hh-rlhf-harmless-base-test.jsonl.gz"
ROOT = Path(__file__).resolve().parents[1]


def hh_data() -> Path:
    """The shared copy beside the checkout (``../shared/data``) where there is one, else the test suite's."""
    shared = ROOT.parent / "shared" / "data" / HH_NAME
    return shared if shared.exists() else ROOT / "tests" / "data" / HH_NAME
