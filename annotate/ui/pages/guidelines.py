"""The annotation guidelines; admins can edit them here.

Shown through ``render.safe_markdown``: every annotator's browser reads them, so an image or
HTML in them (pasted from elsewhere, or written by a careless admin) must fetch and run nothing.
"""

import streamlit as st

from annotate import campaign
from annotate.ui import context
from annotate.ui.render import safe_markdown

actor = context.require_login()
settings, db = context.get_settings(), context.get_db()

with context.stop_on_errors():
    with db.read() as session:
        guidelines = campaign.get_options(session, settings).guidelines

st.title("Guidelines")
for message in st.session_state.pop("guidelines_flash", []):
    st.toast(message, icon=":material/check:")
st.markdown(safe_markdown(guidelines), unsafe_allow_html=False)

if actor.is_admin:
    st.divider()
    with st.expander("Edit the guidelines (admin)", icon=":material/edit:"):
        with st.form("edit_guidelines"):
            text = st.text_area("Markdown", value=guidelines, height=400, key="guidelines_text")
            save = st.form_submit_button("Save guidelines", type="primary")
        if save:
            context.run_action(lambda session: campaign.update_options(session, settings, actor=actor,
                                                                       guidelines=text),
                               "Guidelines saved.", flash_key="guidelines_flash")
