"""Showing untrusted text (prompts and responses are model output) safely.

:func:`safe_markdown` is pure (no streamlit) so it can be unit-tested; the
``show_*`` helpers draw with it and never allow HTML.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

# A fenced code block: an opening fence of 3+ backticks or tildes (up to three
# spaces of indent) to a closing fence of the same character at least as
# long, or to the end of the text (CommonMark closes an unclosed fence there).
# A backtick fence's info string may not contain a backtick (then it is not a fence).
_FENCE_OPEN = re.compile(r"^( {0,3})(`{3,}(?=[^`\n]*$)|~{3,})[^\n]*$", re.MULTILINE)
# An inline code span, kept to one line: a span may continue over lines in its
# paragraph, but where a paragraph ends is for the renderer to decide, and a
# span guessed across a blank line or a list item would leave prose unescaped.
# A run after a backslash is not taken as an opener (the backslash escapes its
# first backtick), so such text stays escaped prose.
_INLINE_CODE = re.compile(r"(?<![`\\])(`+)(?!`)(.+?)(?<!`)\1(?!`)")
_DOLLAR = re.compile(r"(?<!\\)(\\*)(\$)")  # from a run's start: a match tried inside a run rescanned it (quadratic)
# Streamlit's own Markdown extensions, which turn a colon into styling: a directive with a label or
# attributes (":green-background[Verified]", ":help[text only shown on hover]", ":x{a=b}", whose
# label an unknown name drops), and the bare names it styles (the "red" of "color:red" vanished
# into an empty red span). Escaped, the colon is shown as written.
_STYLE_NAMES = (r"(?:(?:red|orange|yellow|green|blue|violet|gray|grey|primary|rainbow)(?:-background|-badge)?"
                r"|small|shimmer|help|color)")
_DIRECTIVE = re.compile(rf"(?<!\\)(\\*)(:)(?=[A-Za-z][\w-]*[\[{{]|{_STYLE_NAMES}(?![\w-]))")
# ":material/check:" (an icon) and ":streamlit:" (an <img> of the logo) are replaced in the text
# after parsing, escaped or not: a zero-width space after the colon keeps them text.
_ICON_CODE = re.compile(r":(?=material[/_][\w-]+:|streamlit:)")
# An "&" that starts a character reference ("&lt;", "&#60;", "&#x3c;"), which Markdown would
# show as the character it names: escaped, "&lt;" is shown as written, like "<" itself.
_CHAR_REF = re.compile(r"&(?=#[0-9]{1,7};|#[xX][0-9a-fA-F]{1,6};|[A-Za-z][A-Za-z0-9]{0,31};)")
_ZWSP = "\u200b"
# ":smile:" and ":+1:" are drawn as emoji by Streamlit's remark-emoji (names are lowercase letters, digits,
# "_" and "-", plus "+1", "-1", "100" and "1234"; times such as "12:30:45" name none), whether escaped or not:
# a zero-width space after the colon keeps them text, as for icons. Not before "//": "x:https://" is a URL.
_EMOJI_CODE = re.compile(r":(?=(?=[0-9_-]{0,63}[a-z])[a-z0-9_-]{1,64}+:(?!//)|(?:100|1234|[+-]1):)")
# A "*" between two letters or digits ("2*3*4"), which CommonMark may take as emphasis ("2<em>3</em>4"):
# escaped, it is shown. Not next to scripts written without spaces (Chinese, Japanese, Thai, ...), where
# "这是**重要**的" is how bold is written. "_" needs nothing: CommonMark never opens emphasis inside a word.
_NO_SPACES_SCRIPTS = ("\u0e00-\u0eff\u1000-\u109f\u1780-\u17ff\u3000-\u9fff\uac00-\ud7af\uf900-\ufaff"
                      "\uff00-\uffef\U00020000-\U0003ffff")
_INTRAWORD_STAR = re.compile(rf"(?<=[^\W_])(?<![{_NO_SPACES_SCRIPTS}])\*+(?=[^\W_])(?![{_NO_SPACES_SCRIPTS}])")
# Characters that would make the annotator read something other than what the model wrote, shown as
# "⟨U+202E⟩" (angle brackets, not square ones, which could make a link): the bidi embeddings, overrides
# and isolates, which reorder the text after them ("\u202eRLO txt.exe" was drawn "exe.txt OLR"), and the
# invisible zero-width space, word joiner and byte order mark, which hide where a word is split.
# Left alone: ZWNJ and ZWJ (U+200C, U+200D; Persian and Indic words and emoji sequences need them) and
# the soft hyphen (U+00AD; it hides nothing, only allows a hyphen at a line wrap, and is common in text
# taken from hyphenated web pages). The direction marks (LRM U+200E, RLM U+200F, ALM U+061C) are
# ordinary in text that mixes Arabic or Hebrew with Latin script or numbers, but each acts as an
# invisible letter of its direction, and where it is the only one in its line it can reorder the line:
# "\u200fthe\u200f answer\u200f is\u200f five" was drawn "five is answer the", "\u200f1 2 3\u200f" as
# "3 2 1", and LRMs around Hebrew words swapped them. So a mark is shown in a line that has no letter of
# its own direction, and left alone in a line that has one (there it adds nothing the letters don't).
_SHOWN_CONTROLS = re.compile("[\u200b\u2060\ufeff\u202a-\u202e\u2066-\u2069]")
_DIRECTION_MARKS = re.compile("[\u200e\u200f\u061c]")
# Text hidden in invisible characters ("ASCII smuggling"): Unicode tag characters (U+E0000-E007F) mirror
# ASCII, and a language model reads "hello\U000e0069\U000e0067..." as "hello ig..." where a person sees
# "hello". A run is shown decoded, as "⟨hidden tag text: "ig"⟩", unless it is the tag sequence of a
# subdivision flag (U+1F3F4 then lowercase letters or digits and a cancel tag, as in the flag of
# Scotland), the one use emoji make of them. Variation selectors (U+FE00-FE0F, U+E0100-E01EF) choose a
# glyph for the one character before them (an emoji, an ideograph), so two in a row never mean anything
# and a run of them can carry bytes after any character: a run is shown as "⟨N variation selectors⟩", and so
# is a lone U+E0100-E01EF (ideographic variation sequences only) after anything but an ideograph.
_TAG_RUN = re.compile("(\U0001f3f4?)([\U000e0000-\U000e007f]+)")
_FLAG_TAGS = re.compile("[\U000e0030-\U000e0039\U000e0061-\U000e007a]{1,7}\U000e007f")
_SELECTOR_RUN = re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]{2,}"
                           "|(?<![\u3400-\u9fff\uf900-\ufaff\U00020000-\U0003ffff])[\U000e0100-\U000e01ef]")
_IMAGE_OPEN = re.compile(r"!\[")
# An image's alt text up to its "]": that bracket is escaped too, or in "[![badge](u)](link)" the outer "["
# and the inner "](u)" made a link reading "![badge" to the relative URL "u" (with the rest as loose text).
_IMAGE_ALT = re.compile(r"!\[([^\[\]\n]*)\]")
# A link reference definition "[label]: url" at the start of a line, possibly
# inside block quotes or list items.
_REF_DEF = re.compile(r"^([ \t>*+\-0-9.)]*)\[([^\]\n]*)\]:", re.MULTILINE)
_IMAGE_EXT = r"(?:png|jpe?g|gif|webp|svg|bmp|ico|avif|tiff?)"
# Autolinks "<https://host/x.png>" and bare URLs GFM would autolink, when
# they point at an image. A match never takes in brackets, parentheses or "!",
# so it cannot swallow the "![" of image syntax next to it. A match starts only
# where GFM starts an autolink (after whitespace, a delimiter or "*_~", not in
# the middle of a word) and a URL part is at most _MAX_URL characters: without
# both, text such as "www." repeated 12,500 times took 17 s (every "www." was
# a start scanning to the end of the text); a longer URL stays a plain link
# (never an image: every "![" is broken up regardless).
_MAX_URL = 512
# A bare URL and the text GFM's autolink would run on to (the next space, tab or line end: not a
# no-break space), wherever it starts: Streamlit's renderer links URLs after punctuation and in mid-word
# too ("href='https://...").
_LINK_RUN = re.compile(r"(?:https?(?=://)|www(?=\.))[^ \t\r\n]*", re.IGNORECASE)
_LINK_START = re.compile(r"(https?(?=://)|www(?=\.))", re.IGNORECASE)
_URL_CHARS = rf"[^\s<>`()\[\]!]{{0,{_MAX_URL}}}"
_IMAGE_URL = re.compile(
    rf"(?<![^\s<>`()\[\]!*_~])<?((?:https?://|www\.){_URL_CHARS}?\.{_IMAGE_EXT}(?:[?#]{_URL_CHARS})?)>?"
    rf"(?=[\s).,;:!?'\"\]]|$)",
    re.IGNORECASE)


_PROSE, _INLINE_CODE_SPAN, _CODE_BLOCK = "prose", "inline", "block"


def _segments(text: str) -> Iterator[tuple[str, str]]:
    """Split ``text`` into (kind, chunk) pieces: prose, inline code spans (never over a line end) and code blocks.

    Indented code blocks come back rewritten as fenced blocks (see ``_indented_segments``).
    """
    pos = 0
    while pos < len(text):
        fence = _FENCE_OPEN.search(text, pos)
        end_of_prose = fence.start() if fence else len(text)
        for is_code, chunk in _indented_segments(text[pos:end_of_prose]):
            if is_code:
                yield _CODE_BLOCK, chunk
            else:
                yield from _inline_segments(chunk)
        if fence is None:
            return
        char, length = fence.group(2)[0], len(fence.group(2))
        closing = re.compile(rf"^ {{0,3}}{re.escape(char)}{{{length},}}[ \t]*$", re.MULTILINE)
        close = closing.search(text, fence.end())
        block_end = close.end() if close else len(text)
        yield _CODE_BLOCK, text[fence.start():block_end]
        pos = block_end


_INDENTED = re.compile(r"^(?: {4}|\t)")
_LIST_ITEM = re.compile(r"^ {0,3}(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)")


def _indented_segments(prose: str) -> Iterator[tuple[bool, str]]:
    """Split out CommonMark indented code blocks, each rewritten as a fenced block.

    A block is a run of lines indented by four spaces or a tab (blank lines
    inside it allowed) that follows a blank line or the start of the prose and
    is not the continuation of a list item. The fenced rewrite renders the same
    as the indented block would, so code such as ``if a < b`` is shown as
    written instead of with escapes. Misjudging a list's indented paragraph as
    code only changes how it looks: code is never rendered as images or links.
    """
    lines = prose.splitlines(keepends=True)
    prose_lines: list[str] = []
    last_text = None  # the last non-blank line before the current one (None: only blanks so far)
    after_blank = True
    i = 0
    while i < len(lines):
        line = lines[i]
        blank = not line.strip()
        starts_code = (not blank and _INDENTED.match(line) and after_blank
                       and (last_text is None or not (_LIST_ITEM.match(last_text) or _INDENTED.match(last_text))))
        if not starts_code:
            prose_lines.append(line)
            if not blank:
                last_text = line
            after_blank = blank
            i += 1
            continue
        j = i
        while j < len(lines) and (not lines[j].strip() or _INDENTED.match(lines[j])):
            j += 1
        while j > i and not lines[j - 1].strip():  # trailing blank lines belong to the prose after
            j -= 1
        if prose_lines:
            yield False, "".join(prose_lines)
            prose_lines = []
        body = [ln[1:] if ln.startswith("\t") else ln[4:] for ln in lines[i:j]]
        code = "".join(body)
        ticks = max([3] + [len(run) + 1 for run in re.findall(r"`{3,}", code)])
        fence = "`" * ticks
        if code.endswith("\n"):
            yield True, f"{fence}\n{code}{fence}\n"
        else:  # the text ends inside the block
            yield True, f"{fence}\n{code}\n{fence}"
        last_text, after_blank = lines[j - 1], False
        i = j
    if prose_lines:
        yield False, "".join(prose_lines)


def _inline_segments(prose: str) -> Iterator[tuple[str, str]]:
    pos = 0
    for match in _INLINE_CODE.finditer(prose):
        if match.start() > pos:
            yield _PROSE, prose[pos:match.start()]
        yield _INLINE_CODE_SPAN, match.group(0)
        pos = match.end()
    if pos < len(prose):
        yield _PROSE, prose[pos:]


def _escape_unescaped(match: re.Match) -> str:
    slashes, char = match.groups()
    # An odd number of backslashes already escapes the character.
    return slashes + ("" if len(slashes) % 2 else "\\") + char


# What ends a URL where GFM's autolink runs on: characters no URL holds ('"', "<", ">", "`", whitespace
# other than the space, tab and line end that end the run, control characters) and the "⟨" of a marker
# this module shows (see ``_marker``). And a "'" when the URL follows one (``src='https://...'``).
_URL_END = re.compile(r"[\"<>`\u27e8\s\x00-\x1f\x7f]")
# What GFM's autolink leaves out of the link at its end (mdast-util-gfm-autolink-literal's splitUrl).
_GFM_TRAIL = "!\"&'),.:;<>?]}"


def _gfm_link_end(run: str) -> int:
    """Where the link GFM makes of ``run`` (a URL and what follows it up to a space) ends: before the
    trailing punctuation, save the ")" that close a "(" in the link (as mdast-util-gfm-autolink-literal,
    which Streamlit's renderer runs on the text once escapes and character references are decoded)."""
    end = len(run.rstrip(_GFM_TRAIL))
    opens, closes = run.count("(", 0, end), run.count(")", 0, end)
    while opens > closes:
        close = run.find(")", end)
        if close == -1:
            break
        end, closes = close + 1, closes + 1
    return end


def _unlink_if_escaped(match: re.Match) -> str:
    """A bare URL as text, not a link, where the link GFM makes of it would not end where the URL does.

    Streamlit's renderer links a URL twice over: micromark's GFM extension while parsing (it shows the
    link's text undecoded: ``&lt;`` as written) and, on the text left unlinked, remark-gfm's transform,
    which works on the decoded text and runs on to the next space: ``<a href="https://e.example">x</a>``
    was drawn as a link reading ``https://e.example">x</a`` to ``https://e.example%22%3Ex%3C/a``, escaped
    or not. Where the URL ends (``_URL_END``) before the end of that link, a zero-width space after each
    scheme (or ``www``) in the run keeps all of it text, shown as written (escapes cannot: they are
    decoded before the transform runs). Otherwise, where escapes would land in the link (``$``, ``<``)
    or micromark would keep a ``">`` at its end, escaping the colon after each scheme (or the dot of
    ``www.``) leaves the link to the transform, which ends it where the URL ends and reads as written.
    """
    run = match.group(0)
    before = match.string[match.start() - 1:match.start()]
    end = _gfm_link_end(run)
    if _URL_END.search(run, 0, end) or (before == "'" and "'" in run[:end]):
        return _LINK_START.sub(rf"\1{_ZWSP}", run)
    if _escape_prose(run, unlink=False) == run and not _URL_END.search(run):
        return run
    return _LINK_START.sub(r"\1\\", run)


# A CommonMark autolink to a web page or an address ("<https://host/page>"): escaping its "<" left GFM to
# link the bare URL on to the next space, so the page showed a stray "<" and a link whose target ended in
# "%3E". It is kept as written instead (a link, which stays clickable like any other; never an image, which
# autolinks cannot make). Other schemes (javascript:, data:) stay escaped text.
_AUTOLINK = re.compile(r"<(?:https?://|mailto:)[^\s<>`]*>", re.IGNORECASE)


# An inline link "[text](target)" to anything but a web page or an address: "data:" and "file:" links were
# live (Streamlit's renderer turns only "javascript:"-like ones into "#"), and a relative target ("/admin",
# "?page=x", "#top") pointed into the app itself. With its "(" escaped it is shown as written.
# (At the end of a piece of prose the target is an autolink, which _escape_prose keeps apart, or code.)
_OTHER_LINK = re.compile(r"\]\((?!\s*(?:<?(?:https?://|mailto:)|\Z))", re.IGNORECASE)
# An inline link to a web page whose text reads as another address: "[https://bank.example/login](https://evil.example)"
# was drawn as a link reading bank.example that went to evil.example. Where the text names a host (a URL,
# "www.", a domain name, an e-mail address) other than the target's, the "(" is escaped and the link is
# shown as written, target and all; "[docs.python.org](https://docs.python.org/3/)" stays a link. The text is
# found by matching brackets back from its "]" (it may hold brackets, formatting and line ends:
# "[**bank**.example](...)", "[see [bank.example]](...)"), and read with formatting characters taken out.
_WEB_TARGET = re.compile(r"\]\(\s*<?((?:https?://|mailto:)[^\s<>()]*)", re.IGNORECASE)
_HOST_IN_TEXT = re.compile(r"(?:[\w-]+\.)+[a-z][\w-]*[a-z0-9]", re.IGNORECASE)
_TARGET_HOST = re.compile(r"(?:https?://(?:[^/?#@\s]*@)?|mailto:[^@?\s]*@)([^/?#:\s]*)", re.IGNORECASE)
_FORMATTING = re.compile(r"[*_~`\\\[\]!]")  # taken out of a link's text before its hosts are read
_MAX_LINK_TEXT = 2000  # characters scanned back for a link's "["; a text longer than that is not trusted


def _host(name: str) -> str:
    name = name.lower().rstrip(".")
    return name[4:] if name.startswith("www.") else name


_URL_IN_TEXT = re.compile(r"(?:https?://|mailto:)[^\s()]*", re.IGNORECASE)


def _hosts_named(text: str) -> set[str]:
    """The hosts a link's text names: those of the URLs in it, and the domain names in the rest (the path of a
    URL, "e.example/b.svg", names no host "b.svg")."""
    hosts = {_host(found.group(1)) for url in _URL_IN_TEXT.findall(text)
             if (found := _TARGET_HOST.match(url)) and found.group(1)}
    return hosts | {_host(h) for h in _HOST_IN_TEXT.findall(_URL_IN_TEXT.sub(" ", text))}


def _link_text_start(prose: str, close: int) -> int | None:
    """Where the text of the link whose "]" is at ``close`` starts (after its "["), or None if not found."""
    depth = 0
    for i in range(close - 1, max(-1, close - _MAX_LINK_TEXT - 1), -1):
        char = prose[i]
        if char not in "[]":
            continue
        slashes = len(prose[:i]) - len(prose[:i].rstrip("\\"))
        if slashes % 2:
            continue  # an escaped bracket is text
        if char == "]":
            depth += 1
        elif depth:
            depth -= 1
        else:
            return i + 1
    return None


def _unlink_misleading(prose: str) -> str:
    """``prose`` with each web link whose text names a host other than its target's shown as written
    (its "(" escaped)."""
    out, pos = [], 0
    for match in _WEB_TARGET.finditer(prose):
        start = _link_text_start(prose, match.start())
        if start is not None:
            named = _hosts_named(_FORMATTING.sub("", prose[start:match.start()]))
            found = _TARGET_HOST.match(match.group(1))
            if not named or (found and named == {_host(found.group(1))}):
                continue
        out += [prose[pos:match.start()], "]\\("]
        pos = match.start() + 2
    return "".join(out) + prose[pos:]


# A "]" right before ":" is escaped (shown the same): a link reference definition ("[label]: url") needs one, and
# _REF_DEF finds only those whose label is on one line ("[1\n]: https://evil.example" defined a link too).
_REF_CLOSE = re.compile(r"(?<!\\)(\\*)(\])(?=:)")
# A "~" that is not one of a pair: Streamlit's GFM strikes out the text between two single ones ("~one~ two"
# showed "one" struck through), which models do not mean ("~~" does strike through and is left alone).
_LONE_TILDE = re.compile(r"(?<![~\\])(\\*)(~)(?!~)")


def _between(pattern: re.Pattern, text: str, escape) -> str:
    """``text`` with ``escape`` applied to what lies between the matches of ``pattern``, kept as written."""
    out, pos = [], 0
    for match in pattern.finditer(text):
        out += [escape(text[pos:match.start()]), match.group(0)]
        pos = match.end()
    return "".join(out) + escape(text[pos:])


def _escape_prose(prose: str, *, unlink: bool = True) -> str:
    if unlink and "<" in prose:
        return _between(_AUTOLINK, prose, _escape_text)
    return _escape_text(prose, unlink=unlink)


def _escape_text(prose: str, *, unlink: bool = True) -> str:
    if unlink:
        prose = _LINK_RUN.sub(_unlink_if_escaped, prose)
    prose = _OTHER_LINK.sub(r"]\\(", prose)
    prose = _REF_CLOSE.sub(_escape_unescaped, prose)
    prose = _CHAR_REF.sub("&amp;", prose)
    prose = prose.replace("<", "&lt;")
    prose = _IMAGE_ALT.sub(r"!\\[\1\\]", prose)
    prose = _IMAGE_OPEN.sub(r"!\\[", prose)
    prose = _REF_DEF.sub(lambda m: f"{m.group(1)}\\[{m.group(2)}]:", prose)
    prose = _ICON_CODE.sub(f":{_ZWSP}", prose)
    prose = _EMOJI_CODE.sub(f":{_ZWSP}", prose)
    prose = _INTRAWORD_STAR.sub(lambda m: "\\*" * len(m.group(0)), prose)
    prose = _DIRECTIVE.sub(_escape_unescaped, prose)
    prose = _escape_tildes(prose)
    return _DOLLAR.sub(_escape_unescaped, prose)


def _escape_tildes(prose: str) -> str:
    """``prose`` with each lone ``~`` escaped, but those in a URL GFM will link (``https://host/~user``),
    where the escape would unlink it (see ``_unlink_if_escaped``) and no strike-through can start."""
    return _between(_LINK_RUN, prose, lambda gap: _LONE_TILDE.sub(_escape_unescaped, gap))


def _neutralise(prose: str) -> str:
    # Links that read as another host, on the whole piece of prose: split at an image URL below, the rest of a
    # badge's outer link ("](target)") would have no "[" to read its text from.
    prose = _unlink_misleading(prose)
    out, pos = [], 0
    for match in _IMAGE_URL.finditer(prose):
        if match.start() == 0 or match.end() == len(prose):
            # Backticks added at a chunk's edge could merge with a neighbouring
            # code span's and change where it ends; a bare URL there stays text
            # (at worst a link, never an image).
            continue
        out.append(_escape_prose(prose[pos:match.start()]))
        out.append(f"`{match.group(1)}`")
        pos = match.end()
    out.append(_escape_prose(prose[pos:]))
    return "".join(out)


def _marker(match: re.Match) -> str:
    return f"\u27e8U+{ord(match.group(0)):04X}\u27e9"


def _decode_tags(match: re.Match) -> str:
    flag, tags = match.groups()
    if flag and _FLAG_TAGS.fullmatch(tags):
        return match.group(0)
    decoded = "".join(chr(ord(c) - 0xE0000) if 0xE0020 <= ord(c) <= 0xE007E else f"U+{ord(c):04X}" for c in tags)
    return f'{flag}\u27e8hidden tag text: "{decoded}"\u27e9'


def _show_selectors(match: re.Match) -> str:
    run = match.group(0)
    return _marker(match) if len(run) == 1 else f"\u27e8{len(run)} variation selectors\u27e9"


def _show_hidden(text: str) -> str:
    """``text`` with bidi controls and invisible characters shown as markers (see ``_SHOWN_CONTROLS``),
    and text hidden in tag characters or variation selectors shown (see ``_TAG_RUN``)."""
    text = _SHOWN_CONTROLS.sub(_marker, text)
    text = _SELECTOR_RUN.sub(_show_selectors, _TAG_RUN.sub(_decode_tags, text))
    if not _DIRECTION_MARKS.search(text):
        return text
    return "\n".join(_show_lone_marks(line) for line in text.split("\n"))


def plain(value):
    """``value`` for a table cell (``st.dataframe`` shows text as is, no Markdown): a string from a file or a
    model with bidi controls and invisible characters shown as markers, as :func:`safe_markdown` shows them;
    anything else unchanged."""
    return _show_hidden(value) if isinstance(value, str) else value


def plain_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every string of ``rows`` (a table's records) made :func:`plain`."""
    return [{key: plain(value) for key, value in row.items()} for row in rows]


def _show_lone_marks(line: str) -> str:
    """``line`` with each direction mark shown as a marker unless the line has a letter of the mark's direction."""
    if not _DIRECTION_MARKS.search(line):
        return line
    classes = {unicodedata.bidirectional(char) for char in _DIRECTION_MARKS.sub("", line)}
    has_ltr, has_rtl = "L" in classes, bool(classes & {"R", "AL"})
    return _DIRECTION_MARKS.sub(
        lambda m: m.group(0) if (has_ltr if m.group(0) == "\u200e" else has_rtl) else _marker(m), line)


# What starts a line's own block after its quote markers and indentation (a list item, a heading, a
# fence, a thematic break or setext underline): the paragraph before ends there, so it needs no break.
_BLOCK_START = re.compile(r"(?:[-*+]|\d{1,9}[.)])(?:[ \t]|$)|#{1,6}(?:[ \t]|$)|`{3}|~{3}|[-=*_][-=*_ \t]*$")
_ONE_LINE_BLOCK = re.compile(r"#{1,6}(?:[ \t]|$)|[-=*_][-=*_ \t]*$")
_CONTAINER = re.compile(r"[ \t>]*")
_FENCE_RUN = re.compile(r"`{3,}(?=[^`]*$)|~{3,}")  # as _FENCE_OPEN: "```x``` y" is inline code


def _hard_line_breaks(prose: str) -> str:
    """``prose`` (with its inline code, never a code block) with each line end inside a paragraph made a hard break.

    CommonMark joins the lines of a paragraph ("Poem:\\nRoses are red" was drawn "Poem: Roses are
    red"), so the same text looked different with single and with blank lines between its lines. Two
    spaces go before the line end where the line and the next have text, unless the line already ends in
    a hard break (two spaces or a backslash) or is a heading or rule, the next line starts a block of its
    own (list item, heading, fence, rule, setext underline), both lines hold a "|" (rows of a table), or
    the line is in a fence nested in a list item (which ``_segments`` takes for prose).
    """
    lines = prose.split("\n")
    fence = None
    for i, line in enumerate(lines[:-1]):
        body = _CONTAINER.sub("", line, count=1)
        run = _FENCE_RUN.match(body)
        if fence is not None:
            if run and run.group(0)[0] == fence[0] and len(run.group(0)) >= len(fence) and not body[run.end():].strip():
                fence = None
            continue
        if run:
            fence = run.group(0)
            continue
        following = lines[i + 1]
        after = _CONTAINER.sub("", following, count=1)
        if (body.strip() and after.strip() and not line.endswith("  ")
                and (len(line) - len(line.rstrip("\\"))) % 2 == 0
                and not _ONE_LINE_BLOCK.match(body) and not _BLOCK_START.match(after)
                and not ("|" in line and "|" in following)):
            lines[i] = line + "  "
    return "\n".join(lines)


@lru_cache(maxsize=256)
def safe_markdown(text: str) -> str:
    """Markdown for untrusted ``text`` that fetches nothing and runs nothing, and shows what was written.

    No image can be rendered, by construction: every ``![`` (the only way
    Markdown starts an image) is broken up, so this holds wherever the
    renderer decides code spans begin and end. Outside code it becomes
    ``!\\[`` (shown as ``![``); inside code, where a backslash would show,
    a zero-width space goes between the two characters.

    Everywhere, code included, bidi embeddings, overrides and isolates and
    invisible characters that split words are shown as markers (``⟨U+202E⟩``)
    instead of reordering or hiding text (see ``_SHOWN_CONTROLS``), and so is
    text hidden in tag characters or variation selectors (see ``_TAG_RUN``).

    Outside code, as a further layer: link reference definitions are
    disabled, URLs of images (bare or ``<autolinked>``) are shown as code
    instead of links, ``<`` is escaped so HTML is inert text, the ``&`` of a
    character reference is escaped so ``&lt;`` shows as written, ``$`` is
    escaped so no LaTeX is rendered, and Streamlit's colour, badge, size and
    tooltip directives (``:green-background[...]``, ``:help[...]``), Material
    icons and logo (``:material/check:``, ``:streamlit:``) and emoji codes
    (``:smile:``) are shown as written, as are a ``*`` inside a word (``2*3*4``),
    a single ``~`` and a link to anything but a web page or an address. A bare
    URL stays a link only where GFM's link ends where the URL does; one it would
    run on past, into a tag or a quote (``<a href="https://e.example">x</a>``),
    is text (see ``_unlink_if_escaped``).
    A single line end inside a paragraph is a line break, as it is in the
    text (see ``_hard_line_breaks``). Code (fenced blocks, indented blocks,
    which come back fenced, and one-line inline spans) is otherwise kept as
    written. Code is found with regular expressions, not a full CommonMark
    parser, so in contrived text a span may be misjudged; then only those
    escapes are affected, which is why the result must still be rendered with
    ``unsafe_allow_html=False`` (Streamlit's default: raw HTML is never live).

    Results are cached (the last 256 texts): a page draws the same pair's texts again at every key press,
    and a hostile 50,000-character text took up to a second to escape each time.
    """
    # First, so that the zero-width spaces added below stay invisible.
    text = _show_hidden((text or "").replace("\r\n", "\n").replace("\r", "\n"))
    out: list[str] = []
    prose: list[str] = []  # prose and inline code since the last code block
    for kind, chunk in _segments(text):
        if kind == _PROSE:
            prose.append(_neutralise(chunk))
        elif kind == _INLINE_CODE_SPAN:
            prose.append(chunk.replace("![", f"!{_ZWSP}["))
        else:
            out += [_hard_line_breaks("".join(prose)), chunk.replace("![", f"!{_ZWSP}[")]
            prose = []
    out.append(_hard_line_breaks("".join(prose)))
    return "".join(out)


# --------------------------------------------------------------------------- drawing

RESPONSE_HEIGHT = 420
PROMPT_HEIGHT = 320
_LONG_PROMPT_CHARS = 1200
_CHAT_ROLES = {"user": "user", "human": "user", "assistant": "assistant", "ai": "assistant"}
_OTHER_ROLE_AVATAR = ":material/settings:"  # a system turn must not pass for something the user said
UNTRUSTED_KEY = "untrusted"
# Model output keeps its Markdown structure but not the page's visual weight: a "# VERIFIED ANSWER"
# heading is bold text of the body's size (not bigger than the page's "Response A"), without an
# anchor link; nested quotes are not faded once per level (Streamlit's opacity compounds, so six
# levels deep text was all but invisible to the annotator while the model still saw it), and past three
# levels quotes and lists indent no further (each level took its indent from the width, so text 30
# quotes deep was drawn 0 px wide, "hidden" behind a row of quote borders); and each
# paragraph takes its direction from its own text, so Arabic or Hebrew reads right to left.
_UNTRUSTED_CSS = """<style>
.st-key-untrusted [data-testid="stMarkdown"] :is(h1, h2, h3, h4, h5, h6) {
  font-size: 1rem !important; font-weight: 700 !important; line-height: 1.5 !important;
  margin: 0.75rem 0 0.25rem 0 !important; padding: 0 !important; letter-spacing: normal !important;
}
.st-key-untrusted [data-testid="stMarkdown"] [data-testid="stHeaderActionElements"] { display: none !important; }
.st-key-untrusted [data-testid="stMarkdown"] blockquote blockquote { opacity: 1 !important; }
.st-key-untrusted [data-testid="stMarkdown"] blockquote blockquote blockquote blockquote {
  margin: 0 !important; padding: 0 !important; border: none !important;
}
.st-key-untrusted [data-testid="stMarkdown"] :is(ul, ol) :is(ul, ol) :is(ul, ol) :is(ul, ol, li) {
  margin-left: 0 !important; margin-right: 0 !important; padding-left: 0 !important; padding-right: 0 !important;
}
.st-key-untrusted [data-testid="stMarkdown"] :is(p, li, h1, h2, h3, h4, h5, h6, th, td) {
  unicode-bidi: plaintext; text-align: start;
}
</style>"""


def untrusted_area():
    """The container to draw a pair's prompt and responses in (``with render.untrusted_area(): ...``).

    Inside it, untrusted Markdown cannot borrow the page's own look (see ``_UNTRUSTED_CSS``): what
    ``safe_markdown`` cannot neutralise without changing the text, the style does. Once per page run.
    """
    import streamlit as st

    st.html(_UNTRUSTED_CSS)  # only a <style>: Streamlit adds it to the page without taking space
    return st.container(key=UNTRUSTED_KEY)


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
    long = total > _LONG_PROMPT_CHARS
    if long and len(prompt_messages) > 1:
        # Streamlit keeps a box of chat messages scrolled to its end, where the turn the responses answer is;
        # nothing showed that the conversation's start was above.
        st.caption(f":material/arrow_upward: {len(prompt_messages)} turns: the box opens at the last one; "
                   "scroll up in it for the earlier ones.")
    box = st.container(height=PROMPT_HEIGHT * 2 if long else "content", border=False)
    with box:
        for message in prompt_messages:
            role = str(message.get("role", "user"))
            name = _CHAT_ROLES.get(role.lower())
            with st.chat_message(name or role, avatar=None if name else _OTHER_ROLE_AVATAR):
                if name is None:
                    st.caption(role)
                st.markdown(safe_markdown(str(message.get("content", ""))), unsafe_allow_html=False)
