"""safe_markdown: untrusted model output must fetch nothing, run nothing, and keep its code."""

from __future__ import annotations

import re

import pytest

from annotate.ui.render import safe_markdown

# What a CommonMark renderer would turn into an <img>: "![" not preceded by an
# odd number of backslashes and not itself escaped.
_LIVE_IMAGE = re.compile(r"(?<!\\)!\[")
_LIVE_REF_DEF = re.compile(r"^[ \t>*+\-0-9.)]*\[[^\]\n]*\]:", re.MULTILINE)


# A backslash before ASCII punctuation is a CommonMark escape: the punctuation is shown, not the backslash.
_MD_ESCAPE = re.compile(r"\\([!-/:-@\[-`{-~])")
# What GFM's autolink would make a link of (it runs to the next whitespace and shows its text undecoded).
_AUTOLINK = re.compile(r"(?<!\\)(?:https?://|www\.)\S*", re.IGNORECASE)


def _shown(markdown: str) -> str:
    return _MD_ESCAPE.sub(r"\1", markdown.replace("&lt;", "<"))


@pytest.mark.parametrize("text", [
    "<script>alert('x')</script>",
    "hello <img src=x onerror=alert(1)> world",
    "<iframe src='https://evil.example'></iframe>",
    "<a href='javascript:alert(1)'>click</a>",
    '<a href="https://example.com">Example</a>',
    "x www.example.com<br>y",
])
def test_html_stays_inert_text(text):
    out = safe_markdown(text)
    assert "<" not in out
    assert _shown(out) == text  # shown as the same text, not dropped
    # No link whose text would show an escape the model never wrote ("https://e.example">x&lt;/a>").
    assert not [run for run in _AUTOLINK.findall(out) if "&lt;" in run or "&amp;" in run], out


@pytest.mark.parametrize("text", [
    "see https://example.com/a?b=1&c=2 now",
    "plain https://example.com. and www.example.org/x",
])
def test_bare_urls_stay_links(text):
    assert safe_markdown(text) == text


@pytest.mark.parametrize("text", [
    "look ![cat](https://evil.example/track.png) here",
    "![cat](https://evil.example/track.png \"title\")",
    "ref ![cat][img]\n\n[img]: https://evil.example/track.png",
    "collapsed ![img][]\n\n[img]: https://evil.example/a.gif",
    "shortcut ![img]\n\n  [img]: https://evil.example/a.gif",
    "[![badge](https://evil.example/b.svg)](https://example.com)",
    "> quoted ![x](http://e.example/q.jpg)\n> [r]: http://e.example/r.png",
    "- item ![x][r]\n- [r]: http://e.example/r.png",
])
def test_images_are_never_rendered(text):
    out = safe_markdown(text)
    assert not _LIVE_IMAGE.search(out), out
    assert not _LIVE_REF_DEF.search(out), out


@pytest.mark.parametrize("url", [
    "https://evil.example/pixel.png",
    "http://evil.example/a/b.JPEG?size=1",
    "www.evil.example/x.webp",
])
def test_image_urls_are_shown_as_code_not_links(url):
    for text in (f"see {url} now", f"see <{url}> now"):
        assert safe_markdown(text) == f"see `{url}` now"


def test_image_urls_after_gfm_delimiters_are_code_and_mid_word_urls_stay_text():
    assert safe_markdown("see _https://e.example/a.png now") == "see _`https://e.example/a.png` now"
    assert safe_markdown("see (https://e.example/a.png) now") == "see (`https://e.example/a.png`) now"
    # GFM starts no autolink in the middle of a word, so this is plain text either way
    assert safe_markdown("see x:https://e.example/a.png now") == "see x:https://e.example/a.png now"


@pytest.mark.parametrize("unit", ["www.", "_www.", "http://a", "*http://x", "a www.", "(www."])
def test_text_made_of_url_starts_is_neutralised_in_linear_time(unit):
    """A response repeating a URL start must not make the sanitiser quadratic (it runs on
    every rerun of the page that shows it, in the server). Before the fix 50,000
    characters of "www." took 17 s; now such text takes milliseconds, and the bound
    below (3 s) only catches a return to quadratic behaviour."""
    import time

    text = (unit * (50_000 // len(unit)))[:50_000]
    t0 = time.perf_counter()
    out = safe_markdown(text)
    assert time.perf_counter() - t0 < 3.0
    assert not _LIVE_IMAGE.search(out)


@pytest.mark.parametrize("text, expected", [
    ("Write &lt; for < and &amp; for &.", "Write &amp;lt; for &lt; and &amp;amp; for &."),
    ("&#60;b&#x3E; &copy; &nbsp;", "&amp;#60;b&amp;#x3E; &amp;copy; &amp;nbsp;"),
    ("Q&A, a && b, &;", "Q&A, a && b, &;"),  # no reference: Markdown shows these as written
    ("`&lt;` stays code", "`&lt;` stays code"),
])
def test_character_references_are_shown_as_written(text, expected):
    """A response explaining HTML escapes must not be shown with them decoded ("Write < for <")."""
    assert safe_markdown(text) == expected


def test_ordinary_links_and_urls_are_kept():
    text = "read [the docs](https://example.com/docs) or https://example.com/page"
    assert safe_markdown(text) == text


def test_dollars_are_escaped_so_no_latex():
    assert safe_markdown("costs $5 and $x^2$") == "costs \\$5 and \\$x^2\\$"
    assert safe_markdown("$$\\int f$$") == "\\$\\$\\int f\\$\\$"
    # An already-escaped dollar stays escaped once, an escaped backslash before
    # a dollar does not leave the dollar live.
    assert safe_markdown("\\$5") == "\\$5"
    assert safe_markdown("\\\\$x$") == "\\\\\\$x\\$"


def test_code_blocks_survive_unchanged():
    code = "```python\nprice = '$5' if a < b else '![x](http://e/p.png)'\n<script>\n```"
    text = f"Here:\n\n{code}\n\nAnd $2 `inline <b> $x$` too."
    out = safe_markdown(text)
    assert code.replace("![", "!\u200b[") in out  # only "![" is broken up, invisibly
    assert "`inline <b> $x$`" in out
    assert out.endswith("And \\$2 `inline <b> $x$` too.")


def test_tilde_fences_longer_fences_and_unclosed_fences():
    text = "~~~~\n```\n$a < b$\n```\n~~~~\nafter $"
    assert safe_markdown(text) == "~~~~\n```\n$a < b$\n```\n~~~~\nafter \\$"
    unclosed = "intro $\n```\n$ rm -rf <dir>\n"
    assert safe_markdown(unclosed) == "intro \\$\n```\n$ rm -rf <dir>\n"


def test_plain_markdown_is_untouched():
    text = "# Title\n\n**bold** and *it*\n\n- one\n- two\n\n| a | b |\n|---|---|\n| 1 | 2 |"
    assert safe_markdown(text) == text


def test_empty_and_none():
    assert safe_markdown("") == ""
    assert safe_markdown(None) == ""


def test_indented_code_is_shown_as_written():
    text = "Try this:\n\n    if a < b and cost > $5:\n        print('![x](http://e/p.png)')\n\nafter <b> $"
    out = safe_markdown(text)
    assert "```\nif a < b and cost > $5:\n    print('!\u200b[x](http://e/p.png)')\n```" in out
    assert out.endswith("\n\nafter &lt;b> \\$")
    tab = safe_markdown("x\n\n\tz < 1\n")
    assert tab == "x\n\n```\nz < 1\n```\n"
    # Backtick runs inside the code get a longer fence, so they cannot close it.
    assert safe_markdown("    ```\n    $x").startswith("````\n```\n$x\n````")


def test_indented_lines_that_are_not_code_stay_neutralised():
    # A paragraph continuation and a list item's indented paragraph are prose in CommonMark.
    assert safe_markdown("para\n    not code <") == "para\n    not code &lt;"
    out = safe_markdown("- item\n\n    more ![x](https://e.example/p.png) $")
    assert not _LIVE_IMAGE.search(out) and "`https://e.example/p.png`" in out and "\\$" in out


def _render(markdown: str) -> str:
    from markdown_it import MarkdownIt

    # CommonMark with raw HTML off, as Streamlit renders st.markdown(unsafe_allow_html=False).
    return MarkdownIt("commonmark", {"html": False}).render(markdown)


def test_fuzzed_markdown_never_renders_an_image():
    """Random mixes of lists, quotes, indents, fences, backticks and image syntax through a real CommonMark renderer.

    Before "![" was broken up inside code too, this found inputs whose code spans
    the regular expressions misjudged, leaving an image live (seed 7: 3 in 20,000).
    """
    import random

    pieces = ["- ", "1. ", "> ", "    ", "\t", "  ", "```", "~~~", "`", "``", "\n", "\n\n", "text ", "$x$ ",
              "![a](https://e.example/p.png)", "![b][r]", "[r]: https://e.example/q.png", "<img src=x>",
              "https://e.example/z.gif", "[link](https://e.example)", "\\", "*", "# ", "---", "&#60;", "<",
              "(", ")", "[", "]", "!", "<https://e.example/a.png>"]
    rng = random.Random(7)
    for _ in range(20000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 25)))
        html = _render(safe_markdown(text))
        assert "<img" not in html, text


@pytest.mark.parametrize(("text", "link_text", "href"), [
    ("[![build](https://e.example/b.svg)](https://e.example/ci)", "![build](<code>https://e.example/b.svg</code>)",
     "https://e.example/ci"),
    ("[![](data:image/png;base64,AAAA)](https://e.example/p)", "![](data:image/png;base64,AAAA)",
     "https://e.example/p"),
])
def test_an_image_inside_a_link_is_shown_as_written_as_the_links_text(text, link_text, href):
    """A badge, "[![alt](image)](target)": the outer link keeps its target and reads the image syntax as written.
    Before, the outer "[" and the image's "](image)" made a link reading "![alt" to the image's URL (a
    relative one in backticks, or the data: URL itself), and "](target)" was left as loose text."""
    html = _render(safe_markdown(text))
    assert html == f'<p><a href="{href}">{link_text}</a></p>\n'
