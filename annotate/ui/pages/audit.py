"""Admin: the audit log — who imported, exported, changed settings, users or gold pairs, and when."""

import json

import pandas as pd
import streamlit as st

from annotate import dashboard
from annotate.ui import context

actor = context.require_admin_page()
db = context.get_db()

st.title("Audit log")
with context.stop_on_errors():
    with db.read() as session:
        actions = dashboard.audit_actions(session, actor=actor)

c1, c2, c3 = st.columns(3)
action = c1.selectbox("Action", ["All"] + actions, key="audit_action")
username = c2.text_input("Admin", key="audit_user", placeholder="any").strip() or None
limit = c3.number_input("Rows", min_value=10, max_value=1000, value=200, step=50, key="audit_limit")
with db.read() as session:
    rows = dashboard.audit_log(session, actor=actor, limit=int(limit), username=username,
                               action=None if action == "All" else action)
st.metric("Events shown", len(rows))
if rows:
    st.dataframe(pd.DataFrame(context.local_rows([
                     {"id": r.id, "when": r.created_at, "admin": r.actor or "(system)", "action": r.action,
                      "detail": json.dumps(r.detail, default=str)} for r in rows])),
                 hide_index=True, key="audit_table")
    context.times_caption()
else:
    st.info("No admin actions recorded yet." if action == "All" and not username else "No matching events.")
