"""Admin: import prompts, responses and comparisons.

The file is parsed and validated first (a preview, the count of its problems and the first of them are
shown); nothing is written until the admin presses Import. Messages quote the
file (its name, CSV header, values), so they go through ``render.safe_markdown``.
"""

import hashlib
from datetime import datetime, timezone

import streamlit as st
from sqlalchemy.exc import OperationalError

from annotate import campaign, dashboard, ingest
from annotate.errors import ImportValidationError, PrefloopError
from annotate.models import utcnow
from annotate.settings import MAX_OVERLAP
from annotate.ui import context, render
from annotate.ui.render import safe_markdown

PARSED_KEY = "import_parsed"  # what the page shows of the chosen file, not the file or its parsed rows
IMPORTED_KEY = "import_done"
IMPORTING_KEY = "import_running"
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
PROBLEMS_LISTED = min(1000, ingest.MAX_PROBLEMS_KEPT)  # ingest keeps the first 1,000 and counts the rest
PREVIEW_ROWS = 20
KNOWN_WINNER = {
    "judgment": "store as imported judgments",
    "gold": "make the pairs gold (known answer)",
    "ignore": "ignore them",
}

OPTION_KEYS = ("import_tag", "import_known_winner", "import_overlap")

actor = context.require_admin_page()
settings, db = context.get_settings(), context.get_db()

st.title("Import")
st.caption(f"Formats: {ingest.FORMAT_HELP}. JSON Lines (.jsonl, .jsonl.gz), JSON arrays or CSV; "
           f"up to {settings.max_upload_mb} MB.")

upload = st.file_uploader("Data file", type=["jsonl", "gz", "json", "csv"], key="import_file")
if upload is None:
    st.session_state.pop(PARSED_KEY, None)
    st.session_state.pop(IMPORTING_KEY, None)  # choosing the file again retries an import that never finished
    st.stop()


def summarise(data: bytes, digest: str) -> dict:
    """What the page needs of a file until Import is pressed: counts and the first rows, not the parsed file
    (every comparison's texts, several times the file's size), which is never built. Import reads the upload
    again."""
    parsed = ingest.parse_file(data, filename=upload.name, max_text_chars=settings.max_text_chars,
                               max_bytes=settings.max_upload_mb * 2**20, keep_first=PREVIEW_ROWS)
    # Pairs another file (or this one) imported before: without the count the preview promised every pair
    # and the import then added fewer, "already present".
    with context.stop_on_errors(), db.read() as session:
        present = ingest.count_present(session, parsed.pair_keys)
    return {"present": present, "digest": digest, "format": parsed.format, "rows": parsed.rows, "comparisons": parsed.comparison_count,
            "known": parsed.known_count, "votes": parsed.votes, "notes": parsed.notes,
            "problems": parsed.problem_count, "problem_rows": parsed.problems[:PROBLEMS_LISTED],
            "stopped_at": parsed.stopped_at,
            "preview": parsed.preview(PREVIEW_ROWS)}


def show_problems(exc: ImportValidationError) -> None:
    """The first problems of a refused file, and how many are not listed (ingest keeps the first 1,000 of a
    file's problems, however many it has)."""
    listed = exc.problems[:PROBLEMS_LISTED]
    if exc.count > len(listed):
        at_least = "At least " if exc.count >= ingest.MAX_PROBLEMS_COUNTED else ""
        st.caption(f"{at_least}{ingest.counted(exc.count, 'problem')} in all; the first {len(listed):,} are listed.")
    st.dataframe([{"line": line, "problem": render.plain(reason)} for line, reason in listed], hide_index=True)


# Streamlit keeps the upload while the widget holds it; the session keeps only this summary of it.
summary = st.session_state.get(PARSED_KEY)
if summary is None or summary["file_id"] != upload.file_id:
    data = upload.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    if summary is None or summary["digest"] != digest:
        # Another file: its options start from the defaults. A source tag typed for the last file
        # was kept and silently replaced the new file's own tags.
        for key in OPTION_KEYS:
            st.session_state.pop(key, None)
        try:
            summary = summarise(data, digest)
        except ImportValidationError as exc:
            st.error(safe_markdown(str(exc)))
            if exc.problems:
                show_problems(exc)
            st.stop()
        except PrefloopError as exc:
            st.error(safe_markdown(str(exc)))
            st.stop()
    st.session_state[PARSED_KEY] = summary = {**summary, "file_id": upload.file_id}
digest = summary["digest"]

st.subheader("Preview")
present = (f" ({summary['present']:,} already here when the file was read)" if summary["present"] else "")
st.write(f"Format **{summary['format']}** · {ingest.counted(summary['rows'], 'row')} · "
         f"{ingest.counted(summary['comparisons'], 'comparison')}{present}")
for note in summary["notes"]:
    st.info(safe_markdown(note))
if summary["problems"]:
    stopped = summary.get("stopped_at")  # reading stops at ingest.MAX_PROBLEMS_COUNTED: then 'at least'
    st.error(f"{'At least ' if stopped is not None else ''}{ingest.counted(summary['problems'], 'problem')} found"
             f"{f' (reading stopped at line {stopped:,})' if stopped is not None else ''}; nothing can be imported "
             "until the file is fixed.")
    if summary["problems"] > len(summary["problem_rows"]):
        st.caption(f"The first {len(summary['problem_rows']):,} are listed.")
    st.dataframe([{"line": line, "problem": render.plain(reason)} for line, reason in summary["problem_rows"]],
                 hide_index=True)
# The file's texts, shown as the Review page shows them: a right-to-left override reversed the preview's text.
st.dataframe(render.plain_rows(summary["preview"]), hide_index=True)

st.subheader("Options")
with db.read() as session:
    saved_options = campaign.get_options(session, settings)
default_overlap = saved_options.overlap
left, middle, right = st.columns(3)
source_tag = left.text_input("Source tag (optional, overrides the file's)", key="import_tag", max_chars=128)
known_winner = middle.selectbox("Known outcomes in the file", list(KNOWN_WINNER), format_func=KNOWN_WINNER.get,
                                key="import_known_winner")
overlap = right.number_input("Judgments needed per pair (overlap)", min_value=1, max_value=MAX_OVERLAP,
                             value=default_overlap, step=1, key="import_overlap")
if overlap > 1:
    with db.read() as session:
        for note in ingest.overlap_notes(session, int(overlap), saved_options.max_overlap):
            st.warning(note, icon=":material/group:")
# The file this session is importing or imported last. A second press (a double click on a file that
# takes half a minute) started a second run while the first was still importing, which imported the
# whole file again, holding the database's write lock again, to add nothing.
# With the options: the same file again with others can still add (known winners ignored the first time).
token = (digest, known_winner, int(overlap))
imported = st.session_state.get(IMPORTED_KEY)
done = imported[1] if imported is not None and imported[0] == token else None
running = st.session_state.get(IMPORTING_KEY)
importing = running is not None and running[0] == token
if importing and done is None:
    # The run that imports is not the one on screen, and what it remembers may not reach this session:
    # the database says whether its import finished.
    with context.stop_on_errors(), db.read() as session:
        batch = dashboard.import_of(session, actor=actor, file_hash=digest, since=running[1])
    if batch is not None:
        done = (f"Imported as batch {batch['id']} at {context.shown_time(batch['created_at'], '%H:%M:%S')} "
                "(its counts are in the Audit log).")
        st.session_state[IMPORTED_KEY] = (token, done)
        st.session_state.pop(IMPORTING_KEY, None)
        importing = False
earlier = None
if done is None and not importing:
    # Imported before, from the command line or another session: nothing on the page said so, and the
    # known-winner note below warned about pairs this file can no longer add.
    with context.stop_on_errors(), db.read() as session:
        earlier = dashboard.import_of(session, actor=actor, file_hash=digest, since=EPOCH)
n_known = summary["known"]
if earlier is not None:
    # Not "adds nothing, whatever the options": known winners imported before as nothing (ignored) became
    # judgments on a second import, and every pair they completed left annotators' queue without a word.
    again = {"judgment": " Its known winners that are not imported judgments yet become ones, and pairs they "
                         "give all the judgments they need leave annotators' queue.",
             "gold": " Known winners of pairs already here do not become gold answers.",
             "ignore": ""}[known_winner] if n_known else ""
    st.info(safe_markdown(
        f"This file was imported before (last as batch {earlier['id']}, {earlier['filename']}, at "
        f"{context.shown_time(earlier['created_at'])}; its counts are in the Audit log): its pairs are already "
        f"here, so importing it again adds no pairs.{again}"
        + (f" Its pairs that need fewer than {int(overlap)} judgments are raised to {int(overlap)} (back in the "
           "queue where they have fewer)." if overlap > 1 else "")), icon=":material/content_copy:")
# Pairs whose imported votes meet the overlap, as the import counts them: one per rater ('annotator'), and a
# pair the raters split evenly asks for one more judgment (up to the maximum overlap). Before, this was said
# only at overlap 1, and three raters' pairs imported at overlap 3 were all complete without a word.
top = max(int(overlap), saved_options.max_overlap)
met = [(v, n) for (v, settled), n in summary["votes"].items() if v >= overlap and (settled or v >= top)]
if done is None and earlier is None and met and known_winner == "judgment":
    # An imported judgment counts towards overlap: without this note the queue silently stays as it was.
    most = max(v for v, _ in met)
    have = ("have a known winner. Stored as an imported judgment, it meets" if most == 1 else
            f"have as many known answers (up to {most}, one per rater) as overlap {int(overlap)} asks for. "
            "Stored as imported judgments, they meet")
    st.info(f"{sum(n for _, n in met):,} of the {summary['comparisons']:,} comparisons {have} overlap {int(overlap)}, "
            "so annotators will not see those pairs. To have them judged, choose *ignore them* or *make the "
            f"pairs gold*, or an overlap above {most}, before importing (afterwards, importing the file again "
            "with a higher overlap puts them back in the queue).", icon=":material/info:")

pressed = st.button("Import", type="primary", disabled=bool(summary["problems"]) or done is not None or importing,
                    key="import_go", icon=":material/upload:")
if done is not None:
    st.success(done, icon=":material/check:")
    st.caption("This file is imported with these options; importing it again with them would add nothing. "
               "Choose another file to import more, or other options for this one.")
elif importing:
    # Streamlit shows this second run, not the one importing, whose summary and rerun are dropped.
    st.info("This file is being imported by your earlier press. Press Refresh for the result (or remove the "
            "file and choose it again if that import failed).", icon=":material/hourglass_top:")
    st.button("Refresh", key="import_refresh", icon=":material/refresh:")
elif pressed:
    st.session_state[IMPORTING_KEY] = (token, utcnow())
    try:
        with st.spinner("Importing..."):
            # Read outside the write unit of work: it holds this process's gate for SQLite writers, and the
            # database's write lock from its first statement, so every annotator's save would wait on the read.
            prepared = ingest.prepare_import(settings, upload.getvalue(), filename=upload.name,
                                             source_tag=source_tag.strip() or None, known_winner=known_winner)
            with db.begin() as session:
                report = ingest.import_file(session, settings, prepared, actor=actor, overlap=int(overlap))
        st.session_state[IMPORTED_KEY] = (token, safe_markdown(report.summary()))
    except ImportValidationError as exc:
        st.error(safe_markdown(str(exc)))
        show_problems(exc)
    except PrefloopError as exc:
        st.error(safe_markdown(str(exc)))
    except OperationalError:  # locked past the busy timeout, or unreachable: the transaction wrote nothing
        st.error(context.NOT_SAVED)
    finally:
        st.session_state.pop(IMPORTING_KEY, None)
    if st.session_state.get(IMPORTED_KEY, (None,))[0] == token:
        st.rerun()  # shows the summary under a disabled Import button
