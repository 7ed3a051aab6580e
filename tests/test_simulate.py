"""The active-learning simulator on small synthetic data (a fake embedder, no encoder)."""

from __future__ import annotations

import argparse
import hashlib
import json
import math

import numpy as np
import pytest

from annotate import simulate
from rm.data import A_WINS, B_WINS, PairData
from rm.split import held_out_mask
from rm.train import fit_and_evaluate

DIM = 12


class FakeEmbedder:
    """Deterministic vectors: a hash-seeded random part plus a 'quality' direction for good responses."""

    n_computed = 0

    def _vec(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")
        v = np.random.default_rng(seed).normal(size=DIM).astype(np.float32)
        if "helpful" in text:
            v[0] += 2.0
        return v

    def embed(self, texts, keep="start"):
        self.n_computed += len(texts)
        return np.stack([self._vec(t) for t in texts]) if len(texts) else np.zeros((0, DIM), np.float32)

    def embed_pairs(self, prompts, responses):
        return self.embed([f"{p}\x00{r}" for p, r in zip(prompts, responses)])


def _synthetic(n=300, seed=0, noise=0.1) -> PairData:
    rng = np.random.default_rng(seed)
    feat = rng.normal(size=(2 * n, DIM)).astype(np.float32)
    w = rng.normal(size=DIM)
    gap = (feat[:n] - feat[n:]) @ w
    a_wins = (gap > 0) ^ (rng.random(n) < noise)
    return PairData(feat, np.arange(n), np.arange(n, 2 * n), np.where(a_wins, A_WINS, B_WINS),
                    group=np.array([f"p{i}" for i in range(n)], dtype=object),
                    length=rng.integers(10, 500, 2 * n))


def test_schedule_starts_at_the_seed_labels_and_ends_at_the_budget():
    assert simulate.label_schedule(32, 32, 1000, 5000).tolist()[:3] == [32, 64, 96]
    assert simulate.label_schedule(32, 32, 1000, 5000)[-1] == 1000
    assert simulate.label_schedule(8, 10, 1000, 25).tolist() == [8, 18, 25]


def test_random_curve_is_trained_on_the_recorded_labels():
    data = _synthetic(n=160)
    test_mask = held_out_mask(data.group, simulate.TEST_FRACTION, salt="simulate-3")
    pool_size = int((~test_mask).sum())
    labels, acc, _ = simulate.simulate_seed(data, "random", 3, seed_labels=10, batch=60, budget=pool_size)
    assert labels[0] == 10 and labels[-1] == pool_size
    # With the whole pool labelled, the last point is exactly the job's fit on all training pairs.
    _, metrics = fit_and_evaluate(data.subset(np.flatnonzero(~test_mask)), data.subset(test_mask), seed=3)
    assert acc[-1] == pytest.approx(metrics.accuracy, abs=1e-12)
    assert acc[-1] > 0.75 and acc[-1] > acc[0]
    # Reversing the recorded labels of the pool (not of the test split) reverses what is learnt.
    flipped = data.swapped()
    flipped.outcome = np.where(test_mask, data.outcome, flipped.outcome).astype(np.int8)
    flipped.ia, flipped.ib = data.ia, data.ib
    _, acc_flipped, _ = simulate.simulate_seed(flipped, "random", 3, seed_labels=10, batch=60, budget=pool_size)
    assert acc_flipped[-1] < 0.3


def test_strategies_share_the_split_and_seed_labels():
    data = _synthetic(n=200)
    _, a1, _ = simulate.simulate_seed(data, "random", 1, seed_labels=16, batch=16, budget=16)
    _, a2, _ = simulate.simulate_seed(data, "default", 1, seed_labels=16, batch=16, budget=16)
    assert a1.tolist() == a2.tolist()  # same held-out prompts and seed labels: the same first model
    _, b, _ = simulate.simulate_seed(data, "random", 2, seed_labels=16, batch=16, budget=16)
    assert b.tolist() != a1.tolist()


def test_each_round_labels_the_front_of_the_queue(monkeypatch):
    """The next batch is the pairs the job's queue order puts first (not any other ``need`` of them)."""
    import rm.acquisition
    import rm.train

    data = _synthetic(n=200)  # pair i is rows (i, n + i): a training set's ``ia`` names its pairs
    orders, trained = [], []
    real_order, real_fit = rm.acquisition.queue_order, rm.train.fit_and_evaluate

    def order(*args, **kwargs):
        priority, score = real_order(*args, **kwargs)
        orders.append(priority)
        return priority, score

    def fit(train, *args, **kwargs):
        trained.append(np.sort(train.ia))
        return real_fit(train, *args, **kwargs)

    monkeypatch.setattr(rm.acquisition, "queue_order", order)
    monkeypatch.setattr(rm.train, "fit_and_evaluate", fit)
    simulate.simulate_seed(data, "margin", 1, seed_labels=16, batch=16, budget=64)
    pool_rows = np.flatnonzero(~held_out_mask(data.group, simulate.TEST_FRACTION, salt="simulate-1"))
    assert len(orders) == len(trained) - 1 == 3
    for priority, before, after in zip(orders, trained, trained[1:]):
        open_rows = np.setdiff1d(pool_rows, before)
        assert len(priority) == len(open_rows)
        front = open_rows[np.argsort(-priority, kind="stable")[:16]]
        assert np.array_equal(np.union1d(before, front), after)


def test_labels_to_reach_interpolates_and_reports_never():
    labels = np.array([0, 100, 200])
    assert simulate.labels_to_reach(labels, np.array([0.5, 0.6, 0.7]), 0.65) == pytest.approx(150)
    assert simulate.labels_to_reach(labels, np.array([0.5, 0.6, 0.7]), 0.4) == 0
    assert math.isinf(simulate.labels_to_reach(labels, np.array([0.5, 0.6, 0.7]), 0.8))


def test_no_verdict_from_too_few_seeds():
    """Two seeds give three distinct bootstrap means: intervals that 'exclude 0' mean nothing there."""
    assert simulate.verdict((0.1, 0.5), (0.2, 0.8), 2).startswith("none: 2 seed(s) are too few")
    assert simulate.verdict((0.1, 0.5), (0.2, 0.8), simulate.MIN_SEEDS_FOR_VERDICT).startswith("saves labels")
    # Both intervals must exclude 0 for "saves labels"; the area's alone is "better on average".
    assert simulate.verdict((0.1, 0.5), (-0.1, 0.8), 5).startswith("better on average over the curve")
    assert simulate.verdict((-0.1, 0.5), (0.2, 0.8), 5).startswith("not distinguishable")
    labels = np.arange(32, 1025, 32)
    base = 0.55 + 0.06 * np.log(labels / 32) / np.log(32)
    ref = simulate.Curves("random", labels, np.tile(base, (2, 1)), np.zeros((2, len(labels))))
    # A tiny shortfall at the budget reads 0%, not -0%.
    close = simulate.Curves("close", labels, np.tile(base - 1e-5, (2, 1)), np.zeros((2, len(labels))))
    cmp = simulate.compare(close, ref, 640)
    assert cmp.verdict.startswith("none:")
    text = simulate.format_report([ref, close], [cmp])
    assert "-0%" not in text and "verdict: none: 2 seed(s)" in text


def test_compare_measures_a_known_label_saving():
    labels = np.arange(32, 1025, 32)
    rng = np.random.default_rng(0)
    base = 0.55 + 0.06 * np.log(labels / 32) / np.log(32)
    noise = rng.normal(0, 0.0003, size=(6, len(labels)))
    ref = simulate.Curves("random", labels, base + noise, np.zeros_like(noise))
    # The same curve reached with half the labels: accuracy at L is random's at 2L.
    fast = np.interp(2 * labels, labels, base)
    fast[labels * 2 > labels[-1]] = base[-1]
    strat = simulate.Curves("fast", labels, fast + noise, np.zeros_like(noise))
    cmp = simulate.compare(strat, ref, 640)
    assert cmp.saving == pytest.approx(0.5, abs=0.05)
    assert cmp.saving_ci[0] > 0.4 and cmp.saving_ci[1] < 0.6
    assert cmp.auc_gain > 0 and cmp.auc_wins == 6 and cmp.worst_gap > -0.01
    assert cmp.verdict.startswith("saves labels")
    assert [b for b, _ in cmp.savings_along] == [160, 320, 640]
    assert all(s == pytest.approx(0.5, abs=0.05) for _, s in cmp.savings_along)
    text = simulate.format_report([ref, strat], [cmp])
    assert "labels saved along the curve (to reach random's accuracy at 160 / 320 / 640 labels): 49% / 50% / 50%" in text
    same = simulate.compare(ref, ref, 640)
    assert same.saving == pytest.approx(0.0, abs=1e-9) and same.auc_gain == 0
    assert same.verdict.startswith("not distinguishable")
    slow = simulate.Curves("slow", labels, base - 0.02 + noise, np.zeros_like(noise))
    worse = simulate.compare(slow, ref, 640)
    assert worse.verdict.startswith("worse than the reference")
    assert worse.savings_along[-1][1] < 0
    never = simulate.Curves("never", labels, base - 0.2 + noise, np.zeros_like(noise))
    # Not reached by the last point (1024 labels): to reach random's accuracy at 160 labels it needs more
    # than 1024, a saving below 1 - 1024/160 = -540%; all the curves show, not "never".
    text = simulate.format_report([ref, never], [simulate.compare(never, ref, 640)])
    assert "160 / 320 / 640 labels): < -540% / < -220% / < -60%" in text and "never reached" not in text
    # This reference rises steadily against tiny seed noise: no flatness warning.
    assert simulate.flatness_note(ref, 640) is None


def test_flat_reference_curve_gets_a_warning_about_labels_needed():
    labels = np.arange(32, 1025, 32)
    rng = np.random.default_rng(0)
    flat = 0.63 + 0.002 * labels / labels[-1] + rng.normal(0, 0.012, size=(10, len(labels)))
    note = simulate.flatness_note(simulate.Curves("random", labels, flat, np.zeros_like(flat)), 640)
    assert note is not None and "from 320 to 640 labels" in note and "area under the curve" in note


def _write_pairs(path, n=90, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        good, bad = f"a helpful answer number {i}", f"a useless reply number {i}"
        a_good = rng.random() < 0.5
        rows.append({"prompt": f"question {i}?", "response_a": good if a_good else bad,
                     "response_b": bad if a_good else good, "winner": "a" if a_good else "b"})
    rows.append({"prompt": "no label", "response_a": "x", "response_b": "y"})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_simulate_file_writes_table_json_and_plot(tmp_path):
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data)
    lines = []
    report = simulate.simulate_file(data, ["bald+diverse"], [0, 1], embedder=FakeEmbedder(),
                                    out=tmp_path / "out", seed_labels=8, batch=16, budget=40,
                                    reference_budget=24, progress=False, echo=lines.append)
    assert any("no known winner" in line for line in lines)
    assert [c.strategy for c in report.curves] == ["random", "bald+diverse"]
    doc = json.loads(report.json_path.read_text())
    assert set(doc["strategies"]) == {"random", "bald+diverse"}
    rand = doc["strategies"]["random"]
    assert rand["labels"] == [8, 24, 40]
    assert np.asarray(rand["accuracy"]).shape == (2, 3)
    assert all(0.0 <= a <= 1.0 for row in rand["accuracy"] for a in row)
    # Responses that say "helpful" always win: the recorded labels are learnable.
    assert np.mean(rand["accuracy"], axis=0)[-1] > 0.8
    assert doc["meta"]["pairs"] == 90 and doc["meta"]["seeds"] == [0, 1]
    assert doc["comparisons"][0]["strategy"] == "bald+diverse"
    assert report.png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.text
    assert "mean ± std over 2 seeds" in text and "labels needed to reach random's accuracy at 24 labels" in text
    table = [line.split() for line in text.splitlines() if line.split() and line.split()[0].isdigit() and "±" in line]
    assert [int(r[0]) for r in table] == [8, 24, 40]
    for row, mean in zip(table, np.mean(rand["accuracy"], axis=0)):
        assert float(row[1]) == pytest.approx(mean, abs=5e-5)


def test_main_runs_the_command(tmp_path, monkeypatch, capsys):
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=60)
    monkeypatch.setattr(simulate, "make_embedder", lambda *a, **k: FakeEmbedder())
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "dd"))
    args = argparse.Namespace(data=str(data), strategy=["default"], seed_labels=8, batch=8, budget=24,
                              seeds=2, cold_start=8, out=str(tmp_path / "sim"))
    assert simulate.main(args) == 0
    out = capsys.readouterr().out
    assert "default vs random" in out and "area under the curve" in out
    assert (tmp_path / "sim" / "curves.json").is_file() and (tmp_path / "sim" / "curves.png").is_file()


def test_unknown_strategy_and_unlabelled_files_are_user_errors(tmp_path):
    from annotate.errors import PrefloopError

    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=20)
    with pytest.raises(PrefloopError, match="unknown acquisition strategy"):
        simulate.simulate_file(data, ["nope"], [0], embedder=FakeEmbedder(), out=tmp_path / "o", progress=False)
    bare = tmp_path / "bare.jsonl"
    bare.write_text(json.dumps({"prompt": "p", "response_a": "x", "response_b": "y"}) + "\n")
    with pytest.raises(PrefloopError, match="no comparisons with a known winner"):
        simulate.simulate_file(bare, ["random"], [0], embedder=FakeEmbedder(), out=tmp_path / "o", progress=False)


def _run_cli(argv, tmp_path, monkeypatch):
    from annotate import cli

    monkeypatch.setattr(simulate, "make_embedder", lambda *a, **k: FakeEmbedder())
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "dd"))
    return cli.main(["simulate", *argv])


def test_cli_parses_real_arguments_and_runs_the_command(tmp_path, monkeypatch, capsys):
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=60)
    argv = ["--data", str(data), "--strategy", "default", "--seed-labels", "8", "--batch", "8",
            "--budget", "24", "--seeds", "2", "--first-seed", "3", "--reference-budget", "16", "--cold-start", "8",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "sim")]
    assert _run_cli(argv, tmp_path, monkeypatch) == 0
    out = capsys.readouterr().out
    assert "default vs random" in out and "accuracy at 16 labels" in out
    meta = json.loads((tmp_path / "sim" / "curves.json").read_text())["meta"]
    assert meta["seeds"] == [3, 4] and meta["budget"] == 24 and meta["reference_budget"] == 16
    assert (tmp_path / "sim" / "curves.png").is_file()


def test_cold_start_zero_is_passed_on_not_replaced_by_the_setting(tmp_path, monkeypatch):
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=60)
    monkeypatch.setenv("PREFLOOP_COLD_START", "64")
    argv = ["--data", str(data), "--seed-labels", "8", "--batch", "8", "--budget", "24", "--seeds", "1",
            "--cold-start", "0", "--out", str(tmp_path / "sim")]
    assert _run_cli(argv, tmp_path, monkeypatch) == 0
    assert json.loads((tmp_path / "sim" / "curves.json").read_text())["meta"]["cold_start"] == 0


def test_module_parser_and_cli_subparser_accept_the_same_options():
    from annotate import cli

    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))

    def options(parser):
        return {opt: (a.dest, a.default, a.type, a.required)
                for a in parser._actions if a.dest != "help" for opt in a.option_strings}

    assert options(sub.choices["simulate"]) == options(simulate.build_parser())
    undocumented = [a.option_strings for a in simulate.build_parser()._actions if not a.help]
    assert not undocumented, f"options without help text: {undocumented}"


def test_every_seed_follows_one_schedule_when_the_budget_exceeds_the_pools():
    data = _synthetic(n=60)
    seeds = [0, 1, 2]
    pools = [int((~held_out_mask(data.group, simulate.TEST_FRACTION, salt=f"simulate-{s}")).sum()) for s in seeds]
    assert len(set(pools)) > 1 and min(pools) != pools[-1]  # the data this test needs
    smallest = min(pools)
    (curves,) = simulate.run_simulation(data, ["random"], seeds, seed_labels=8, batch=16, budget=1000,
                                        repeats=1, progress=False)
    assert curves.labels.tolist() == simulate.label_schedule(8, 16, smallest, smallest).tolist()
    for s, row in zip(seeds, curves.accuracy):
        labels, acc, _ = simulate.simulate_seed(data, "random", s, seed_labels=8, batch=16, budget=smallest)
        assert labels.tolist() == curves.labels.tolist() and row.tolist() == acc.tolist()
    assert simulate.common_budget(data, seeds, 1000) == smallest
    assert simulate.common_budget(data, seeds, 30) == 30


def test_each_seed_is_the_mean_of_its_replays():
    data = _synthetic(n=200, noise=0.3)
    kw = dict(seed_labels=16, batch=16, budget=96, cold_start=48)
    runs = {r: simulate.simulate_seed(data, "default", 3, stream=r, **kw) for r in range(3)}
    assert runs[0][1][0] == runs[1][1][0] == runs[2][1][0]  # same split and seed labels
    assert runs[0][1].tolist() != runs[1][1].tolist()  # other random draws after the seed labels
    (curves,) = simulate.run_simulation(data, ["default"], [3], repeats=3, progress=False, **kw)
    assert curves.repeats == 3
    assert np.allclose(curves.accuracy[0], np.mean([runs[r][1] for r in range(3)], axis=0))
    assert np.allclose(curves.log_loss[0], np.mean([runs[r][2] for r in range(3)], axis=0))
    assert "each the mean of 3 replays" in simulate.format_report([curves], [])
    # Stream 0 is the replay a single-repeat run makes.
    (one,) = simulate.run_simulation(data, ["default"], [3], repeats=1, progress=False, **kw)
    assert one.accuracy[0].tolist() == runs[0][1].tolist()
    # first_stream shifts the replays (bench/al_stream_spread.py runs disjoint sets of streams).
    (later,) = simulate.run_simulation(data, ["default"], [3], repeats=2, first_stream=1, progress=False, **kw)
    assert np.allclose(later.accuracy[0], np.mean([runs[1][1], runs[2][1]], axis=0))
    with pytest.raises(simulate.PrefloopError, match="repeats"):
        simulate.run_simulation(data, ["default"], [3], repeats=0, progress=False, **kw)


def test_progress_bar_reaches_the_number_of_retrains(capsys):
    data = _synthetic(n=60)
    curves = simulate.run_simulation(data, ["random", "default"], [0, 1, 2], seed_labels=8, batch=16,
                                     budget=1000, repeats=2, progress=True)
    total = sum(c.accuracy.size * c.repeats for c in curves)
    err = capsys.readouterr().err
    assert f"{total}/{total}" in err
    assert not any(f"{total}/{n}" in err for n in range(total + 1, 2 * total))


def test_labels_needed_are_measured_at_the_last_point_when_the_reference_budget_is_beyond_it(tmp_path):
    labels = np.array([8, 24, 40])
    acc = np.array([[0.6, 0.7, 0.8], [0.62, 0.71, 0.79]])
    ref = simulate.Curves("random", labels, acc, np.zeros_like(acc))
    fast = simulate.Curves("fast", labels, acc + 0.05, np.zeros_like(acc))
    cmp = simulate.compare(fast, ref, 640)
    assert cmp.reference_budget == 40 and cmp.asked_budget == 640
    assert cmp.target_accuracy == pytest.approx(0.795)
    assert cmp.saving == pytest.approx(1 - cmp.needed / 40)
    text = simulate.format_report([ref, fast], [cmp])
    assert "random's accuracy at 40 labels" in text
    assert "reference budget (640 labels) is beyond the curves' last point" in text and "B = 40 labels" in text
    inside = simulate.compare(fast, ref, 24)
    assert inside.reference_budget == 24 and "beyond" not in simulate.format_report([ref, fast], [inside])
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=20)
    from annotate.errors import PrefloopError

    with pytest.raises(PrefloopError, match="--reference-budget must be a number of labels at least --seed-labels"):
        simulate.simulate_file(data, ["random"], [0], embedder=FakeEmbedder(), out=tmp_path / "o",
                               seed_labels=8, reference_budget=4, progress=False)


@pytest.mark.parametrize("name", ["default", "bald", "epig", "margin+power"])
def test_next_batch_is_the_front_of_the_retraining_jobs_queue(name):
    """The simulator's pool (make_pool) and the job's (lazy rows, last labels) give the same next batch."""
    import dataclasses

    from annotate import retrain
    from annotate.campaign import CampaignOptions
    from rm.acquisition import get_strategy, make_pool, queue_order
    from rm.heads import pair_probabilities

    rng = np.random.default_rng(11)
    n_rows, n_open, n_lab, members = 900, 400, 50, 5
    feat = rng.normal(size=(n_rows, DIM)).astype(np.float32)
    scale = rng.uniform(0.5, 2.0, DIM).astype(np.float32)
    rewards = rng.normal(size=(members, n_rows)).astype(np.float32)
    ia, ib = np.arange(n_open), np.arange(n_open, 2 * n_open)
    la, lb = np.arange(800, 800 + n_lab), np.arange(850 - n_lab, 850)
    prompts = rng.integers(0, 300, n_open)  # some prompts have several pairs: the cap matters
    pool = make_pool(rewards, feat, ia, ib, groups=[f"p{g}" for g in prompts], labelled=(la, lb), scale=scale)
    sim_priority, sim_score = queue_order(get_strategy(name), pool, 32, np.random.default_rng(5), n_batches=1)

    options = CampaignOptions(overlap=1, max_overlap=3, gold_rate=0, probe_rate=0, strategy=name, batch_size=32,
                              cold_start=0, retrain_every_labels=1, retrain_every_minutes=1, target_judgments=0,
                              guidelines="")
    job_priority, job_score, _ = retrain._priorities(
        pair_probabilities(rewards, ia, ib), ia=ia, ib=ib, groups=prompts, labelled=(la, lb),
        features_of=lambda rows: feat[rows] / scale, n_rows=n_rows, dim=DIM,
        options=dataclasses.replace(options), rng=np.random.default_rng(5))
    assert np.allclose(sim_score, job_score, rtol=1e-5)
    assert np.array_equal(np.argsort(-sim_priority)[:32], np.argsort(-job_priority)[:32])


# --------------------------------------------------------------------------- what a team meets on its own data


def _cli_error(argv, tmp_path, monkeypatch, capsys):
    """Run ``prefloop simulate`` (fake embedder); ``(exit code, stderr, texts embedded)``."""
    from annotate import cli

    embedder = FakeEmbedder()
    monkeypatch.setattr(simulate, "make_embedder", lambda *a, **k: embedder)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(tmp_path / "dd"))
    rc = cli.main(["simulate", *argv])
    return rc, capsys.readouterr().err, embedder.n_computed


@pytest.mark.parametrize("extra, message", [
    (["--first-seed", "-3"], "--first-seed must be 0 or more"),
    (["--reference-budget", "nan"], "--reference-budget must be"),
    (["--reference-budget", "inf"], "--reference-budget must be"),
    (["--cold-start", "-1"], "--cold-start must be 0 or more"),
    (["--repeats", "0"], "--repeats must be at least 1"),
    (["--batch", "0"], "--batch must be at least 1"),
    (["--seed-labels", "-2"], "--seed-labels must be at least 1"),
    (["--budget", "4"], "--budget (4) must be at least --seed-labels (8)"),
    (["--strategy", "nope"], "unknown acquisition strategy 'nope'"),
])
def test_bad_options_stop_with_one_line_before_any_embedding(tmp_path, monkeypatch, capsys, extra, message):
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=60)
    argv = ["--data", str(data), "--seed-labels", "8", "--batch", "8", "--budget", "24", "--seeds", "1",
            "--cold-start", "8", "--repeats", "1", "--out", str(tmp_path / "sim")]
    rc, err, embedded = _cli_error(argv + extra, tmp_path, monkeypatch, capsys)
    assert rc == 2 and err.startswith("error: ") and message in err and "Traceback" not in err
    assert embedded == 0  # refused before the (slow) embedding of the file
    assert not (tmp_path / "sim" / "curves.json").exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_the_run(tmp_path, monkeypatch, capsys, where):
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=60)
    blocker = tmp_path / "taken"
    blocker.write_text("not a folder")
    out = blocker if where == "file" else blocker / "sim"
    argv = ["--data", str(data), "--seed-labels", "8", "--batch", "8", "--budget", "24", "--seeds", "1",
            "--cold-start", "8", "--repeats", "1", "--out", str(out)]
    rc, err, embedded = _cli_error(argv, tmp_path, monkeypatch, capsys)
    assert rc == 2 and err.startswith(f"error: cannot write curves.json and curves.png to {out}")
    assert "--out" in err and embedded == 0
    assert blocker.read_text() == "not a folder"


def _write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_a_file_with_no_decisive_held_out_pairs_is_refused_not_a_table_of_nan(tmp_path):
    """Ties train the model but accuracy counts only a/b winners: an all-tie file measures nothing."""
    data = _write_rows(tmp_path / "ties.jsonl", [
        {"prompt": f"q{i}", "response_a": f"helpful {i}", "response_b": f"bad {i}", "winner": "tie"}
        for i in range(60)])
    with pytest.raises(simulate.PrefloopError, match="no pairs with a winner .a or b. to measure accuracy on"):
        simulate.simulate_file(data, ["default"], [0, 1], embedder=FakeEmbedder(), out=tmp_path / "o",
                               seed_labels=8, batch=8, budget=24, repeats=1, progress=False, echo=lambda s: None)
    assert not (tmp_path / "o" / "curves.json").exists()


def test_a_single_prompt_is_refused_before_the_budget_notes(tmp_path):
    data = _write_rows(tmp_path / "one.jsonl", [
        {"prompt": "the only question", "response_a": f"helpful {i}", "response_b": f"bad {i}", "winner": "a"}
        for i in range(50)])
    lines = []
    with pytest.raises(simulate.PrefloopError, match="1 prompt"):
        simulate.simulate_file(data, ["default"], [0, 1], embedder=FakeEmbedder(), out=tmp_path / "o",
                               seed_labels=8, batch=8, budget=24, repeats=1, progress=False, echo=lines.append)
    assert not any("smallest training pool" in line for line in lines)


def test_seed_labels_that_are_all_both_bad_are_a_user_error(tmp_path):
    rows = [{"prompt": f"q{i}", "response_a": f"helpful {i}", "response_b": f"bad {i}",
             "winner": "a" if i % 10 == 0 else "both_bad"} for i in range(80)]
    data = _write_rows(tmp_path / "bb.jsonl", rows)
    with pytest.raises(simulate.PrefloopError, match="both-bad"):
        simulate.simulate_file(data, ["default"], [0, 1], embedder=FakeEmbedder(), out=tmp_path / "o",
                               seed_labels=4, batch=8, budget=24, repeats=1, progress=False, echo=lambda s: None)


def test_ties_and_both_bad_labels_are_counted_in_the_notes(tmp_path):
    rows = [{"prompt": f"q{i}", "response_a": f"helpful {i}", "response_b": f"bad {i}",
             "winner": "tie" if i % 5 == 0 else "both_bad" if i % 7 == 0 else "a"} for i in range(70)]
    lines = []
    simulate.simulate_file(_write_rows(tmp_path / "t.jsonl", rows), ["default"], [0], embedder=FakeEmbedder(),
                           out=tmp_path / "o", seed_labels=8, batch=8, budget=24, cold_start=8, repeats=1,
                           progress=False, echo=lines.append)
    note = next(line for line in lines if "ties" in line)
    assert "14 ties and 8 both-bad" in note and "held-out accuracy counts only" in note


@pytest.mark.parametrize("kw, message", [
    (dict(seed_labels=32, batch=8, budget=1000, cold_start=None), "--seed-labels (32) already cover"),
    (dict(seed_labels=8, batch=8, budget=24, cold_start=64), "every strategy would order at random"),
    (dict(seed_labels=8, batch=500, budget=1000, cold_start=16), "every strategy would order at random"),
])
def test_runs_where_no_strategy_ever_chooses_are_refused(tmp_path, kw, message):
    """Seed labels covering the pool, or a cold start past the last batch: every curve would be random's."""
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=40)
    with pytest.raises(simulate.PrefloopError, match=message.replace("(", r"\(").replace(")", r"\)")):
        simulate.simulate_file(data, ["default"], [0, 1], embedder=FakeEmbedder(), out=tmp_path / "o",
                               repeats=1, progress=False, echo=lambda s: None, **kw)


def test_a_capped_budget_is_stated_in_the_report_and_the_json(tmp_path):
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=40)
    echoed = []
    report = simulate.simulate_file(data, ["default"], [0, 1], embedder=FakeEmbedder(), out=tmp_path / "o",
                                    seed_labels=8, batch=8, budget=1000, cold_start=8, reference_budget=16,
                                    repeats=1, progress=False, echo=echoed.append)
    used = int(report.curves[0].labels[-1])
    assert used < 1000
    assert f"note: the budget of 1000 labels was capped at {used}" in report.text
    # Said once in full (at the end); the line before the run says the cap, not the whole note again.
    assert not any("was capped" in line for line in echoed)
    assert any(f"budget {used} (capped from 1000" in line for line in echoed)
    meta = json.loads(report.json_path.read_text())["meta"]
    assert meta["budget"] == 1000 and meta["budget_used"] == used and meta["budget_capped"] is True


def test_curves_json_says_what_was_run_on_what(tmp_path):
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=60)
    report = simulate.simulate_file(data, ["Default", "bald"], [2, 3], embedder=FakeEmbedder(), out=tmp_path / "o",
                                    seed_labels=8, batch=8, budget=24, cold_start=8, repeats=2, progress=False,
                                    echo=lambda s: None)
    doc = json.loads(report.json_path.read_text())
    meta = doc["meta"]
    assert meta["data_sha256"] == hashlib.sha256(data.read_bytes()).hexdigest()
    assert meta["data_path"] == str(data.resolve())
    assert meta["strategies"] == ["random", "default", "bald"] and list(doc["strategies"]) == meta["strategies"]
    assert meta["strategy_rules"] == {"random": "random", "default": "bald+diverse", "bald": "bald"}
    assert meta["seeds"] == [2, 3] and meta["repeats"] == 2 and meta["cold_start"] == 8
    for name in meta["strategies"]:
        curve = doc["strategies"][name]
        assert curve["labels"] == [8, 16, 24] and np.asarray(curve["accuracy"]).shape == (2, 3)


def test_saving_interval_reads_like_the_labels_needed_interval_when_not_reached():
    """Resamples that do not reach the target by the last point (48 labels) need more than 48 labels: a saving
    below 0%. Printed as that, not as "≤ -100%" or "> 96" (twice the budget, which the curves do not show)."""
    labels = np.array([8, 16, 24, 32, 40, 48])
    rng = np.random.default_rng(1)
    ref = simulate.Curves("random", labels, 0.6 + 0.004 * labels + rng.normal(0, 0.01, (6, 6)), np.zeros((6, 6)))
    a = ref.accuracy.copy()
    a[:3] += 0.05  # half the seeds faster, half never reach random's last point
    a[3:] -= 0.05
    strat = simulate.Curves("mixed", labels, a, np.zeros_like(a))
    cmp = simulate.compare(strat, ref, 48)
    text = simulate.format_report([ref, strat], [cmp])
    needed = next(x for x in text.splitlines() if "labels needed" in x)
    saved = next(x for x in text.splitlines() if "labels saved:" in x)
    assert needed.endswith(" to > 48)") and "> 96" not in needed
    assert "(95% CI < 0% to " in saved and "-100" not in saved
    assert math.isinf(cmp.needed_ci[1]) and cmp.saving_ci[0] == -math.inf and cmp.curve_end == 48


def test_plot_labels_the_target_and_crossing_lines(tmp_path, monkeypatch):
    import matplotlib.figure

    seen = {}
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", lambda fig, path, **k: seen.setdefault("fig", fig))
    labels = np.arange(32, 1025, 32)
    base = np.tile(0.55 + 0.06 * np.log(labels / 32) / np.log(32), (3, 1))
    ref = simulate.Curves("random", labels, base, np.zeros_like(base), repeats=4)
    fast = simulate.Curves("fast", labels, base + 0.01, np.zeros_like(base), repeats=4)
    simulate.plot_curves([ref, fast], tmp_path / "c.png", [simulate.compare(fast, ref, 640)], title="pairs.jsonl")
    ax = seen["fig"].axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "random at 640 labels" in legend and "fast reaches it" in legend
    assert "pairs.jsonl" in ax.get_title() and "4 replays" in ax.get_title()


@pytest.mark.parametrize("where", ["run_simulation", "plot_curves"])
def test_an_interrupt_writes_nothing_and_leaves_the_earlier_output(tmp_path, monkeypatch, capsys, where):
    """Ctrl-C during the run, or between curves.json and curves.png (or inside either), says so and
    leaves the earlier pair as it was: no half-written file, no JSON beside another run's plot."""
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=60)
    out = tmp_path / "sim"
    out.mkdir()
    (out / "curves.json").write_text('{"earlier": "run"}')
    argv = ["--data", str(data), "--seed-labels", "8", "--batch", "8", "--budget", "24", "--seeds", "1",
            "--cold-start", "8", "--repeats", "1", "--out", str(out)]

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(simulate, where, interrupted)
    rc, err, _ = _cli_error(argv, tmp_path, monkeypatch, capsys)
    assert rc == 130 and "interrupted" in err and "nothing was written" in err
    assert (out / "curves.json").read_text() == '{"earlier": "run"}'
    assert sorted(p.name for p in out.iterdir()) == ["curves.json"]


def test_kwise_rows_replay_only_their_judged_pairs_and_say_which_were_skipped(tmp_path):
    """A ranked k-wise row judges some of its response pairs; the strategy picks among those of every prompt."""
    rows = [{"prompt": f"q{i}", "responses": [f"helpful best {i}", f"middle {i}", f"worst {i}", f"also bad {i}"],
             "comparisons": [{"a": 0, "b": 1, "winner": "a"}, {"a": 1, "b": 2, "winner": "a"},
                             {"a": 0, "b": 3, "winner": "a"}]} for i in range(40)]
    rows.append(rows[0] | {"comparisons": [{"a": 0, "b": 1, "winner": "b"}]})  # a second judge disagrees
    lines = []
    report = simulate.simulate_file(_write_rows(tmp_path / "k.jsonl", rows), ["default"], [0], embedder=FakeEmbedder(),
                                    out=tmp_path / "o", seed_labels=8, batch=8, budget=32, cold_start=8, repeats=1,
                                    progress=False, echo=lines.append)
    assert any("125 comparisons have no known winner" in line and "k-wise row" in line for line in lines)
    assert any("1 comparisons are given by several rows and replayed once, with the majority of their winners"
               in line and "1 without one was skipped" in line for line in lines)
    assert json.loads(report.json_path.read_text())["meta"]["pairs"] == 119  # a against b: no majority


def test_a_pair_given_by_several_raters_is_replayed_with_their_majority(tmp_path):
    """Multi-rater data: three raters answer one pair, one of them on a row with the responses the other way
    round. Two prefer "Hi there!"; the first row's rater prefers "Go away.", whose winner was kept before."""
    rows = [{"prompt": "Say hi", "response_a": "Go away.", "response_b": "Hi there!", "winner": "a",
             "annotator": "r1"},
            {"prompt": "Say hi", "response_a": "Hi there!", "response_b": "Go away.", "winner": "a",
             "annotator": "r2"},
            {"prompt": "Say hi", "response_a": "Go away.", "response_b": "Hi there!", "winner": "b",
             "annotator": "r3"}]
    dataset = simulate.load_dataset(_write_rows(tmp_path / "raters.jsonl", rows), embedder=FakeEmbedder())
    assert dataset.pairs.outcome.tolist() == [B_WINS]  # in the first row's A/B: "Hi there!" is B
    assert any("1 comparisons are given by several rows" in note for note in dataset.notes)


def test_random_alone_says_there_is_nothing_to_compare(tmp_path):
    """``--strategy random`` on its own printed a table and no word on what the simulator is for."""
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=60)
    report = simulate.simulate_file(data, ["random"], [0], embedder=FakeEmbedder(), out=tmp_path / "o",
                                    seed_labels=8, batch=8, budget=24, cold_start=8, repeats=1, progress=False,
                                    echo=lambda s: None)
    assert "note: only random was run" in report.text and "--strategy default" in report.text


# --------------------------------------------------------------------------- defects found by a tester


def test_names_of_one_strategy_replay_the_same_random_stream():
    """``default`` and ``bald+diverse`` (or ``Bald+Diverse``) are one strategy: the same curves. The stream was
    seeded by the name as typed, so ``--strategy default --strategy bald+diverse`` gave two different curves."""
    import zlib

    data = _synthetic(n=200, noise=0.3)
    kw = dict(seed_labels=16, batch=16, budget=96, cold_start=32)
    curve = {name: simulate.simulate_seed(data, name, 3, **kw)[1].tolist()
             for name in ("default", "bald+diverse", " Bald+Diverse ", "DEFAULT", "bald", "BALD ")}
    assert curve["default"] == curve["bald+diverse"] == curve[" Bald+Diverse "] == curve["DEFAULT"]
    assert curve["bald"] == curve["BALD "]
    # The default keeps the stream its published figures came from; every other app name its own.
    assert simulate._strategy_seed("default") == zlib.crc32(b"default")
    assert simulate._strategy_seed("bald+diverse") == simulate._strategy_seed(" Default") == zlib.crc32(b"default")
    assert simulate._strategy_seed("random") == simulate._strategy_seed("Random") == zlib.crc32(b"random")
    assert simulate._strategy_seed("Margin+Power") == zlib.crc32(b"margin+power")
    # A name only a bench script's own get_strategy knows keeps the stream of the name as given.
    assert simulate._strategy_seed("bald~0.5") == zlib.crc32(b"bald~0.5")
    (a, b) = simulate.run_simulation(data, ["default", "bald+diverse"], [3, 4], repeats=2, progress=False, **kw)
    assert a.accuracy.tolist() == b.accuracy.tolist()


def _curves_ending_at_200(strategy_shift=-0.02, n_seeds=5):
    """Curves like ``--budget 200``'s: 32, 64, …, 192, 200 labels; the strategy ends below random for most seeds."""
    labels = np.array([32, 64, 96, 128, 160, 192, 200])
    rng = np.random.default_rng(7)
    base = 0.57 + 0.07 * (labels - 32) / 168
    ref = simulate.Curves("random", labels, base + rng.normal(0, 0.01, (n_seeds, len(labels))),
                          np.zeros((n_seeds, len(labels))))
    acc = ref.accuracy + strategy_shift * (labels >= 96)
    acc[0] += 0.05  # one seed is faster: some resamples reach the target early
    return ref, simulate.Curves("margin", labels, acc, np.zeros_like(acc))


def test_a_target_not_reached_by_the_curves_end_claims_no_more_than_they_show(tmp_path):
    """Curves ending at 200 labels printed "> 400 (95% CI 32 to > 400)" and "never reached (95% CI ≤ -100% …)":
    all they show is that more than 200 labels are needed, a saving below 0%."""
    ref, strat = _curves_ending_at_200()
    cmp = simulate.compare(strat, ref, 640)
    assert cmp.reference_budget == 200
    assert math.isinf(cmp.needed) and math.isinf(cmp.needed_ci[1]) and cmp.needed_ci[0] < 200
    text = simulate.format_report([ref, strat], [cmp])
    needed = next(x for x in text.splitlines() if "labels needed to reach" in x)
    saved = next(x for x in text.splitlines() if "labels saved:" in x)
    along = next(x for x in text.splitlines() if "along the curve" in x)
    assert needed.endswith(f": > 200 (95% CI {cmp.needed_ci[0]:.0f} to > 200)")
    assert saved.startswith("  labels saved: < 0% (95% CI < 0% to ") and saved.endswith("%)")
    assert along.endswith("/ < 0%")
    for wrong in ("400", "never", "-100"):
        assert wrong not in needed + saved + along
    assert 'note: "> 200" labels needed' in text and "raise --budget" in text
    # curves.json records "not reached" as null, not the made-up 400 labels and -100%.
    doc = json.loads(json.dumps(simulate.curves_to_json([ref, strat], [cmp], {})))
    (row,) = doc["comparisons"]
    assert row["needed"] is None and row["needed_ci"][1] is None and row["saving_ci"][0] is None
    assert row["curve_end"] == 200 and row["savings_along"][-1] == [200.0, None]


def test_saving_text_is_what_the_report_prints_for_the_bench_scripts():
    """bench/al_*.py print comparisons their own way: with not-reached savings now -inf they printed "-inf%"."""
    ref, strat = _curves_ending_at_200()
    cmp = simulate.compare(strat, ref, 640)
    assert simulate.saving_text(cmp, cmp.saving_ci[0]) == "< 0%"
    assert simulate.saving_text(cmp, 0.25) == "25.0%" and simulate.saving_text(cmp, 0.25, 0) == "25%"
    assert simulate.saving_text(cmp, cmp.saving) in simulate.format_report([ref, strat], [cmp])


def test_labels_needed_beyond_the_last_point_of_longer_curves_are_bounded_by_it():
    """With B = 640 on curves to 1024 labels, a target not reached needs more than 1024 (a saving below -60%)."""
    labels = np.arange(32, 1025, 32)
    base = 0.55 + 0.06 * np.log(labels / 32) / np.log(32)
    rng = np.random.default_rng(0)
    ref = simulate.Curves("random", labels, base + rng.normal(0, 0.0003, (6, len(labels))), np.zeros((6, len(labels))))
    slow = simulate.Curves("slow", labels, ref.accuracy - 0.1, np.zeros_like(ref.accuracy))
    cmp = simulate.compare(slow, ref, 640)
    assert cmp.reference_budget == 640
    text = simulate.format_report([ref, slow], [cmp])
    assert "): > 1024 (95% CI > 1024 to > 1024)\n" in text
    assert "labels saved: < -60% (95% CI < -60% to < -60%)" in text
    assert "> 1280" not in text and "-100" not in text
    assert cmp.curve_end == 1024


def test_bootstrap_percentiles_are_unchanged_unless_they_rest_on_unreached_resamples():
    """Where every draw at a percentile's position reached the target, the interval is what it was (published
    figures stay); where the position falls on unreached draws, it is inf ("> the last point")."""
    reached = np.linspace(30.0, 190.0, 1990)
    few = np.r_[reached, [math.inf] * 10]  # 0.5% of the draws do not reach the target: 97.5% rests on reached ones
    old = np.percentile(np.minimum(few, 400.0), [2.5, 97.5])  # the old cap at twice the last point
    assert simulate._needed_percentiles(few, 200.0) == (old[0], old[1])
    many = np.r_[np.linspace(30.0, 190.0, 1900), [math.inf] * 100]  # 5%: the upper end is beyond the curves
    lo, hi = simulate._needed_percentiles(many, 200.0)
    assert lo == np.percentile(np.minimum(many, 400.0), 2.5) and math.isinf(hi)
    assert simulate._needed_percentiles(np.full(50, math.inf), 200.0) == (math.inf, math.inf)


def test_an_out_folder_inside_a_missing_folder_is_refused_before_the_run(tmp_path, monkeypatch, capsys):
    """``prefloop export`` and ``score`` refuse an --out in a folder that does not exist; simulate created
    every missing folder (a mistyped path grew a tree). The --out folder itself is still created."""
    data = tmp_path / "pairs.jsonl"
    _write_pairs(data, n=60)
    argv = ["--data", str(data), "--seed-labels", "8", "--batch", "8", "--budget", "24", "--seeds", "1",
            "--cold-start", "8", "--repeats", "1", "--out"]
    out = tmp_path / "nope" / "deeper" / "sim"
    rc, err, embedded = _cli_error(argv + [str(out)], tmp_path, monkeypatch, capsys)
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: cannot write curves.json and curves.png to {out}: folder ")
    assert str(out.parent) in err and "does not exist" in err and "--out" in err
    assert embedded == 0 and not (tmp_path / "nope").exists()
    monkeypatch.chdir(tmp_path)  # a relative path: the same
    rc, err, _ = _cli_error(argv + ["typo/sim"], tmp_path, monkeypatch, capsys)
    assert rc == 2 and "folder 'typo' does not exist" in err and not (tmp_path / "typo").exists()
    # A new --out folder in a folder that exists is created, as the README says.
    rc, _, _ = _cli_error(argv + ["fresh"], tmp_path, monkeypatch, capsys)
    assert rc == 0 and (tmp_path / "fresh" / "curves.json").is_file()


def test_the_legend_hides_no_curve(tmp_path, monkeypatch):
    """The legend sat inside the axes, over the curves and their bands: it stands outside them now."""
    import matplotlib.figure

    seen = {}

    def savefig(fig, path, **kwargs):
        seen.update(fig=fig, kwargs=kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    ref, strat = _curves_ending_at_200(strategy_shift=0.01)
    simulate.plot_curves([ref, strat], tmp_path / "c.png", [simulate.compare(strat, ref, 640)], title="t")
    fig = seen["fig"]
    fig.canvas.draw()
    ax = fig.axes[0]
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert not legend.overlaps(axes)
    assert seen["kwargs"].get("bbox_inches") == "tight"  # the saved image holds the legend
    simulate.plot_curves([ref, strat], tmp_path / "real.png", [], title="t")  # and it really saves
    monkeypatch.undo()
    simulate.plot_curves([ref, strat], tmp_path / "real.png", [], title="t")
    assert (tmp_path / "real.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
