"""The page lists per role: the one place to add a page.

Annotators' sessions never register admin pages (their addresses show a hidden page saying they are for
admins). Admin pages must still call
:func:`annotate.ui.context.require_admin_page` themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import streamlit as st

from annotate.accounts import Actor

PAGES_DIR = Path(__file__).resolve().parent / "pages"


@dataclass(frozen=True)
class PageSpec:
    file: str
    """File name under ``annotate/ui/pages/``."""
    title: str
    icon: str
    default: bool = False

    @property
    def path(self) -> Path:
        return PAGES_DIR / self.file


LOGIN_PAGE = PageSpec("login.py", "Log in", ":material/login:", default=True)
ANNOTATOR_PAGES: tuple[PageSpec, ...] = (
    PageSpec("annotate.py", "Annotate", ":material/compare_arrows:", default=True),
    PageSpec("guidelines.py", "Guidelines", ":material/menu_book:"),
)
ADMIN_PAGES: tuple[PageSpec, ...] = (  # where an admin lands first, then in the order a campaign needs them
    PageSpec("overview.py", "Overview", ":material/dashboard:"),
    PageSpec("admin_import.py", "Import", ":material/upload_file:"),
    PageSpec("admin_users.py", "Users", ":material/group:"),
    PageSpec("annotators.py", "Annotators", ":material/groups:"),
    PageSpec("review.py", "Review", ":material/rate_review:"),
    PageSpec("models.py", "Reward model", ":material/model_training:"),
    PageSpec("model_health.py", "Model health", ":material/monitor_heart:"),
    PageSpec("admin_export.py", "Export", ":material/download:"),
    PageSpec("settings.py", "Settings", ":material/settings:"),
    PageSpec("audit.py", "Audit log", ":material/history:"),
)
ADMIN_HOME = "overview.py"
"""Where an admin lands after logging in."""


def _page(spec: PageSpec) -> st.Page:
    return st.Page(spec.path, title=spec.title, icon=spec.icon, default=spec.default)


def _login_at(spec: PageSpec) -> st.Page:
    """The login page at ``spec``'s address, so that a page reloaded (F5 starts a logged-out session) or
    opened from a link or bookmark asks to log in, then opens there. With the login page alone, Streamlit
    said "Page not found" over it and the admin landed on the overview. No other page's code is registered."""
    return st.Page(LOGIN_PAGE.path, title=LOGIN_PAGE.title, icon=LOGIN_PAGE.icon,
                   url_path=_page(replace(spec, default=False)).url_path)


def _admins_only_at(spec: PageSpec, actor: Actor) -> st.Page:
    """A hidden page at admin page ``spec``'s address for an annotator, saying that it is for admins.

    Without it, an annotator following an admin's link (or a bookmark from before a role change) got
    Streamlit's "Page not found" and then the annotation page, which leases a pair, and was not told why.
    Only this message runs there: the admin page's file is never registered for them."""
    def admins_only() -> None:
        st.title(spec.title)
        st.warning(f"**{spec.title}** is for admins. You are signed in as **{actor.username}**, "
                   f"an annotator: ask an admin if you need it.", icon=":material/lock:")
        st.page_link(str(PAGES_DIR / "annotate.py"), label="Go to Annotate", icon=":material/compare_arrows:")

    admins_only.__name__ = f"admins_only_{Path(spec.file).stem}"
    return st.Page(admins_only, title=spec.title, icon=spec.icon, visibility="hidden",
                   url_path=_page(replace(spec, default=False)).url_path)


def pages_for(actor: Actor | None) -> dict[str, list[st.Page]]:
    """The navigation for ``actor`` (whose role must come fresh from the database)."""
    if actor is None:
        return {"": [_page(LOGIN_PAGE), *(_login_at(s) for s in (*ANNOTATOR_PAGES, *ADMIN_PAGES))]}
    if not actor.is_admin:
        return {"Annotation": [*(_page(s) for s in ANNOTATOR_PAGES),
                               *(_admins_only_at(s, actor) for s in ADMIN_PAGES)]}
    # An admin lands on the overview: opening Annotate leases a pair (for the lease
    # time) and counts them as an active annotator, which logging in should not do.
    return {"Annotation": [_page(replace(s, default=False)) for s in ANNOTATOR_PAGES],
            "Admin": [_page(replace(s, default=s.file == ADMIN_HOME)) for s in ADMIN_PAGES]}
