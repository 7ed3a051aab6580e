"""AppTest tests of the admin pages' error paths: text from an import file, a locked database,
a killed retraining run, and what an unexpected exception shows."""

from __future__ import annotations

import json
import socket
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from streamlit.testing.v1 import AppTest

from annotate import db as db_module
from annotate import locks, retrain
from annotate.accounts import Actor
from annotate.db import Database, create_db_engine
from annotate.models import AppSetting, Comparison, JobLock, ModelVersion, TrainingRun, utcnow
from annotate.ui import render
from annotate.ui.context import NOT_SAVED
from tests.factories import make_comparisons
from tests.ui.conftest import APP, ROOT, open_page

TIMEOUT = 60
EVIL = "![t](https://evil.example/q.png)"


def _open(actor: Actor | None, page: str) -> AppTest:
    return open_page(actor, page, TIMEOUT)


def _alerts(at: AppTest) -> list[str]:
    return [e.value for kind in (at.error, at.warning, at.info, at.success) for e in kind]


def _click(at: AppTest, label: str) -> AppTest:
    next(b for b in at.button if b.label == label).click()
    at.run()
    return at


# --------------------------------------------------------------------------- import file text


def _upload_csv(at: AppTest, content: bytes) -> None:
    at.file_uploader(key="import_file").upload("pairs.csv", content, "text/csv")
    at.run()
    assert not at.exception, at.exception


def test_import_notes_quote_csv_columns_without_rendering_them(app_db, people):
    at = _open(people[1], "admin_import.py")
    _upload_csv(at, f"prompt,response_a,response_b,{EVIL}\np,a,b,x\n".encode())
    notes = [a for a in _alerts(at) if "ignored CSV column" in a]
    assert len(notes) == 1 and "evil.example" in notes[0], _alerts(at)
    _click(at, "Import")
    assert not at.exception, at.exception
    summary = [s.value for s in at.success]
    assert len(summary) == 1 and "evil.example" in summary[0], _alerts(at)
    for text in _alerts(at):
        assert "![" not in text, text  # no Markdown image: nothing is fetched from the file's URLs


def test_import_error_quotes_a_bad_header_without_rendering_it(app_db, people):
    at = _open(people[1], "admin_import.py")
    _upload_csv(at, f"question,{EVIL}\nhi,there\n".encode())
    [error] = [e.value for e in at.error]
    assert "unrecognised CSV columns" in error and "evil.example" in error
    assert "![" not in error, error


def test_import_says_when_known_winners_will_keep_pairs_from_annotators(app_db, people):
    """With the defaults (known winner stored as a judgment, overlap 1) a TRL or HH file's pairs are complete on
    import; the page says so before Import, not after."""
    at = _open(people[1], "admin_import.py")
    _upload_csv(at, b"prompt,chosen,rejected\np1,good1,bad1\np2,good2,bad2\n")
    [note] = [i.value for i in at.info if "known winner" in i.value]
    assert "2 of the 2 comparisons" in note and "annotators will not see" in note
    at.selectbox(key="import_known_winner").set_value("ignore")
    at.run()
    assert not [i.value for i in at.info if "known winner" in i.value]
    at.selectbox(key="import_known_winner").set_value("judgment")
    at.number_input(key="import_overlap").set_value(2)
    at.run()
    assert not [i.value for i in at.info if "known winner" in i.value]
    _upload_csv(at, b"prompt,response_a,response_b\np1,a1,b1\n")  # no winners: nothing to say
    assert not [i.value for i in at.info if "known winner" in i.value]


def test_import_page_counts_read_as_numbers(app_db, people):
    """A 100,000-row file said "66714 of the 100000 comparisons", and one bad row "1 problem(s)"."""
    at = _open(people[1], "admin_import.py")
    _upload_csv(at, b"prompt,chosen,rejected\n" + b"".join(b"p%d,good%d,bad%d\n" % (i, i, i) for i in range(1200)))
    [note] = [i.value for i in at.info if "known winner" in i.value]
    assert note.startswith("1,200 of the 1,200 comparisons have a known winner"), note
    _upload_csv(at, b"prompt,response_a,response_b\np1,a1,\np2,a2,b2\n")
    assert [e.value for e in at.error][0].startswith("1 problem found;"), _alerts(at)


def test_import_runs_once_per_file_however_often_it_is_pressed(app_db, people):
    """A second press (a double click during a long import) imported the whole file again to add nothing."""
    from annotate.models import AuditEvent

    import hashlib

    content = b"prompt,response_a,response_b\np1,a1,b1\np2,a2,b2\n"
    at = _open(people[1], "admin_import.py")
    _upload_csv(at, content)
    # A second press while the first run imports starts a second run (Streamlit drops the first one's output):
    # The page's token for a file and its options: the defaults, known winners as judgments and overlap 1.
    at.session_state["import_running"] = ((hashlib.sha256(content).hexdigest(), "judgment", 1), utcnow())
    at.run()
    assert next(b for b in at.button if b.label == "Import").disabled
    assert any("being imported" in i.value for i in at.info)
    del at.session_state["import_running"]  # the first run is done (it failed here: nothing was written)
    at.run()
    _click(at, "Import")
    [summary] = [s.value for s in at.success]
    assert "added 2 comparisons" in summary
    assert next(b for b in at.button if b.label == "Import").disabled
    at.run()  # any later run of the page, e.g. the one a second press queued while the import ran
    assert not at.exception and [s.value for s in at.success] == [summary]
    with app_db.read() as s:
        assert s.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.action == "import")) == 1
    _upload_csv(at, b"prompt,response_a,response_b\np3,a3,b3\n")  # another file: Import again
    assert not next(b for b in at.button if b.label == "Import").disabled and not at.success


def test_a_second_run_learns_from_the_database_that_the_first_one_imported_the_file(app_db, people):
    """What the importing run remembers does not reach the run on screen: the batch in the database does."""
    import hashlib

    from annotate.models import ImportBatch

    content = b"prompt,response_a,response_b\np1,a1,b1\n"
    digest = hashlib.sha256(content).hexdigest()
    at = _open(people[1], "admin_import.py")
    _upload_csv(at, content)
    at.session_state["import_running"] = ((digest, "judgment", 1), utcnow() - timedelta(seconds=5))
    at.run()
    assert any("being imported" in i.value for i in at.info)
    with app_db.begin() as s:
        s.add(ImportBatch(filename="pairs.csv", file_hash=digest, format="pairs"))
    next(b for b in at.button if b.label == "Refresh").click().run()
    assert not at.exception, at.exception
    [done] = [s.value for s in at.success]
    assert done.startswith("Imported as batch") and next(b for b in at.button if b.label == "Import").disabled


# --------------------------------------------------------------------------- a locked database


@pytest.fixture
def lock_database(app_db, monkeypatch):
    """A context manager that holds SQLite's write lock on the app's database from another connection.

    The app's busy timeout is cut to 1 s (its engine is created at the page's first run, after
    this), so its writes fail with "database is locked" as they would after the real 30 s.
    """
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_S", 1)

    @contextmanager
    def locked():
        conn = sqlite3.connect(app_db.engine.url.database, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()
    return locked


def _not_saved(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == [NOT_SAVED]


def test_settings_save_on_a_locked_database_says_not_saved_then_saves(app_db, people, lock_database):
    at = _open(people[1], "settings.py")
    at.number_input(key="opt_target").set_value(500)
    with lock_database():
        _not_saved(_click(at, "Save settings"))
    with app_db.read() as session:
        assert session.get(AppSetting, "target_judgments") is None
    _click(at, "Save settings")  # the form kept its input: pressing again saves it
    assert not at.exception and not at.error, _alerts(at)
    assert [s.value for s in at.success] == ["Saved: target_judgments."]
    with app_db.read() as session:
        assert session.get(AppSetting, "target_judgments").value == 500


@pytest.mark.parametrize("key, field, top, above", [
    ("opt_max_overlap", "max_overlap", 20, 21),
    ("opt_gold_rate", "gold_rate", 0.5, 0.51),
    ("opt_probe_rate", "probe_rate", 0.5, 0.51),
])
def test_settings_inputs_stop_where_the_campaign_rules_do(app_db, people, key, field, top, above):
    """A value the form lets an admin enter is one that saves: the widget's top is the rule's.

    (Gold rate 0.8 used to be accepted by the form and refused on save, below a long form.)"""
    from dataclasses import replace

    from annotate import campaign
    from annotate.errors import PrefloopError
    from annotate.settings import load_settings

    at = _open(people[1], "settings.py")
    assert at.number_input(key=key).max == top
    options = replace(campaign.defaults(load_settings()), **{"max_overlap": 20, field: top})
    options.validate()
    with pytest.raises(PrefloopError):
        replace(options, **{field: above}).validate()


def test_guidelines_save_on_a_locked_database_says_not_saved_then_saves(app_db, people, lock_database):
    at = _open(people[1], "guidelines.py")
    at.text_area(key="guidelines_text").input("# New rules")
    with lock_database():
        _not_saved(_click(at, "Save guidelines"))
    with app_db.read() as session:
        assert session.get(AppSetting, "guidelines") is None
    _click(at, "Save guidelines")
    assert not at.exception and not at.error, _alerts(at)
    with app_db.read() as session:
        assert session.get(AppSetting, "guidelines").value == "# New rules"


def test_import_on_a_locked_database_says_not_saved_then_imports(app_db, people, lock_database):
    at = _open(people[1], "admin_import.py")
    _upload_csv(at, b"prompt,response_a,response_b\np1,a1,b1\np2,a2,b2\n")
    with lock_database():
        _not_saved(_click(at, "Import"))
    with app_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Comparison)) == 0
    _click(at, "Import")
    assert not at.exception and not at.error, _alerts(at)
    with app_db.read() as session:
        assert session.scalar(select(func.count()).select_from(Comparison)) == 2


def test_retrain_now_on_a_locked_database_says_not_saved(app_db, people, lock_database, monkeypatch):
    started = []
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a))  # never train in a test
    at = _open(people[1], "models.py")
    with lock_database():
        _not_saved(_click(at, "Retrain now"))
    assert started == []  # SQLite's write lock is taken before the process would start


# --------------------------------------------------------------------------- a killed retraining run


def _add_running_run(app_db, pid: int = 4242) -> int:
    with app_db.begin() as session:
        run = TrainingRun(status="running", step="train", host="somehost", pid=pid,
                          heartbeat_at=utcnow() - timedelta(hours=1))
        session.add(run)
        session.flush()
        return run.id


def _retrain_button(at: AppTest):
    return next(b for b in at.button if b.label == "Retrain now")


def _set_lock_row(app_db, holder: str, age: timedelta) -> None:
    with app_db.begin() as session:
        session.merge(JobLock(name=retrain.LOCK_NAME, holder=holder, acquired_at=utcnow() - age,
                              heartbeat_at=utcnow() - age))


def test_a_killed_run_does_not_disable_retrain_now(app_db, people):
    run_id = _add_running_run(app_db)  # killed: it left no lock behind
    at = _open(people[1], "models.py")
    assert not _retrain_button(at).disabled
    assert not at.warning
    assert [i.value for i in at.info if i.value.startswith(f"Run {run_id} stopped at step train")]


def test_retrain_now_is_disabled_only_while_the_run_holds_the_lock(app_db, people):
    run_id = _add_running_run(app_db)
    lock = locks.acquire(app_db, retrain.LOCK_NAME)  # held by this (live) process
    try:
        at = _open(people[1], "models.py")
        assert _retrain_button(at).disabled
        assert [w.value for w in at.warning] == [f"Run {run_id} is in progress (step train)."]
    finally:
        lock.release()
    at.run()
    assert not _retrain_button(at).disabled and not at.warning


@pytest.mark.parametrize("holder, age, alive", [
    ("otherhost:1:x", timedelta(seconds=5), True),  # another machine, heartbeat fresh
    ("otherhost:1:x", timedelta(seconds=locks.DEFAULT_STALE_SECONDS + 30), False),  # stale: the job takes over
    ("gone", timedelta(seconds=5), False),  # a process on this host that no longer exists
])
def test_retrain_now_follows_the_lock_staleness(app_db, people, holder, age, alive):
    if holder == "gone":
        proc = subprocess.Popen([sys.executable, "-c", "pass"])
        proc.wait()
        holder = f"{socket.gethostname()}:{proc.pid}:x"
    _add_running_run(app_db)
    _set_lock_row(app_db, holder, age)
    assert retrain.run_alive(app_db) is alive
    at = _open(people[1], "models.py")
    assert _retrain_button(at).disabled is alive


@pytest.mark.postgres
def test_run_alive_follows_the_advisory_lock_on_postgresql(pg_clean_url):
    database = Database(create_db_engine(pg_clean_url))
    try:
        other = locks.acquire(database, "some-other-job")
        try:
            assert not retrain.run_alive(database)  # only the retrain lock counts
        finally:
            other.release()
        lock = locks.acquire(database, retrain.LOCK_NAME)
        try:
            assert retrain.run_alive(database)
        finally:
            lock.release()
        assert not retrain.run_alive(database)  # a killed holder's connection drops: the same
    finally:
        database.dispose()


# --------------------------------------------------------------------------- unexpected exceptions


@pytest.mark.parametrize("cwd", ["root", "elsewhere"])
def test_streamlit_shows_no_error_details_and_runs_one_script_run_at_a_time(cwd, tmp_path):
    """``make run`` (``streamlit run streamlit_app.py`` from the repo root) and ``streamlit run
    /path/to/streamlit_app.py`` from elsewhere both read .streamlit/config.toml, which keeps
    exception types, messages and tracebacks out of the browser, and turns fast reruns off: with them a
    click during a run started its run at once on another thread beside the first (a double click on
    Rename ran two renames: one said "no user named 'annie'" in place of the confirmation; with a 1 s pause
    put in the rename's transaction, tests/ui/test_admin_users_rename.py failed with fast reruns and passed
    without)."""
    code = ("import sys, streamlit.config as c\n"
            "if sys.argv[1:]: c._main_script_path = sys.argv[1]  # what `streamlit run` sets\n"
            "print(c.get_option('client.showErrorDetails'), c.get_option('runner.fastReruns'))")
    args, where = ([], ROOT) if cwd == "root" else ([APP], tmp_path)
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=where, capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.split() == ["none", "False"]


def test_retrain_now_says_how_to_follow_the_run_without_a_reload(app_db, people, monkeypatch):
    """A reload starts a new browser session (logged out): the page offers Refresh instead."""
    monkeypatch.setattr(retrain, "start_background_run", lambda session, settings, actor: (4242, "/tmp/run.log"))
    at = _open(people[1], "models.py")
    _click(at, "Retrain now")
    [message] = [s.value for s in at.success]
    assert "process 4242" in message and "reload" not in message.lower() and "Refresh" in message
    run_id = _add_running_run(app_db)  # what the started process records
    _click(at, "Refresh")
    assert [i.value for i in at.info if i.value.startswith(f"Run {run_id} stopped")]


def test_retrain_now_pressed_again_right_after_a_run_that_ended_at_once_starts_no_second(app_db, people,
                                                                                            monkeypatch):
    """A run with nothing to do (no encoder, no labels) ends in about a second; the second click of a double
    click whose run came after that found no live process and started (and audited) another. Within
    retrain.SAME_PRESS_SECONDS of the start it is the same press; after that, a press starts a new run."""
    from sqlalchemy import update

    from annotate.accounts import audit
    from annotate.models import AuditEvent

    done = subprocess.Popen(["true"])
    done.wait()  # a process that has ended and been reaped, like the quick run's
    starts = []

    def start(session, settings, actor):
        starts.append(done.pid)
        audit(session, actor, "model.retrain", pid=done.pid)
        return done.pid, "/tmp/run.log"

    monkeypatch.setattr(retrain, "start_background_run", start)
    at = _open(people[1], "models.py")
    _click(at, "Retrain now")
    _click(at, "Retrain now")  # the second press, its process already gone
    assert len(starts) == 1 and [s.value for s in at.success if f"process {done.pid}" in s.value]
    with app_db.begin() as session:
        session.execute(update(AuditEvent).where(AuditEvent.action == "model.retrain")
                        .values(created_at=utcnow() - timedelta(seconds=60)))
    _click(at, "Retrain now")  # a minute later: a new run
    assert len(starts) == 2


# --------------------------------------------------------------------------- the reward model page


def _add_active_version(app_db, gate: str, n_test: int = 26, **metrics) -> None:
    from annotate.models import ModelVersion

    with app_db.begin() as session:
        session.add(ModelVersion(artifact_path="/nowhere/rm", encoder_id="enc", is_active=True, promoted=True,
                                 promoted_at=utcnow(), n_train=73, n_test=n_test,
                                 metrics={"accuracy": 0.65, "gate": gate, **metrics}))


def test_score_a_response_asks_for_both_texts_instead_of_scoring_blanks(app_db, people, monkeypatch):
    """An empty form used to load the model and print a reward for two empty strings."""
    from annotate import scoring

    loaded = []
    monkeypatch.setattr(scoring, "load_model", lambda *a, **k: loaded.append(a))
    _add_active_version(app_db, "first model")
    at = _open(people[1], "models.py")
    at.text_area(key="score_prompt").input("How do I boil an egg?")
    _click(at, "Score")  # the response is still empty
    assert not at.exception, at.exception
    assert "Enter a prompt and a response to score." in [w.value for w in at.warning]
    assert loaded == [] and not [m for m in at.metric if m.label.startswith("Reward (version")]


def test_the_promotion_reason_reads_as_a_sentence(app_db, people):
    _add_active_version(app_db, "only 26 decisive held-out pairs (fewer than 30), too few to compare accuracies")
    at = _open(people[1], "models.py")
    [caption] = [c.value for c in at.caption if c.value.startswith("Trained on 73 judgments")]
    assert "(UTC). Only 26 decisive held-out pairs" in caption, caption


@pytest.mark.parametrize("n_test, warned", [(1, True), (29, True), (30, False)])
def test_metrics_from_a_tiny_held_out_set_are_marked_as_noise(app_db, people, n_test, warned):
    """A first model tested on 1 held-out judgment showed accuracy 0.000 with nothing to say it means nothing."""
    _add_active_version(app_db, "first model", n_test=n_test)
    at = _open(people[1], "models.py")
    noise = [w.value for w in at.warning if w.value.startswith(f"Tested on only {n_test} held-out judgments")]
    assert bool(noise) is warned


@pytest.mark.parametrize("longer, rule", [(0.465, "shorter wins"), (0.61, "longer wins"), (None, "either way")])
def test_the_length_baseline_says_which_way_it_goes(app_db, people, longer, rule):
    """The pages showed the better of 'longer wins' and 'shorter wins' without saying which (researcher
    dogfood run): the direction is what a length-hacking model would follow."""
    _add_active_version(app_db, "first model", length_baseline_accuracy=0.535,
                        **({} if longer is None else {"length_longer_wins_accuracy": longer}))
    at = _open(people[1], "models.py")
    assert [m.value for m in at.metric if m.label == f"Length baseline ({rule})"] == ["0.535"]
    at = _open(people[1], "model_health.py")
    label = "Length-only baseline" + ("" if longer is None else f" ({rule})")
    assert [m.value for m in at.metric if m.label == label] == ["0.535"]


@pytest.mark.parametrize("n_decisive, said", [(20, "tested on 26 held-out ones (20 with a winner, which the "
                                                  "accuracy counts); promoted"), (26, "tested on 26 held-out ones; "
                                                                                       "promoted")])
def test_the_caption_names_held_out_ties_only_when_there_are_some(app_db, people, n_decisive, said):
    """"(ties among them: ...)" was said of every model, ties or none (researcher dogfood run)."""
    _add_active_version(app_db, "first model", n_decisive=n_decisive)
    at = _open(people[1], "models.py")
    [caption] = [c.value for c in at.caption if c.value.startswith("Trained on 73 judgments")]
    assert said in caption, caption
    # Metrics in the versions table at three decimals: 0.650, not 0.65 beside 0.623.
    [table] = [d for d in at.dataframe if "accuracy" in d.value.columns]
    assert json.loads(table.proto.columns)["accuracy"]["type_config"]["format"] == "%.3f"


@pytest.mark.parametrize("pairs, warned", [(20, True), (29, True), (30, False)])
def test_the_noise_warning_counts_held_out_pairs_as_the_gate_does(app_db, people, pairs, warned):
    """60 held-out judgments on 20 pairs (overlap 3) showed no warning, while the gate said "too few"
    (researcher dogfood run): the warning counts pairs with a winner, as the gate does."""
    _add_active_version(app_db, "first model", n_test=60, n_held_out_decisive=pairs)
    at = _open(people[1], "models.py")
    noise = [w.value for w in at.warning if w.value.startswith("Tested on only")]
    assert noise == ([f"Tested on only {pairs} held-out pairs with a winner (fewer than 30): these figures are "
                      "noise until more labels arrive."] if warned else [])


HOSTILE = EVIL + " <img src=x onerror=alert(1)> ![u][r]\n\n[r]: https://evil.example/r.gif"


def _rendered_markdown(at: AppTest) -> list[str]:
    """Every piece of text the page hands to Streamlit's Markdown renderer."""
    return [str(e.value) for kind in ("markdown", "caption", "title", "header", "subheader", "error", "warning",
                                      "info", "success") for e in getattr(at, kind)]


def _assert_inert(texts: list[str]) -> None:
    for text in texts:
        assert "![" not in text and "<img" not in text and "\n[r]:" not in text, text


def test_review_shows_rationales_and_generator_names_without_rendering_them(app_db, people):
    from annotate.models import Judgment, Response

    annotator, admin = people
    with app_db.begin() as s:
        (cid,) = make_comparisons(s, 1)
        comparison = s.get(Comparison, cid)
        s.get(Response, comparison.response_a_id).generator = EVIL
        s.add(Judgment(comparison_id=cid, annotator_id=annotator.id, choice="a", rationale=HOSTILE, flags=[EVIL]))
    at = _open(admin, "review.py")
    at.number_input(key="review_id").set_value(cid).run()
    assert not at.exception, at.exception
    texts = _rendered_markdown(at)
    assert sum("evil.example/q.png" in t for t in texts) >= 2, texts  # the rationale and the generator are shown
    _assert_inert(texts)
    # The pair is drawn in render.untrusted_area, as on the annotate page: its headings cannot outshout
    # the page's own (before, the review page drew the responses without that style).
    assert [h for h in at.get("html") if render._UNTRUSTED_CSS.strip() in h.proto.body], "no untrusted-area style"


def test_guidelines_are_shown_to_annotators_without_rendering_images_or_html(app_db, people):
    from annotate import campaign
    from annotate.settings import load_settings

    annotator, admin = people
    with app_db.begin() as s:
        campaign.update_options(s, load_settings(environ={}, env="test"), actor=admin,
                                guidelines="# Rules\n\nPick the **better** one. " + HOSTILE)
    at = _open(annotator, "guidelines.py")
    texts = _rendered_markdown(at)
    assert any("Pick the **better** one" in t and "evil.example/q.png" in t for t in texts), texts
    _assert_inert(texts)
    # ...and in the Guidelines dialog (key G) over every pair on the annotate page.
    with app_db.begin() as s:
        make_comparisons(s, 1)
    at = _open(annotator, "annotate.py")
    at.button(key="show_guidelines").click().run()
    texts = _rendered_markdown(at)
    assert any("Pick the **better** one" in t for t in texts), texts
    _assert_inert(texts)


@pytest.mark.parametrize("page", ["audit.py", "admin_export.py", "overview.py", "annotators.py", "model_health.py",
                                  "review.py", "admin_import.py"])
@pytest.mark.parametrize("change", ["demote", "deactivate"])
def test_an_open_admin_page_refuses_on_the_next_click_after_demotion_or_deactivation(app_db, people, page, change):
    from annotate import accounts
    from annotate.models import Role

    annotator, admin = people
    at = _open(admin, page)
    before = [t.value for t in at.title]
    assert before and before != ["prefloop"], _alerts(at)
    with app_db.begin() as s:
        accounts.create_user(s, "boss2", "correct-horse-2", "admin", system=True)  # someone stays admin
        if change == "demote":
            accounts.set_role(s, admin.username, Role.annotator, system=True)
        else:
            accounts.set_active(s, admin.username, False, system=True)
    at.run()
    assert not at.exception, at.exception
    if change == "demote":  # now an annotator: the page's address says it is for admins, and nothing more
        assert [w.value for w in at.warning if "is for admins" in w.value], _alerts(at)
        assert not at.metric and not at.number_input and not at.file_uploader
    else:
        assert [t.value for t in at.title] != before
    assert not at.dataframe


def test_score_form_says_a_missing_artifact_needs_shared_model_storage(app_db, people):
    """The active model's files are not on this machine: the form says what to do, as `prefloop score` does."""
    _add_active_version(app_db, "first model")  # its artifact path does not exist here
    at = _open(people[1], "models.py")
    at.text_area(key="score_prompt").input("How do I boil an egg?")
    at.text_area(key="score_response").input("Simmer it for 9 minutes.")
    _click(at, "Score")
    assert not at.exception, at.exception
    assert [e.value for e in at.error if "storage shared by all of them" in e.value], _alerts(at)


def test_an_admin_page_whose_role_check_cannot_reach_the_database_says_so(app_db, people, monkeypatch):
    """The router read the user a moment before; the page's own role check then hit a database that had
    gone away and showed Streamlit's generic exception box instead of the app's message."""
    from sqlalchemy.exc import OperationalError

    from annotate import accounts
    from annotate.ui.context import DATABASE_DOWN

    at = _open(people[1], "overview.py")

    def down(*args, **kwargs):
        raise OperationalError("SELECT users", {}, Exception("connection refused"))

    monkeypatch.setattr(accounts, "require_admin", down)
    at.run()
    assert not at.exception, at.exception
    assert [e.value for e in at.error] == [DATABASE_DOWN]
    assert [b.label for b in at.button if b.key == "try_again"] == ["Try again"]


def test_the_annotate_page_load_picked_as_a_deadlock_victim_is_run_again(app_db, people, monkeypatch):
    """PostgreSQL aborts a page load caught in a deadlock (it waited for a pair's row while holding
    the annotator's); that attempt wrote nothing. Before, the page said the database was busy and
    offered Try again; now the load runs again, as a press does, and shows the pair."""
    import psycopg.errors
    from sqlalchemy.exc import OperationalError

    from annotate import queue

    with app_db.begin() as s:
        (cid,) = make_comparisons(s, 1)
    real, calls = queue.next_comparison, []

    def deadlocked_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("SELECT comparisons FOR UPDATE", {}, psycopg.errors.DeadlockDetected("victim"))
        return real(*args, **kwargs)

    at = _open(people[0], "annotate.py")
    monkeypatch.setattr(db_module.time, "sleep", lambda s: None)
    monkeypatch.setattr(queue, "next_comparison", deadlocked_once)
    at.run()
    assert not at.exception, at.exception
    assert len(calls) == 2
    assert not at.error, _alerts(at)
    assert any(f"Pair #{cid}" in c.value for c in at.caption), [c.value for c in at.caption]


def test_versions_table_says_first_which_version_was_refused_and_why(app_db, people):
    """The gate's reason was the 15th column, out of sight: a refused version read as an unticked box,
    and metrics showed every digit (log loss 0.000000000000000406)."""
    refused = "held-out accuracy 0.9120 is worse than the active model's 1.0000 by more than 0.01"
    shown = refused.replace("the active model", "the then-active v1")  # the version it was compared with
    with app_db.begin() as s:
        s.add(ModelVersion(artifact_path="/m1", encoder_id="enc", is_active=True, promoted=True, n_train=60,
                           n_test=40, promoted_at=utcnow(), metrics={"accuracy": 1.0, "log_loss": 4.06e-16, "gate": "first model"}))
        s.add(ModelVersion(artifact_path="/m2", encoder_id="enc", is_active=False, promoted=False, n_train=80,
                           n_test=45, metrics={"accuracy": 0.912345, "log_loss": 0.3333333, "gate": refused}))
    at = _open(people[1], "models.py")
    frame = at.dataframe[0].value  # Versions comes before Training runs
    assert list(frame.columns[:3]) == ["version", "status", "why"]
    assert frame[["status", "why"]].values.tolist() == [["rejected", shown], ["active", "first model"]]
    assert frame["accuracy"].tolist() == [0.912, 1.0] and frame["log_loss"].tolist() == [0.333, 0.0]
