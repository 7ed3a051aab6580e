"""prefloop's Streamlit entry point: the router and the frame around every page.

Run with ``streamlit run streamlit_app.py``. The pages live in
``annotate/ui/pages/``; which ones a session registers depends on the role
read from the database on every run (see ``annotate/ui/nav.py``).
"""

import streamlit as st

from annotate.ui import context, nav

# An emoji icon: the browser draws it from a data: URL. A ":material/...:" page icon makes every
# browser fetch the favicon from fonts.gstatic.com.
st.set_page_config(page_title="prefloop", page_icon="⚖️", layout="wide")

with context.stop_on_errors():
    context.get_settings()
    actor = context.refresh_actor()
# Logged out, every address is the login page (nav.pages_for): no menu of them.
page = st.navigation(nav.pages_for(actor), position="hidden" if actor is None else "sidebar")

if actor is not None:
    with st.sidebar:
        st.caption(f"Signed in as **{actor.username}** ({actor.role.value})")
        if st.button("Log out", key="logout", icon=":material/logout:"):
            context.give_back_pairs(actor)
            context.log_out()
            st.rerun()

page.run()
