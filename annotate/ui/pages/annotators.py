"""Admin: annotator quality — agreement, gold accuracy, self-consistency, bias and speed, with flags."""

from datetime import timedelta

import altair as alt
import pandas as pd
import streamlit as st

from annotate import dashboard, quality
from annotate.ingest import counted
from annotate.models import utcnow
from annotate.ui import context

PERIODS = {"Last 24 hours": timedelta(hours=24), "Last 7 days": timedelta(days=7),
           "Last 30 days": timedelta(days=30), "All time": None}
DEFAULT_PERIOD = "Last 7 days"
PERCENT_COLUMNS = ["majority_agreement", "gold_accuracy", "model_agreement", "flip_rate", "left_rate",
                   "longer_rate", "tie_rate", "both_bad_rate"]
# The rates shown with a 95% interval (the figure an admin ranks people by, and the flags' rates). A comment,
# not a docstring: Streamlit's magic would write a bare string onto the page.
INTERVALS = {"gold": "gold accuracy", "majority": "majority agreement", "flip": "flip rate"}
COLUMN_ORDER = ["annotator", "active", "judgments", "flags", "gold_accuracy", "gold_interval", "gold_n",
                "majority_agreement", "majority_interval", "majority_n", "kappa", "kappa_pairings",
                "model_agreement", "model_n", "flip_rate", "flip_interval", "probes", "left_rate", "decisive_n",
                "longer_rate", "tie_rate", "both_bad_rate", "median_time_s", "ms_per_1k_chars", "time_length_corr"]

actor = context.require_admin_page()
db = context.get_db()

CACHE_SECONDS = 60
# The κ heatmap's cells: square, at most this many pixels a side, and the whole grid at most KAPPA_GRID_PX across
# (never under KAPPA_CELL_MIN_PX a cell), so that with its labels and legend it fits its half of the page up to
# 35 annotators. Stretched to the column's width, two annotators made two bars 8 px tall.
KAPPA_CELL_MAX_PX, KAPPA_CELL_MIN_PX, KAPPA_GRID_PX = 56, 8, 280


@st.cache_data(ttl=CACHE_SECONDS, show_spinner="Computing agreement…", max_entries=32)
def _report(url: str, actor_id: int, period: str) -> quality.QualityReport:
    """The annotator report, shared by admins' reruns for a minute (the page re-checks the role first)."""
    since = utcnow() - PERIODS[period] if PERIODS[period] else None
    with db.read() as session:
        return dashboard.annotator_table(session, actor=actor, since=since)


@st.cache_data(ttl=CACHE_SECONDS, show_spinner=False, max_entries=8)
def _imported(url: str, actor_id: int) -> dashboard.ImportedJudgments:
    """The imported judgments none of the page's figures count (one COUNT), shared like the report."""
    with db.read() as session:
        return dashboard.imported_judgments(session, actor=actor)


def _imported_caption(imported: dashboard.ImportedJudgments) -> str:
    """Says that the imported judgments are not in these figures, and where they do count."""
    n, named, raters = imported.n, imported.named, imported.raters
    whose = ""
    if raters:
        rater_s = counted(raters, "named rater")
        whose = f" (from {rater_s})" if named == n else f" ({named:,} of them from {rater_s})"
    judgments = counted(n, "imported judgment")
    return (f":material/info: {judgments}{whose} {'is' if n == 1 else 'are'} not in these figures, which cover "
            "annotators' own judgments only. "
            "Imported votes count in preference exports, and the raw judgments export names each one's rater "
            "(`external_annotator`).")


st.title("Annotators")
left, right = st.columns([3, 1], vertical_alignment="bottom")
period = left.selectbox("Period", list(PERIODS), index=list(PERIODS).index(DEFAULT_PERIOD),
                        key="annotators_period")
if right.button("Refresh", key="annotators_refresh", icon=":material/refresh:"):
    _report.clear()
    _imported.clear()
with context.stop_on_errors():
    url = context.get_settings().sqlalchemy_url
    report, imported = _report(url, actor.id, period), _imported(url, actor.id)


def _fmt(value, spec=".2f") -> str:
    return "—" if value is None else format(value, spec)


def _interval(low, high) -> str | None:
    return None if pd.isna(low) else f"{low:.0%}–{high:.0%}"


overall = report.overall
row = context.metric_row()
row.metric("Annotators", len(report.annotators))
row.metric("Flagged", len(report.flagged))
row.metric("Krippendorff's α (ordinal)", _fmt(report.alpha_ordinal),
           help="Ties as the middle category a < tie < b; both-bad counted as missing.")
row.metric("Krippendorff's α (nominal)", _fmt(report.alpha_nominal), help="All four choices as categories.")
row.metric("Gold accuracy (all)", _fmt(overall.gold_accuracy, ".0%"), help=f"{overall.n_gold} gold judgments")
if imported.n:
    st.caption(_imported_caption(imported))

if not report.annotators:
    st.info("No judgments in this period.")
    st.stop()

frame = pd.DataFrame([a.as_row() for a in report.annotators])
frame["flags"] = [", ".join(quality.FLAG_TEXT[f] for f in a.flags) for a in report.annotators]
for name in INTERVALS:
    frame[f"{name}_interval"] = [_interval(lo, hi) for lo, hi in zip(frame[f"{name}_low"], frame[f"{name}_high"])]


def _highlight(row):
    return ["background-color: rgba(255, 75, 75, 0.18)" if row["flags"] else "" for _ in row]


st.subheader("Per annotator")
column_config = {c: st.column_config.NumberColumn(c.replace("_", " "), format="percent")
                 for c in PERCENT_COLUMNS}
column_config.update({f"{name}_interval": st.column_config.TextColumn(
    f"{name} 95% interval", help=f"Where the {label} is likely to be, given how few judgments it rests on (Wilson)")
    for name, label in INTERVALS.items()})
column_config.update({
    "active": st.column_config.CheckboxColumn("active", help="Unticked: the account is deactivated"),
    "gold_n": st.column_config.NumberColumn("gold n", help="Gold pairs judged"),
    "majority_n": st.column_config.NumberColumn(
        "majority n", help="Judgments on pairs where the other annotators have a strict plurality"),
    "kappa_pairings": st.column_config.NumberColumn(
        "κ pairings", help="Their votes paired with another annotator's vote on the same pair"),
    "model_n": st.column_config.NumberColumn("model n", help="Decisive judgments on pairs the model is sure of"),
    "decisive_n": st.column_config.NumberColumn("decisive n", help="A/B judgments with a known side"),
    "kappa": st.column_config.NumberColumn("κ with others", format="%.2f"),
    "median_time_s": st.column_config.NumberColumn("median time (s)", format="%.1f"),
    "ms_per_1k_chars": st.column_config.NumberColumn("ms per 1k chars", format="%.0f"),
    "time_length_corr": st.column_config.NumberColumn("time~length r", format="%.2f"),
})
st.caption("Each rate comes with the number of judgments it rests on; a rate over a few judgments is mostly "
           "chance (3 of 3 agreeing leaves anything from 44% to 100% likely), so read the 95% intervals "
           "before comparing people.")
st.dataframe(frame.style.apply(_highlight, axis=1), hide_index=True, column_config=column_config,
             column_order=COLUMN_ORDER, key="annotator_table")
if report.flagged:
    for a in report.flagged:
        st.warning(f"**{a.username}**{'' if a.active else ' (deactivated)'}: "
                   + "; ".join(quality.flag_evidence(a, f) for f in a.flags))
else:
    st.success("Nobody is flagged in this period.")

left, right = st.columns(2)
with left:
    st.subheader("Pairwise Cohen's κ")
    if report.pair_kappas:
        cells = []
        for a, b, k, n in report.pair_kappas:
            cells += [{"annotator": a, "other": b, "kappa": k, "shared": n},
                      {"annotator": b, "other": a, "kappa": k, "shared": n}]
        names = sorted({c["annotator"] for c in cells})
        cell = max(KAPPA_CELL_MIN_PX, min(KAPPA_CELL_MAX_PX, KAPPA_GRID_PX // len(names)))
        base = alt.Chart(pd.DataFrame(cells)).encode(
            x=alt.X("other:N", title=None, sort=names, scale=alt.Scale(domain=names),
                    axis=alt.Axis(labelAngle=-90, labelLimit=100)),
            y=alt.Y("annotator:N", title=None, sort=names, scale=alt.Scale(domain=names),
                    axis=alt.Axis(labelLimit=100)))
        heat = base.mark_rect().encode(
            # clamped: a κ below the domain's -0.2 is drawn as -0.2 (red), not extrapolated to black
            color=alt.Color("kappa:Q", scale=alt.Scale(domain=[-0.2, 1.0], scheme="redyellowgreen", clamp=True),
                            title="κ"),
            tooltip=["annotator", "other", alt.Tooltip("kappa:Q", format=".2f"), "shared"])
        if cell >= 32:  # room for the figure in each cell; white on the dark ends of the scale
            heat += base.mark_text(fontSize=11).encode(
                text=alt.Text("kappa:Q", format=".2f"),
                color=alt.condition("datum.kappa < 0.1 || datum.kappa > 0.85", alt.value("white"),
                                    alt.value("black")))
        st.altair_chart(heat.properties(width=alt.Step(cell), height=alt.Step(cell)), width="content")
    else:
        st.info("No two annotators share a comparison yet.")
with right:
    st.subheader("Side and length bias")
    bias = frame.dropna(subset=["left_rate"])
    if len(bias):
        t = report.thresholds
        band = alt.Chart(pd.DataFrame([{"lo": t.left_rate_low, "hi": t.left_rate_high}])).mark_rect(
            opacity=0.12, color="green").encode(x="lo:Q", x2="hi:Q")
        points = alt.Chart(bias).mark_circle(size=90).encode(
            x=alt.X("left_rate:Q", title="picked the left side", scale=alt.Scale(domain=[0, 1]),
                    axis=alt.Axis(format="%")),
            y=alt.Y("longer_rate:Q", title="picked the longer response", scale=alt.Scale(domain=[0, 1]),
                    axis=alt.Axis(format="%")),
            color=alt.condition("datum.flags != ''", alt.value("#e4572e"), alt.value("#4c78a8")),
            tooltip=["annotator", "judgments", alt.Tooltip("left_rate:Q", format=".0%"),
                     alt.Tooltip("longer_rate:Q", format=".0%"), "flags"])
        st.altair_chart(band + points, width="stretch")
    else:
        st.info("No decisive judgments yet.")

st.subheader("Time per judgment against length")
speed = frame.dropna(subset=["ms_per_1k_chars"])
if len(speed):
    limit = report.thresholds.speed_min_ms_per_1k_chars
    bars = alt.Chart(speed).mark_bar().encode(
        x=alt.X("annotator:N", sort="y", title=None),
        y=alt.Y("ms_per_1k_chars:Q", title="median ms per 1,000 characters"),
        color=alt.condition(f"datum.ms_per_1k_chars < {limit}", alt.value("#e4572e"), alt.value("#4c78a8")),
        tooltip=["annotator", alt.Tooltip("ms_per_1k_chars:Q", format=".0f"),
                 alt.Tooltip("median_time_s:Q", format=".1f"), alt.Tooltip("time_length_corr:Q", format=".2f")])
    rule = alt.Chart(pd.DataFrame([{"limit": limit}])).mark_rule(strokeDash=[4, 4]).encode(y="limit:Q")
    st.altair_chart(bars + rule, width="stretch")
else:
    st.info("No timed judgments yet.")

with st.expander("How flags are decided"):
    t = report.thresholds
    st.markdown(
        f"- **picks one side**: left-side rate outside [{t.left_rate_low:.2f}, {t.left_rate_high:.2f}] over "
        f"≥ {t.left_min_n} decisive judgments, binomial p < {t.left_binomial_p}\n"
        f"- **low gold accuracy**: below {t.gold_min_accuracy:.0%} over ≥ {t.gold_min_n} gold judgments, "
        f"one-sided binomial p < {t.gold_binomial_p} against {t.gold_min_accuracy:.0%}\n"
        f"- **low agreement with others**: pooled Cohen's κ below {t.kappa_min} over ≥ {t.kappa_min_shared} "
        "pairings of their votes with others' on the same pairs (7 pairs at overlap 4 give 21)\n"
        f"- **inconsistent on repeats**: flip rate above {t.flip_max:.0%} over ≥ {t.flip_min_n} swapped probes, "
        f"one-sided binomial p < {t.flip_binomial_p} against {t.flip_max:.0%}\n"
        f"- **too fast**: median under {t.speed_min_ms_per_1k_chars:,.0f} ms per 1,000 characters over "
        f"≥ {t.speed_min_n} timed judgments\n\n"
        f"Model agreement counts pairs where the model is confident (|P(A) − 0.5| ≥ {quality.MODEL_CONFIDENCE}), "
        f"on the period's most recent ~{quality.MODEL_SAMPLE:,} judgments (the model's scores change with every "
        f"retrain); the κ heatmap uses the most recent ~{quality.PAIR_SAMPLE:,}. Agreement, κ and α compare each "
        "judgment made in the period with the other annotators' votes on the same pair, whenever those were made.")
