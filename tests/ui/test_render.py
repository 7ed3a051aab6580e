"""safe_markdown: untrusted model output must fetch nothing, run nothing, and keep its code."""

from __future__ import annotations

import re

import pytest

from annotate.ui.render import safe_markdown

# What a CommonMark renderer would turn into an <img>: "![" not preceded by an
# odd number of backslashes and not itself escaped.
_LIVE_IMAGE = re.compile(r"(?<!\\)!\[")
_LIVE_REF_DEF = re.compile(r"^[ \t>*+\-0-9.)]*\[[^\]\n]*\]:", re.MULTILINE)


@pytest.mark.parametrize("text", [
    "<script>alert('x')</script>",
    "hello <img src=x onerror=alert(1)> world",
    "<iframe src='https://evil.example'></iframe>",
    "<a href='javascript:alert(1)'>click</a>",
])
def test_html_stays_inert_text(text):
    out = safe_markdown(text)
    assert "<" not in out
    assert out.replace("&lt;", "<") == text  # shown as the same text, not dropped


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
    assert code in out
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
