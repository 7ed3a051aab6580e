"""The Streamlit UI: the only package (with ``streamlit_app.py``) that imports streamlit.

``context`` (shared resources, the logged-in actor, guards), ``nav`` (page
lists per role), ``render`` (untrusted text), ``pages/`` (one file per page).
Pages call service functions from :mod:`annotate`; no SQL and no torch here.
"""
