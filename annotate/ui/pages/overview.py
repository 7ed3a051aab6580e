"""Admin: the campaign at a glance — totals, pace, people at work, progress, model and next retrain."""

from datetime import timedelta

import altair as alt
import pandas as pd
import streamlit as st

from annotate import dashboard, retrain
from annotate.ingest import counted
from annotate.ui import context

PERIODS = {"Last 24 hours": timedelta(hours=24), "Last 7 days": timedelta(days=7),
           "Last 30 days": timedelta(days=30)}

actor = context.require_admin_page()
settings, db = context.get_settings(), context.get_db()

CACHE_SECONDS = 30


@st.cache_data(ttl=CACHE_SECONDS, show_spinner="Counting…", max_entries=32)
def _overview(url: str, actor_id: int, period: str) -> tuple[dashboard.Overview, bool]:
    """The overview and whether a retrain process runs now, shared by admins' reruns for a few seconds (the
    page re-checks the role first). A watcher killed mid-run leaves its run "running" and no process."""
    with db.read() as session:
        ov = dashboard.overview(session, settings, actor=actor, period=PERIODS[period])
    return ov, retrain.run_alive(db)


st.title("Campaign overview")
left, right = st.columns([3, 1], vertical_alignment="bottom")
period = left.selectbox("Period", list(PERIODS), key="overview_period")
if right.button("Refresh", key="overview_refresh", icon=":material/refresh:"):
    _overview.clear()
with context.stop_on_errors():
    ov, run_alive = _overview(settings.sqlalchemy_url, actor.id, period)
st.caption(f"As of {context.shown_time(ov.now, '%Y-%m-%d %H:%M:%S')} (figures are kept for {CACHE_SECONDS} s; Refresh recounts).")
if not ov.comparisons:  # a new campaign: where a new admin lands, with every figure 0
    st.info("Nothing to annotate yet: import prompts and responses on the Import page"
            + ("." if ov.annotator_accounts else ", then add annotators on the Users page."),
            icon=":material/upload_file:")


def _browser_clock(t) -> alt.DateTime:
    """A wall-clock time of the browser's zone as Vega-Lite reads a DateTime without ``utc``: in the
    viewer's zone, which is the browser's (the data are UTC instants, drawn in that zone too)."""
    return alt.DateTime(year=t.year, month=t.month, date=t.day, hours=t.hour, minutes=t.minute)


def _duration(ms: float | None) -> str:
    return "—" if ms is None else f"{ms / 1000:.1f} s"


row = context.metric_row()
row.metric("Prompts", f"{ov.prompts:,}")
row.metric("Comparisons", f"{ov.comparisons:,}")
probes = ov.judgments - ov.counted_judgments - ov.imported_judgments
row.metric("Judgments", f"{ov.judgments:,}",
           help=f"Live judgments: {ov.counted_judgments:,} by annotators, {ov.imported_judgments:,} imported from "
                f"files' known winners and {counted(probes, 'self-consistency probe')}.")
row.metric("Open", f"{ov.open:,}")
row.metric("Complete", f"{ov.complete:,}")
if ov.retired:  # else Open + Complete fell short of Comparisons without a word
    st.caption(f"{counted(ov.retired, 'comparison')} retired on the Review page (not served, not trained on) "
               f"{'is' if ov.retired == 1 else 'are'} neither open nor complete.")
row = context.metric_row()
row.metric("Queue depth", f"{ov.queue_depth:,}", help="Open, non-gold comparisons that still need judgments.")
row.metric("Annotating now", ov.active_annotators,
              help=f"Accounts (admins too) that judged in the last {int(dashboard.ACTIVE_WINDOW.total_seconds() // 60)} "
                   "minutes or hold a pair right now: an admin who opens the Annotate page holds one.")
row.metric(f"Judgments ({period.lower()})", f"{ov.judgments_in_period:,}",
           help="Annotators' own judgments, probes included (imported ones are left out: they carry the time "
                "of the import).")
row.metric("Median time per judgment", _duration(ov.median_time_ms),
           help=f"{period}: annotators' own judgments, probes left out (as on the Annotators page).")
row.metric("Gold pairs", f"{ov.gold:,}")
if ov.imported_judgments:
    st.caption(f"**Judgments** includes {counted(ov.imported_judgments, 'imported judgment')} (files' known "
               f"winners); **Judgments ({period.lower()})** and the hourly chart count annotators' own only.")

if ov.progress is not None:
    st.progress(ov.progress, text=f"{ov.counted_judgments:,} of {counted(ov.target_judgments, 'judgment')} "
                                  f"({ov.progress:.0%} of the target)")
else:
    st.caption("No target set: set *target judgments* on the Settings page to track progress.")

st.subheader("Judgments per hour")
if ov.per_hour:
    # UTC instants (an aware column: the browser read naive ones as its own wall clock, which moved the
    # bars by its offset against the axis), drawn by Vega-Lite on the browser's clock, whose zone
    # st.context.timezone names. Counted per UTC hour: in a half-hour zone a bar starts at :30.
    frame = pd.DataFrame([(hour, hour + timedelta(hours=1), n) for hour, n in ov.per_hour],
                         columns=["hour", "end", "judgments"])
    hour_title = f"hour ({context.zone_label()})"
    # The whole period on the axis, to the end of the current hour: scaled to the data, one busy hour
    # filled the chart and its axis read "04:00, 04:00, 05:00" (half-hour ticks written as hours).
    end = context.local_time(ov.now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1))
    domain = [_browser_clock(end - PERIODS[period] - timedelta(hours=1)), _browser_clock(end)]
    unit = "yearmonthdatehoursminutes"
    chart = alt.Chart(frame).mark_bar().encode(
        # A bar spans its hour (x to x2): a minutes time unit alone drew hairlines.
        x=alt.X(f"{unit}(hour):T", title=hour_title, scale=alt.Scale(domain=domain)),
        x2=alt.X2(f"{unit}(end):T"),
        y=alt.Y("judgments:Q", title="judgments"), y2=alt.datum(0),
        tooltip=[alt.Tooltip(f"{unit}(hour):T", title=hour_title, format="%Y-%m-%d %H:%M"), "judgments:Q"])
    st.altair_chart(chart, width="stretch")
else:
    st.info("No judgments in this period.")

st.subheader("Reward model")
cols = context.metric_row()
model = ov.active_model
if model is None:
    cols.metric("Active model", "none yet")
else:
    cols.metric("Active model", f"v{model['id']}", help=f"encoder {model['encoder']}")
    cols.metric("Held-out accuracy", "—" if model["accuracy"] is None else f"{model['accuracy']:.3f}")
    cols.metric("Trained on", counted(model["n_train"], "label"))
cols.metric("Labels until next retrain", ov.labels_until_retrain,
               help=f"The watcher retrains after {counted(ov.retrain_every_labels, 'new judgment')}, or when the "
                    "retrain interval has passed and at least one arrived.")
if ov.last_run is not None:
    when = ov.last_run["finished_at"] or ov.last_run["started_at"]
    since = f"{counted(ov.labels_since_last_run, 'new judgment')} since."
    if ov.last_run["status"] == "running" and not run_alive:
        st.caption(f"Last training run #{ov.last_run['id']} stopped at step {ov.last_run['step']} without "
                   f"finishing (its process is gone: is `prefloop retrain --watch` still running?); the next run "
                   f"marks it failed. {since}")
    else:
        st.caption(f"Last training run #{ov.last_run['id']}: {ov.last_run['status']} "
                   f"at {context.shown_time(when)}. {since}")
# The watcher's own rule (annotate.retrain.check_due), the wait after failed runs included.
if ov.retrain_due:
    st.caption(f"Next retrain: due now ({ov.retrain_reason}), if `prefloop retrain --watch` runs.")
elif ov.next_retrain_at is not None:
    # Its time trigger needs a new judgment: say so only while none has arrived.
    st.caption(f"Next retrain: not before {context.shown_time(ov.next_retrain_at)} ({ov.retrain_reason}), "
               "if `prefloop retrain --watch` runs"
               + ("." if ov.labels_since_last_run else "; on time only once a new judgment arrives."))
elif ov.last_run is None:
    st.caption(f"No training run yet: the watcher trains the first model after "
               f"{counted(ov.retrain_every_labels, 'new judgment')}, or once the retrain interval has passed after it "
               "started and one arrived.")
else:
    st.caption(f"Next retrain: not yet ({ov.retrain_reason}).")
