"""Admin: import prompts, responses and comparisons.

The file is parsed and validated first (a preview and every problem are
shown); nothing is written until the admin presses Import. Messages quote the
file (its name, CSV header, values), so they go through ``render.safe_markdown``.
"""

import hashlib

import streamlit as st
from sqlalchemy.exc import OperationalError

from annotate import campaign, ingest
from annotate.errors import ImportValidationError, PrefloopError
from annotate.settings import MAX_OVERLAP
from annotate.ui import context
from annotate.ui.render import safe_markdown

PARSED_KEY = "import_parsed"
IMPORTED_KEY = "import_done"
KNOWN_WINNER = {
    "judgment": "store as imported judgments",
    "gold": "make the pairs gold (known answer)",
    "ignore": "ignore them",
}

actor = context.require_admin_page()
settings, db = context.get_settings(), context.get_db()

st.title("Import")
st.caption(f"Formats: {ingest.FORMAT_HELP}. JSON Lines (.jsonl, .jsonl.gz), JSON arrays or CSV; "
           f"up to {settings.max_upload_mb} MB.")

upload = st.file_uploader("Data file", type=["jsonl", "gz", "json", "csv"], key="import_file")
if upload is None:
    st.session_state.pop(PARSED_KEY, None)
    st.stop()

data = upload.getvalue()
digest = hashlib.sha256(data).hexdigest()
cached = st.session_state.get(PARSED_KEY)
if cached is None or cached[0] != digest:
    try:
        parsed = ingest.parse_file(data, filename=upload.name, max_text_chars=settings.max_text_chars,
                                   max_bytes=settings.max_upload_mb * 2**20)
    except ImportValidationError as exc:
        st.error(safe_markdown(str(exc)))
        if exc.problems:
            st.dataframe([{"line": line, "problem": reason} for line, reason in exc.problems], hide_index=True)
        st.stop()
    except PrefloopError as exc:
        st.error(safe_markdown(str(exc)))
        st.stop()
    st.session_state[PARSED_KEY] = cached = (digest, parsed)
parsed = cached[1]

st.subheader("Preview")
st.write(f"Format **{parsed.format}** · {ingest.counted(parsed.rows, 'row')} · "
         f"{ingest.counted(len(parsed.comparisons), 'comparison')}")
for note in parsed.notes:
    st.info(safe_markdown(note))
if parsed.problems:
    st.error(f"{ingest.counted(len(parsed.problems), 'problem')} found; nothing can be imported until the file "
             "is fixed.")
    st.dataframe([{"line": line, "problem": reason} for line, reason in parsed.problems],
                 hide_index=True)
st.dataframe(parsed.preview(20), hide_index=True)

st.subheader("Options")
with db.read() as session:
    default_overlap = campaign.get_options(session, settings).overlap
left, middle, right = st.columns(3)
source_tag = left.text_input("Source tag (optional, overrides the file's)", key="import_tag", max_chars=128)
known_winner = middle.selectbox("Known outcomes in the file", list(KNOWN_WINNER), format_func=KNOWN_WINNER.get,
                                key="import_known_winner")
overlap = right.number_input("Judgments needed per pair (overlap)", min_value=1, max_value=MAX_OVERLAP,
                             value=default_overlap, step=1, key="import_overlap")
# The file this session imported last: a second press (a double click on a file that takes half a
# minute) ran the whole import again, holding the database's write lock again, to add nothing.
imported = st.session_state.get(IMPORTED_KEY)
done = imported[1] if imported is not None and imported[0] == digest else None
n_known = sum(c.winner is not None for c in parsed.comparisons)
if done is None and n_known and known_winner == "judgment" and overlap <= 1:
    # An imported judgment counts towards overlap: without this note the queue silently stays as it was.
    st.info(f"{n_known:,} of the {len(parsed.comparisons):,} comparisons have a known winner. Stored as an imported "
            "judgment, it meets overlap 1, so annotators will not see those pairs. To have them judged, choose "
            "*ignore them* or *make the pairs gold*, or raise the overlap, before importing: importing the same "
            "pairs again adds nothing.", icon=":material/info:")

pressed = st.button("Import", type="primary", disabled=bool(parsed.problems) or done is not None, key="import_go",
                    icon=":material/upload:")
if done is not None:
    st.success(done, icon=":material/check:")
    st.caption("This file is imported; importing it again would add nothing. Choose another file to import more.")
elif pressed:
    try:
        with st.spinner("Importing..."), db.begin() as session:
            report = ingest.import_file(session, settings, data, filename=upload.name, actor=actor,
                                        source_tag=source_tag.strip() or None, known_winner=known_winner,
                                        overlap=int(overlap))
    except ImportValidationError as exc:
        st.error(safe_markdown(str(exc)))
        st.dataframe([{"line": line, "problem": reason} for line, reason in exc.problems], hide_index=True)
    except PrefloopError as exc:
        st.error(safe_markdown(str(exc)))
    except OperationalError:  # locked past the busy timeout, or unreachable: the transaction wrote nothing
        st.error(context.NOT_SAVED)
    else:
        st.session_state[IMPORTED_KEY] = (digest, safe_markdown(report.summary()))
        st.rerun()  # shows the summary under a disabled Import button
