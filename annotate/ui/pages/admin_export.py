"""Admin: download preferences (TRL JSONL / Parquet) and raw judgments (CSV / JSONL / Parquet).

Files are built only when a download button is pressed (deferred data), so
opening the page neither runs an export nor writes an audit event. Streamlit
keeps each built file in the server's memory to serve it. Such a click reruns
no script, so no idle check either: ``context.deferred_download`` makes it
itself and refuses a session idle past the limit (its next run logs it out).
"""

from datetime import datetime, time, timezone

import streamlit as st

from annotate import accounts, export
from annotate.settings import MAX_OVERLAP
from annotate.ui import context, render

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
    raters = export.imported_raters(session)

# A form: filters take effect when applied, not when a box loses focus. Outside a form, typing a tag and
# clicking a download button straight away sent both at once: the rerun the typed tag started replaced the
# button's deferred file while the click fetched it, so the click downloaded the file of the old filters
# (its audit entry saying so, a second entry for a file that never arrived) or nothing at all.
with st.expander("Filters", expanded=True, icon=":material/filter_alt:"), \
        st.form("export_filters", border=False, enter_to_submit=True):
    c1, c2 = st.columns(2)
    since = c1.date_input("Judged on or after (UTC)", value=None, key="export_since")
    until = c2.date_input("As the votes stood before (UTC)", value=None, key="export_until",
                          help="Preferences: each vote as it stood just before this day (later revisions "
                               "and undos are not applied). Raw judgments: rows made before this day.")
    annotators = c1.multiselect("Annotators (empty: everyone, and imported judgments)", usernames,
                                key="export_annotators")
    # The raters imported rows named are not accounts: before, only the raw export's column told them apart.
    chosen_raters = c1.multiselect("Imported raters (with annotators chosen, both count)", raters,
                                   key="export_raters") if raters else []
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
    st.form_submit_button("Apply filters", icon=":material/filter_alt:", key="export_apply",
                          help="The downloads below use the filters as last applied (Enter in a box applies too).")


def _instant(day):
    return datetime.combine(day, time.min, tzinfo=timezone.utc) if day else None


if since and until and until <= since:
    st.error("The end date must be after the start date.")
    st.stop()
if chosen_raters and not include_imported:
    st.error("Imported raters are chosen, but imported judgments are not counted: tick *Count imported judgments* "
             "or choose no rater.")
    st.stop()

filters = export.ExportFilter(
    since=_instant(since), until=_instant(until), annotators=tuple(annotators), raters=tuple(chosen_raters),
    source_tags=tuple(t.strip() for t in tags_text.split(",") if t.strip()),
    include_ties=include_ties, include_both_bad=include_both_bad, exclude_gold=exclude_gold,
    min_agreement=float(min_agreement), min_votes=int(min_votes), include_imported=include_imported)


def _applied(f: export.ExportFilter, with_margin: bool) -> str:
    """The filters the downloads use, in a line (they are the form's as last applied, not as being edited)."""
    parts = []
    if f.since or f.until:
        parts.append("judged " + " and ".join(
            x for x in (f.since and f"on or after {f.since:%Y-%m-%d}", f.until and f"before {f.until:%Y-%m-%d}")
            if x) + " (UTC)")
    if f.annotators:
        parts.append("annotators " + ", ".join(f.annotators))
    if f.raters:
        parts.append("imported raters " + ", ".join(f.raters))
    if f.source_tags:
        parts.append("tags " + ", ".join(f.source_tags))
    if f.min_agreement > 0:
        parts.append(f"agreement at least {f.min_agreement:.2f}")
    if f.min_votes > 1:
        parts.append(f"at least {f.min_votes} votes")
    parts += [label for on, label in ((f.include_ties, "with ties"), (f.include_both_bad, "with both-bad"),
                                       (f.exclude_gold, "without gold pairs"),
                                       (not f.include_imported, "without imported judgments"),
                                       (with_margin, "with a margin column")) if on]
    return "; ".join(parts) if parts else "none (everything)"


# Tags are typed text: shown through safe_markdown like any other text the page did not write.
st.caption(":material/filter_alt: Filters applied to the downloads: "
           + render.safe_markdown(_applied(filters, margin)) + ".")


def _preferences(fmt: str):
    # export.download reads one snapshot without SQLite's write lock: annotators keep judging meanwhile.
    def build() -> bytes:
        return export.download(db, actor=actor, kind="preferences", format=fmt, filters=filters, margin=margin)
    return context.deferred_download(build, failures)


def _judgments(fmt: str):
    def build() -> bytes:
        return export.download(db, actor=actor, kind="judgments", format=fmt, filters=filters)
    return context.deferred_download(build, failures)


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
                    on_click="ignore",
                    help="datasets' JSON loader types each column from a file's first 10 MB: a larger export "
                         "whose early rows leave a column empty (imported judgments have no annotator or "
                         "strength) will not load there. Parquet's columns are typed.")
row.download_button("Judgments Parquet (datasets)", _judgments("parquet"), file_name=f"judgments-{stamp}.parquet",
                    mime="application/vnd.apache.parquet", key="dl_judgments_parquet", icon=":material/download:",
                    on_click="ignore")
