"""Admin: is the reward model learning the right thing? Learning curve, calibration, the length
signal, ensemble spread, acquisition scores and the pairs where it confidently contradicts people."""

import altair as alt
import pandas as pd
import streamlit as st

from annotate import dashboard
from annotate.ingest import counted
from annotate.ui import context

actor = context.require_admin_page()
db = context.get_db()

CACHE_SECONDS = 60
# Vega-Lite writes a flat series' ticks with every digit ("1.000000", "0.0000000000000…" cut off).
AXIS_3F = alt.Axis(format=".3f")
# What the live checks rest on: a pair's P(A) is written when a retrain scores the open pool, so a pair judged
# before the first model, or imported with its winner, has none, and a pair scored while open keeps the P(A) of
# the model that scored it last (which may since have trained on its labels).
NO_LIVE_SCORES = ("No judged pair has a model P(A) yet, so there is nothing to compare with the human majorities: "
                  "a retrain scores the open pairs, and a pair judged before the first model or imported with "
                  "its winner is never scored. The held-out figures above are the check until then.")
LIVE_P = ("P(A) is the one the pair got when a retrain last scored it while it was open (that model may since "
          "have trained on its labels).")


@st.cache_data(ttl=CACHE_SECONDS, show_spinner="Reading the model's record…", max_entries=8)
def _health(url: str, actor_id: int) -> dashboard.ModelHealth:
    """Model health, shared by admins' reruns for a minute (the page re-checks the role first)."""
    with db.read() as session:
        return dashboard.model_health(session, actor=actor)


st.title("Model health")
if st.button("Refresh", key="health_refresh", icon=":material/refresh:"):
    _health.clear()
with context.stop_on_errors():
    mh = _health(context.get_settings().sqlalchemy_url, actor.id)


def _fmt(value, spec=".3f") -> str:
    return "—" if value is None else format(value, spec)


active = mh.active
row = context.metric_row()
row.metric("Active version", "none" if active is None else f"v{active['id']}")
row.metric("Held-out accuracy", _fmt(active and active["accuracy"]))
rule = active and active["length_rule"]
row.metric(f"Length-only baseline ({rule})" if rule else "Length-only baseline",
           _fmt(active and active["length_baseline_accuracy"]),
           help="Accuracy of 'the longer (or shorter) response wins', whichever does better, on the same held-out "
                "pairs.")
row.metric("ECE", _fmt(active and active["ece"]))
row.metric("Reward–length ρ (held-out)", _fmt(active and active["reward_length_spearman"], ".2f"),
              help="Spearman correlation between reward and response length: the reward-hacking signal.")

st.subheader("Fresh labels")
fresh = mh.fresh
if fresh is None:
    st.info("No active model from a training run yet: nothing to compare with new judgments.")
else:
    st.caption(f"v{fresh.version_id} against judgments made after its training run read the labels (judgment "
               f"#{fresh.after_judgment_id + 1:,} and later), on pairs it never trained on: the check that the model "
               "still agrees with people.")
    if fresh.random_n:
        low, high = fresh.random_interval
        held_out = active and active["accuracy"]
        line = (f"Pairs served in random order: the model agrees with **{fresh.random_correct / fresh.random_n:.1%}** "
                f"of {fresh.random_n:,} (95% interval {low:.1%}–{high:.1%})")
        if held_out is not None and high < held_out:
            st.warning(line + f", below its held-out accuracy of {held_out:.1%}: it does worse on new labels than "
                       "on the ones it was tested on. What annotators see or how they judge may have changed; "
                       "look at the disagreements below before relying on its scores.", icon=":material/warning:")
        else:
            st.markdown(line + ("" if held_out is None else f"; held-out accuracy {held_out:.1%}") + ".")
    else:
        st.markdown("Pairs served in random order: none judged yet.")
    if fresh.chosen_n:
        st.markdown(f"Pairs the strategy put first: **{fresh.chosen_correct / fresh.chosen_n:.1%}** of "
                    f"{fresh.chosen_n:,}. Expect less here: they were chosen because the model was unsure.")

if not mh.versions:
    st.info("No model trained yet. The charts below fill in after the first retrain.")
else:
    st.subheader("Versions")
    st.dataframe(pd.DataFrame(context.local_rows(mh.versions)), hide_index=True, key="versions_table",
                 column_config=context.three_decimals("accuracy", "log_loss", "ece", "length_baseline_accuracy",
                                                      "reward_length_spearman", "ensemble_prob_std",
                                                      "ensemble_reward_std"))
    context.times_caption()

left, right = st.columns(2)
with left:
    st.subheader("Learning curve")
    if mh.learning_curve:
        curve = pd.DataFrame(mh.learning_curve, columns=["labels", "accuracy", "version"])
        st.altair_chart(alt.Chart(curve).mark_line(point=True).encode(
            # Whole labels: one version's count alone was written "1,821.000000".
            x=alt.X("labels:Q", title="training labels", axis=alt.Axis(format=",d", tickMinStep=1)),
            y=alt.Y("accuracy:Q", title="held-out accuracy", scale=alt.Scale(zero=False), axis=AXIS_3F),
            tooltip=["version", "labels", alt.Tooltip("accuracy:Q", format=".3f")]), width="stretch")
        st.caption("Each version on the held-out labels of its own run: later versions are measured on more "
                   "pairs, so a step between two points mixes the model's change with the test set's.")
    else:
        st.info("No version reports a held-out accuracy yet.")
with right:
    st.subheader("Calibration")
    cal = [dict(b, source="held-out (active version)") for b in mh.held_out_calibration if b.get("count")]
    cal += [{"lower": b.lower, "upper": b.upper, "predicted": b.predicted, "observed": b.observed,
             "count": b.count, "source": "live: P(A) vs human share"} for b in mh.live_calibration if b.count]
    if cal:
        diagonal = alt.Chart(pd.DataFrame({"x": [0, 1], "y": [0, 1]})).mark_line(
            strokeDash=[4, 4], color="gray").encode(x="x:Q", y="y:Q")
        points = alt.Chart(pd.DataFrame(cal)).mark_line(point=True).encode(
            x=alt.X("predicted:Q", title="predicted P", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("observed:Q", title="observed frequency", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("source:N", legend=alt.Legend(orient="bottom", title=None)),
            tooltip=["source", alt.Tooltip("predicted:Q", format=".2f"), alt.Tooltip("observed:Q", format=".2f"),
                     "count"])
        st.altair_chart(diagonal + points, width="stretch")
    else:
        st.info("No calibration data yet.")
    scored_judged = sum(b.count for b in mh.live_calibration)
    if active is not None and not scored_judged:
        st.caption(NO_LIVE_SCORES)
    elif scored_judged:
        st.caption(f"Live: {counted(scored_judged, 'judged pair')} with a model P(A): " + LIVE_P)

left, right = st.columns(2)
with left:
    st.subheader("Reward gap against length gap")
    if mh.length_points:
        pts = pd.DataFrame(mh.length_points, columns=["length_gap", "reward_gap"])
        st.altair_chart(alt.Chart(pts).mark_circle(size=18, opacity=0.5).encode(
            x=alt.X("length_gap:Q", title="length of A − length of B (characters)"),
            y=alt.Y("reward_gap:Q", title="reward gap (logit P(A))")), width="stretch")
        st.metric("Spearman ρ (scored pairs)", _fmt(mh.length_gap_spearman, ".2f"),
                  help="Close to ±1 means the model mostly rewards length.")
    else:
        st.info("No scored comparisons yet.")
with right:
    st.subheader("Ensemble spread")
    spread = pd.DataFrame([v for v in mh.versions if v["ensemble_prob_std"] is not None])
    if len(spread):
        st.altair_chart(alt.Chart(spread).mark_line(point=True).encode(
            x=alt.X("id:O", title="version"),
            y=alt.Y("ensemble_prob_std:Q", title="mean std of P(A) across heads", axis=AXIS_3F),
            tooltip=["id", "n_train", alt.Tooltip("ensemble_prob_std:Q", format=".3f")]), width="stretch")
    else:
        st.info("No version reports its ensemble spread.")

st.subheader("Acquisition scores in the open pool")
if mh.score_histogram:
    hist = pd.DataFrame(mh.score_histogram, columns=["lower", "upper", "count"])
    st.altair_chart(alt.Chart(hist).mark_bar().encode(
        x=alt.X("lower:Q", bin="binned", title="acquisition score"), x2="upper:Q",
        y=alt.Y("count:Q", title="open comparisons"), tooltip=["lower", "upper", "count"]),
        width="stretch")
    st.caption(f"{counted(mh.open_scored, 'open comparison carries', 'open comparisons carry')} a score.")
else:
    st.info("The open pool has not been scored yet.")

st.subheader("Confident disagreements")
st.caption("Comparisons where the human majority contradicts a confident model. Open one on the Review page.")
scored_judged = sum(b.count for b in mh.live_calibration)
if active is None:  # "None: the model does not contradict" read as a check passed, with no model to check
    st.info("No model yet: nothing to compare with the human majorities.")
elif mh.disagreements:
    st.dataframe(pd.DataFrame(mh.disagreements), hide_index=True, key="disagreements_table",
                 column_config={"model_p_a": st.column_config.NumberColumn("model P(A)", format="%.2f")})
    st.caption(LIVE_P)
elif not scored_judged:  # "None" read as a check passed, with nothing checked (imported winners, say)
    st.info(NO_LIVE_SCORES)
else:
    st.success(f"None: on the {counted(scored_judged, 'judged pair')} with a model P(A), the model does not "
               "confidently contradict the human majority.")
    st.caption(LIVE_P)

if mh.runs:
    with st.expander("Recent training runs"):
        context.runs_table(mh.runs)
