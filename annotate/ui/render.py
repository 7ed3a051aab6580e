"""Showing untrusted text (prompts and responses are model output) safely.

:func:`safe_markdown` is pure (no streamlit) so it can be unit-tested; the
``show_*`` helpers draw with it and never allow HTML.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import Any

# A fenced code block: an opening fence of 3+ backticks or tildes (up to three
# spaces of indent) to a closing fence of the same character at least as
# long, or to the end of the text (CommonMark closes an unclosed fence there).
_FENCE_OPEN = re.compile(r"^( {0,3})(`{3,}|~{3,})[^\n]*$", re.MULTILINE)
_INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)", re.DOTALL)
_DOLLAR = re.compile(r"(\\*)\$")
_IMAGE_OPEN = re.compile(r"!\[")
# A link reference definition "[label]: url" at the start of a line, possibly
# inside block quotes or list items.
_REF_DEF = re.compile(r"^([ \t>*+\-0-9.)]*)\[([^\]\n]*)\]:", re.MULTILINE)
_IMAGE_EXT = r"(?:png|jpe?g|gif|webp|svg|bmp|ico|avif|tiff?)"
# Autolinks "<https://host/x.png>" and bare URLs GFM would autolink, when
# they point at an image.
_IMAGE_URL = re.compile(
    rf"<?((?:https?://|www\.)[^\s<>`]*?\.{_IMAGE_EXT}(?:[?#][^\s<>`]*)?)>?(?=[\s).,;:!?'\"\]]|$)",
    re.IGNORECASE)


def _segments(text: str) -> Iterator[tuple[bool, str]]:
    """Split ``text`` into (is_code, chunk) pieces: fenced blocks and inline code spans are code."""
    pos = 0
    while pos < len(text):
        fence = _FENCE_OPEN.search(text, pos)
        end_of_prose = fence.start() if fence else len(text)
        yield from _inline_segments(text[pos:end_of_prose])
        if fence is None:
            return
        char, length = fence.group(2)[0], len(fence.group(2))
        closing = re.compile(rf"^ {{0,3}}{re.escape(char)}{{{length},}}[ \t]*$", re.MULTILINE)
        close = closing.search(text, fence.end())
        block_end = close.end() if close else len(text)
        yield True, text[fence.start():block_end]
        pos = block_end


def _inline_segments(prose: str) -> Iterator[tuple[bool, str]]:
    pos = 0
    for match in _INLINE_CODE.finditer(prose):
        if match.start() > pos:
            yield False, prose[pos:match.start()]
        yield True, match.group(0)
        pos = match.end()
    if pos < len(prose):
        yield False, prose[pos:]


def _escape_dollar(match: re.Match) -> str:
    slashes = match.group(1)
    # An odd number of backslashes already escapes the "$".
    return slashes + ("" if len(slashes) % 2 else "\\") + "$"


def _escape_prose(prose: str) -> str:
    prose = prose.replace("<", "&lt;")
    prose = _IMAGE_OPEN.sub(r"!\\[", prose)
    prose = _REF_DEF.sub(lambda m: f"{m.group(1)}\\[{m.group(2)}]:", prose)
    return _DOLLAR.sub(_escape_dollar, prose)


def _neutralise(prose: str) -> str:
    out, pos = [], 0
    for match in _IMAGE_URL.finditer(prose):
        out.append(_escape_prose(prose[pos:match.start()]))
        out.append(f"`{match.group(1)}`")
        pos = match.end()
    out.append(_escape_prose(prose[pos:]))
    return "".join(out)


def safe_markdown(text: str) -> str:
    """Markdown for untrusted ``text`` that fetches nothing and runs nothing.

    Outside code: image syntax (inline, reference-style, shortcut) is shown as
    literal text, link reference definitions are disabled, URLs of images
    (bare or ``<autolinked>``) are shown as code instead of links, ``<`` is
    escaped so HTML is inert text, and ``$`` is escaped so no LaTeX is
    rendered. Fenced blocks and inline code spans are kept exactly as they are.
    Render the result with ``unsafe_allow_html=False``.
    """
    return "".join(chunk if is_code else _neutralise(chunk) for is_code, chunk in _segments(text or ""))


# --------------------------------------------------------------------------- drawing

RESPONSE_HEIGHT = 420
PROMPT_HEIGHT = 320
_LONG_PROMPT_CHARS = 1200
_CHAT_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "ai": "assistant"}


def show_text(text: str, *, height: int | None = None) -> None:
    """Untrusted markdown in a bordered box, fixed-height and scrollable when ``height`` is given."""
    import streamlit as st

    box = st.container(height=height or "content", border=True)
    box.markdown(safe_markdown(text), unsafe_allow_html=False)


def show_prompt(prompt_text: str | None, prompt_messages: Sequence[dict[str, Any]] | None) -> None:
    """A prompt: one ``st.chat_message`` per turn for chats, else plain (safe) markdown."""
    import streamlit as st

    if prompt_messages is None:
        text = prompt_text or ""
        if len(text) > _LONG_PROMPT_CHARS:
            show_text(text, height=PROMPT_HEIGHT)
        else:
            st.markdown(safe_markdown(text), unsafe_allow_html=False)
        return
    total = sum(len(str(m.get("content", ""))) for m in prompt_messages)
    box = st.container(height=PROMPT_HEIGHT * 2 if total > _LONG_PROMPT_CHARS else "content", border=False)
    with box:
        for message in prompt_messages:
            role = str(message.get("role", "user"))
            name = _CHAT_ROLES.get(role.lower(), "user")
            with st.chat_message(name):
                if name == "user" and role.lower() not in ("user", "human"):
                    st.caption(role)
                st.markdown(safe_markdown(str(message.get("content", ""))), unsafe_allow_html=False)
