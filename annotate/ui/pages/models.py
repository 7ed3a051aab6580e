"""Admin: the reward model — versions and their held-out metrics, training runs, retrain, try a score.

The scorer is cached with ``st.cache_resource`` keyed by the model version id,
so a newly promoted model is used at the next rerun without a restart.
Retraining runs in its own process (``prefloop retrain --once --force``): the
web server never trains, and the retrain lock keeps one run at a time.
"""

import os
import re
from datetime import timedelta

import streamlit as st
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from annotate import dashboard, retrain, scoring
from annotate.errors import ModelError, PrefloopError
from annotate.models import User, utcnow
from annotate.ui import context

actor = context.require_admin_page()
settings, db = context.get_settings(), context.get_db()


@st.cache_resource(show_spinner="Loading the reward model…", max_entries=2)
def _scorer(version_id: int, artifact: str):
    """The loaded model of one version (never mutated; a new version is a new cache entry)."""
    return scoring.load_model(settings, artifact)


with context.stop_on_errors():
    with db.read() as session:
        board = scoring.dashboard(session, actor=actor)

# The gate's reason (annotate/retrain.py) calls the model it was compared with "active", which on the
# version now active read as a comparison with itself ("vs active 0.7345").
_ACTIVE_THEN = re.compile(r"\bthe active model\b|(?<=vs )active\b|(?<=\()active\b")


def _then_active(version: dict, versions: list[dict]) -> str:
    """The version that was active when ``version`` was gated: as the job recorded it (``gate_compared_with``),
    else (versions gated before it was recorded) the last promoted one before it, since only a new version is
    ever promoted (one the table lists; else "model")."""
    if version.get("gate_compared_with") is not None:
        return f"v{version['gate_compared_with']}"
    earlier = [v["id"] for v in versions if v["promoted"] and v["id"] < version["id"]]
    return f"v{max(earlier)}" if earlier else "model"


def _gate(version: dict, versions: list[dict]) -> str | None:
    """The gate's reason, naming the then-active version it compared ``version`` with."""
    gate = version["gate"]
    if not gate:
        return gate
    name = _then_active(version, versions)
    return _ACTIVE_THEN.sub(lambda m: f"the then-active {name}" if m.group().startswith("the")
                            else f"then-active {name}", gate)

st.title("Reward model")
active = board["active"]
if active is None:
    st.info("No model yet. Models are trained by `prefloop retrain --once` or the watcher "
            "(`make run` starts it) once there are judgments.")
else:
    st.subheader(f"Active: version {active['id']}")
    row = context.metric_row()
    for label, key in [("Held-out accuracy", "accuracy"), ("Log loss", "log_loss"), ("ECE", "ece"),
                       (f"Length baseline ({active['length_rule'] or 'either way'})", "length_baseline"),
                       ("Reward–length ρ", "reward_length_spearman"),
                       ("Ensemble spread", "ensemble_prob_std")]:
        value = active[key]
        row.metric(label, "—" if value is None else f"{value:.3f}")
    gate = _gate(active, board["versions"]) or ""  # starts in lower case ("first model", "only 26 decisive ...")
    n_decisive = active.get("n_decisive")
    without_winner = n_decisive is not None and n_decisive < (active["n_test"] or 0)
    st.caption(f"Trained on {active['n_train'] or 0:,} judgments, tested on {active['n_test'] or 0:,} held-out ones"
               + (f" ({n_decisive:,} with a winner, which the accuracy counts); " if without_winner else "; ")
               + f"promoted {context.shown_time(active['promoted_at'])}. {gate[:1].upper()}{gate[1:]}")
    # Pairs with a winner, as the gate counts them: three votes on ten pairs are not thirty pairs (a version
    # from before they were recorded: its held-out judgments, which are at least as many).
    pairs = active["n_held_out_decisive"]
    tested = pairs if pairs is not None else active["n_test"] or 0
    if tested < retrain.MIN_HELD_OUT_PAIRS:
        what = "held-out pairs with a winner" if pairs is not None else "held-out judgments"
        st.warning(f"Tested on only {tested} {what} (fewer than {retrain.MIN_HELD_OUT_PAIRS}): these figures are "
                   "noise until more labels arrive.", icon=":material/warning:")


def _status(version: dict) -> str:
    if version["active"]:
        return "active"
    return "promoted, since replaced" if version["promoted"] else "rejected"  # as its training run says


def _version_rows(versions: list[dict]) -> list[dict]:
    """One row per version: what became of it and why first (the promotion gate's reason sat past
    a dozen columns, out of sight), metrics at 3 decimals (they showed 0.000000000000000406)."""
    return [{"version": v["id"], "status": _status(v), "why": _gate(v, versions), "created_at": v["created_at"],
             "n_train": v["n_train"], "n_test": v["n_test"],
             **{key: None if v[key] is None else round(v[key], 3)
                for key in ("accuracy", "log_loss", "ece", "length_baseline", "reward_length_spearman",
                            "ensemble_prob_std")},
             "promoted_at": v["promoted_at"], "training_run": v["training_run_id"], "encoder": v["encoder_id"]}
            for v in versions]


st.subheader("Versions")
if board["versions"]:
    st.dataframe(context.local_rows(_version_rows(board["versions"])), hide_index=True, width="stretch",
                 column_config=context.three_decimals("accuracy", "log_loss", "ece", "length_baseline",
                                                      "reward_length_spearman", "ensemble_prob_std"))
    context.times_caption()
else:
    st.caption("None yet.")

st.subheader("Training runs")
st.button("Refresh", key="refresh_runs", icon=":material/refresh:")  # a rerun reads the runs again
running = [r for r in board["runs"] if r["status"] == "running"]
with context.stop_on_errors():
    alive = bool(running) and retrain.run_alive(db)  # a killed run stays "running" until the next run
if alive:
    st.warning(f"Run {running[0]['id']} is in progress (step {running[0]['step']}).")
elif running:
    st.info(f"Run {running[0]['id']} stopped at step {running[0]['step']} without finishing (its process is "
            "gone); the next run marks it failed. Retrain now starts a new one.")
if board["runs"]:
    context.runs_table(board["runs"])
else:
    st.caption("None yet.")

def _started_by_this_admin(session) -> int | None:
    """The process of the retrain this admin started, while it still runs or for
    ``retrain.SAME_PRESS_SECONDS`` after its start (else None). Called in the transaction that would start
    one, after locking the admin's user row: the second click of a double click runs the page again while
    the first click's run may still be starting its process (Streamlit starts the new run at once and stops
    the old one only at its next Streamlit call), and asked before the lock it saw no run and started a second.

    The button is disabled once a run holds the retrain lock, which a new process takes only after
    starting Python (seconds). A run with nothing to do (no labels, no encoder) ends in about a second, so
    within the window a press is taken for the same one even when its process is gone.
    """
    session.execute(select(User.id).where(User.id == actor.id).with_for_update())  # PostgreSQL; SQLite: IMMEDIATE
    last = dashboard.audit_log(session, actor=actor, limit=1, action="model.retrain", username=actor.username)
    pid = last[0].detail.get("pid") if last else None
    if pid is None:
        return None
    if utcnow() - last[0].created_at < timedelta(seconds=retrain.SAME_PRESS_SECONDS):
        return pid
    try:
        os.kill(pid, 0)  # a child of this server, reaped when it ends: no signal is sent
    except OSError:
        return None
    return pid


if st.button("Retrain now", icon=":material/model_training:", key="retrain_now", disabled=alive):
    log_path = settings.data_dir / "retrain-manual.log"  # where start_background_run logs
    try:
        with db.begin() as session:  # on SQLite the write lock is taken before the process starts
            pid = _started_by_this_admin(session)
            if pid is None:
                pid, log_path = retrain.start_background_run(session, settings, actor=actor)
    except (PrefloopError, OperationalError) as exc:
        st.error(context.not_saved_message(exc))
    else:
        # Not "reload": a reload starts a new browser session, which is logged out.
        st.success(f"Retraining started in process {pid} (log: {log_path}). Press Refresh to follow it "
                   "under Training runs.")

st.subheader("Score a response")
with st.form("score_form"):
    prompt = st.text_area("Prompt", key="score_prompt")
    response = st.text_area("Response", key="score_response")
    submitted = st.form_submit_button("Score", type="primary", disabled=active is None)
if submitted and active is not None and scoring.empty_text(prompt, response):
    st.warning("Enter a prompt and a response to score.")  # an empty text still gets a reward, which means nothing
elif submitted and active is not None:
    with context.user_errors():
        location = scoring.artifact_location(settings, active["artifact_path"])
        if not location.exists():  # e.g. trained on another machine without shared model storage
            with db.read() as session:
                raise ModelError(scoring.missing_artifact_message(session, active["id"], location))
        model = _scorer(active["id"], str(location))
        (row,) = scoring.score_with(model, [prompt], [response])
        st.metric(f"Reward (version {active['id']})", f"{row['reward']:.3f}",
                  help=f"Ensemble spread ± {row['uncertainty']:.3f}. Rewards compare responses to the "
                       "same prompt: σ(r_a − r_b) is the model's P(a better than b).")
