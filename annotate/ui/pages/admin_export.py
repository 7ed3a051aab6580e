"""Admin: download preferences (TRL JSONL / Parquet) and raw judgments (CSV / JSONL / Parquet).

Files are built only when a download button is pressed (deferred data), so
opening the page neither runs an export nor writes an audit event. Streamlit
keeps each built file in the server's memory to serve it.
"""

from datetime import datetime, time, timezone

import streamlit as st

from annotate import accounts, export
from annotate.settings import MAX_OVERLAP
from annotate.ui import context

actor = context.require_admin_page()
db = context.get_db()

st.title("Export")
st.caption("A download is built on the server, whole and in its memory, after the click: a million raw "
           "judgments take minutes and gigabytes (Parquet is about a tenth of JSONL or CSV). For big exports, "
           "and for `datasets` folders, run `prefloop export` on the server: it streams to a file.")

# Downloads are built outside this script; a failure is reported here on the next run.
failures: list[str] = st.session_state.setdefault("export_failures", [])
for message in failures:
    st.error(f"The last download failed: {message}", icon=":material/error:")
failures.clear()

with db.read() as session:
    usernames = [user.username for user in accounts.list_users(session, actor=actor)]

with st.expander("Filters", expanded=True, icon=":material/filter_alt:"):
    c1, c2 = st.columns(2)
    since = c1.date_input("Judged on or after (UTC)", value=None, key="export_since")
    until = c2.date_input("As the votes stood before (UTC)", value=None, key="export_until",
                          help="Preferences: each vote as it stood just before this day (later revisions "
                               "and undos are not applied). Raw judgments: rows made before this day.")
    annotators = c1.multiselect("Annotators (empty: everyone, and imported judgments)", usernames,
                                key="export_annotators")
    tags_text = c2.text_input("Source tags (comma-separated; empty: all)", key="export_tags")
    min_agreement = c1.slider("Minimum agreement (majority share of votes)", 0.0, 1.0, 0.0, 0.05,
                              key="export_min_agreement")
    min_votes = c1.number_input("Minimum votes per pair", min_value=1, max_value=MAX_OVERLAP, value=1, step=1,
                                key="export_min_votes",
                                help="Preferences only: a pair judged once has agreement 1.0, so minimum "
                                     "agreement alone keeps it; 2 or more keeps pairs with that many votes.")
    # Short labels, the rest in help: a checkbox's label is cut off ("Add a margin column from st…") where
    # the column is narrow (half of an 800 px window), not wrapped.
    with c2:
        include_ties = st.checkbox("Include ties", key="export_ties", help="Adds an is_tie column.")
        include_both_bad = st.checkbox("Include both-bad", key="export_both_bad",
                                       help="Adds an is_both_bad column.")
        exclude_gold = st.checkbox("Exclude gold pairs", key="export_no_gold")
        include_imported = st.checkbox("Count imported judgments", value=True, key="export_imported")
        margin = st.checkbox("Add a margin column", key="export_margin",
                             help="Preferences only: the mean strength of the winning votes.")


def _instant(day):
    return datetime.combine(day, time.min, tzinfo=timezone.utc) if day else None


if since and until and until <= since:
    st.error("The end date must be after the start date.")
    st.stop()

filters = export.ExportFilter(
    since=_instant(since), until=_instant(until), annotators=tuple(annotators),
    source_tags=tuple(t.strip() for t in tags_text.split(",") if t.strip()),
    include_ties=include_ties, include_both_bad=include_both_bad, exclude_gold=exclude_gold,
    min_agreement=float(min_agreement), min_votes=int(min_votes), include_imported=include_imported)


def _preferences(fmt: str):
    # export.download reads one snapshot without SQLite's write lock: annotators keep judging meanwhile.
    def build() -> bytes:
        return export.download(db, actor=actor, kind="preferences", format=fmt, filters=filters, margin=margin)
    return context.remember_failures(build, failures)


def _judgments(fmt: str):
    def build() -> bytes:
        return export.download(db, actor=actor, kind="judgments", format=fmt, filters=filters)
    return context.remember_failures(build, failures)


stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M")
st.subheader("Preferences for TRL")
st.caption("One row per comparison with a majority winner: prompt, chosen, rejected (chat prompts as messages).")
# Buttons as wide as their labels, on more lines where the window is narrow: in equal columns
# "Judgments Parquet (datasets)" was cut off at 800 px.
row = st.container(horizontal=True)
row.download_button("TRL JSONL", _preferences("jsonl"), file_name=f"preferences-{stamp}.jsonl",
                    mime="application/jsonl", key="dl_pref_jsonl", icon=":material/download:", on_click="ignore")
row.download_button("Parquet (datasets)", _preferences("parquet"), file_name=f"preferences-{stamp}.parquet",
                    mime="application/vnd.apache.parquet", key="dl_pref_parquet", icon=":material/download:",
                    on_click="ignore")

st.subheader("Raw judgments")
st.caption("Every judgment with its annotator, canonical and shown choice, side, timing and state "
           "(retracted and superseded rows included).")
row = st.container(horizontal=True)
row.download_button("Judgments CSV", _judgments("csv"), file_name=f"judgments-{stamp}.csv", mime="text/csv",
                    key="dl_judgments_csv", icon=":material/download:", on_click="ignore")
row.download_button("Judgments JSONL", _judgments("jsonl"), file_name=f"judgments-{stamp}.jsonl",
                    mime="application/jsonl", key="dl_judgments_jsonl", icon=":material/download:",
                    on_click="ignore")
row.download_button("Judgments Parquet (datasets)", _judgments("parquet"), file_name=f"judgments-{stamp}.parquet",
                    mime="application/vnd.apache.parquet", key="dl_judgments_parquet", icon=":material/download:",
                    on_click="ignore")
