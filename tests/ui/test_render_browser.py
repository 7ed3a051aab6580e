"""safe_markdown through Streamlit's real renderer (react-markdown, remark-gfm, remark-emoji) in a browser.

The text an annotator reads must be the text the model wrote: no bidi override reversing it, no
soft line break joining a poem into one line, no ``2*3*4`` turned into emphasis, no ``:smile:``
turned into an emoji, while lists, quotes, headings, tables and emphasis keep rendering as Markdown.

Needs Debian's chromium at /usr/bin/chromium and playwright; FAILS (never skips) when either is
missing. Saves a screenshot to ``bench/screenshots/render_markdown.png``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.ui.test_e2e_browser import CHROMIUM, CHROMIUM_ARGS, SCREENSHOTS, TIMEOUT_MS, require_browser, streamlit_script

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]

CASES = {
    "rlo": "file \u202eRLO override txt.exe",
    "rlm": "\u200fthe\u200f answer\u200f is\u200f five",
    "hebrew": "שלום\u200f (hello) עולם",
    "lrm": "\u200eשלום\u200e עולם",
    "poem": "Poem:\nRoses are red\nViolets are blue",
    "code_end": "run `make`\nthen `make test`\n\n```\nkeep\nas is\n```\nafter",
    "list": "- one\n- two\n  continued\n\n1. first\n2. second",
    "quote": "> quoted line\n> second line",
    "headings": "# ATX\nbelow atx\n\nSetext one\n===\n\nSetext two\n---\ntext",
    "table": "Intro line\n| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4 |",
    "backslash": "ends in a backslash\\\nnext line",
    "stars": "2*3*4 = 24, **bold** and *italic*, __dunder__, 2\\*3",
    "emoji": "say :smile: and :+1: at 12:30:45, ratio 3:2",
    "autolink": "see <http://127.0.0.1:9/auto> and <mailto:a@example.com>, not <javascript:alert(1)>",
    "links": "[x](data:text/html,<b>hi</b>) [f](file:///etc/passwd) [a](/admin) [d](https://docs.example/p) "
             "https://host/~user/page",
    "tilde": "~one~ two, ~~three~~ four, ~5 to ~6",
    "hidden": "hello" + "".join(chr(0xE0000 + ord(c)) for c in "obey") + " world a\ufe00\ufe01 b \u2764\ufe0f",
    "html_link": '<a href="https://e.example">x</a> done',
    "iframe": '<iframe src="https://example.com"></iframe>',
    "www_tag": 'Visit www.example.com"><b>bold</b> now',
    "url_query": "see https://example.com/path?q=1 now",
    "misleading": "[https://bank.example/login](https://evil.example) [https://bank.example](<https://evil.example>) "
                  "[docs.python.org](https://docs.python.org/3/) [the docs](https://docs.example/p)",
    "ref_two_lines": "[bank\n]: https://evil.example/x\n\nsee [bank] now",
    "deep_quote": "visible\n\n" + ">" * 100 + " hidden deep quote",
    "deep_list": "- " * 100 + "deep list text",
    "url_trail": "see https://e.example/a\"> and 'https://e.example/b' and (https://en.wikipedia.org/wiki/Foo_(bar)) "
                 "and https://e.example/$5 and <img src='https://e.example/p.png'>",
}

_APP = """
import json, os
import streamlit as st
from annotate.ui import render

with render.untrusted_area():
    for key, text in json.loads(os.environ["RENDER_CASES"]).items():
        with st.container(key=f"case_{key}"):
            render.show_text(text)
"""

# Per case: the rendered text, its lines as shown, and the tags it holds.
_READ_JS = """(keys) => Object.fromEntries(keys.map(key => {
    const md = document.querySelector(`.st-key-case_${key} [data-testid=stMarkdownContainer]`);
    const tags = {};
    for (const e of md.querySelectorAll('*')) tags[e.tagName.toLowerCase()] = (tags[e.tagName.toLowerCase()] || 0) + 1;
    const links = [...md.querySelectorAll('a')].map(a => [a.textContent, a.getAttribute('href')]);
    return [key, {text: md.textContent, lines: md.innerText.split('\\n').filter(l => l.trim()), tags, links}];
}))"""
# The words of a case's first paragraph in the order the eye reads them on screen (left to right).
_VISUAL_ORDER_JS = """(key) => {
    const p = document.querySelector(`.st-key-case_${key} [data-testid=stMarkdownContainer] p`);
    const walker = document.createTreeWalker(p, NodeFilter.SHOW_TEXT);
    const words = [];
    for (let t = walker.nextNode(); t; t = walker.nextNode()) {
        for (const m of t.data.matchAll(/[A-Za-z.]{2,}/g)) {
            const r = document.createRange();
            r.setStart(t, m.index);
            r.setEnd(t, m.index + m[0].length);
            words.push([m[0], r.getBoundingClientRect().left]);
        }
    }
    return words.sort((a, b) => a[1] - b[1]).map(w => w[0]).join(' ');
}"""

# How wide the innermost element holding ``words`` is, and how wide its case's box is.
_TEXT_WIDTH_JS = """([key, words]) => {
    const box = document.querySelector(`.st-key-case_${key} [data-testid=stMarkdownContainer]`);
    const inner = [...box.querySelectorAll('*')].filter(e => e.textContent.includes(words)).pop();
    return {text: inner.getBoundingClientRect().width, box: box.getBoundingClientRect().width};
}"""

@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """What the browser shows for each case, and the page (for screenshots and layout)."""
    expect, sync_playwright = require_browser()
    tmp = tmp_path_factory.mktemp("render")
    app = tmp / "render_app.py"
    app.write_text(_APP)
    with streamlit_script(app, tmp, RENDER_CASES=json.dumps(CASES), PYTHONPATH=str(ROOT)) as base, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 900, "height": 2000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(base)
            expect(page.locator(".st-key-case_emoji [data-testid=stMarkdownContainer]")).to_be_visible()
            page.wait_for_timeout(1500)  # remark-emoji is loaded on demand; let it arrive and rerender
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOTS / "render_markdown.png"), full_page=True)
            shown = page.evaluate(_READ_JS, list(CASES))
            shown["rlo"]["order"] = page.evaluate(_VISUAL_ORDER_JS, "rlo")
            shown["rlm"]["order"] = page.evaluate(_VISUAL_ORDER_JS, "rlm")
            for key, words in (("deep_quote", "hidden deep quote"), ("deep_list", "deep list text")):
                shown[key]["width"] = page.evaluate(_TEXT_WIDTH_JS, [key, words])
        finally:
            browser.close()
    return shown


_BIDI_CONTROLS = set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def test_bidi_overrides_are_shown_not_obeyed(rendered):
    """Before, "\\u202eRLO override txt.exe" was drawn reversed: "exe.txt edirrevo OLR"."""
    rlo = rendered["rlo"]
    assert not _BIDI_CONTROLS & set(rlo["text"])
    assert rlo["text"] == "file ⟨U+202E⟩RLO override txt.exe"
    assert rlo["order"] == "file RLO override txt.exe"
    # Right-to-left marks between Latin words reversed their order on screen ("five is answer the").
    assert rendered["rlm"]["order"] == "the answer is five"
    assert rendered["hebrew"]["text"] == "שלום\u200f (hello) עולם"  # an ordinary mark in Hebrew stays
    # Left-to-right marks around Hebrew words swapped them (read right to left: "עולם שלום").
    assert rendered["lrm"]["text"] == "⟨U+200E⟩שלום⟨U+200E⟩ עולם"


def test_single_line_breaks_are_kept(rendered):
    """Before, the poem was one run-on line ("Poem: Roses are red Violets are blue")."""
    assert rendered["poem"]["lines"] == ["Poem:", "Roses are red", "Violets are blue"]
    assert rendered["code_end"]["lines"] == ["run make", "then make test", "keep", "as is", "after"]
    assert rendered["code_end"]["tags"]["pre"] == 1


def test_markdown_blocks_still_render(rendered):
    listed = rendered["list"]
    assert listed["tags"]["ul"] == 1 and listed["tags"]["ol"] == 1 and listed["tags"]["li"] == 4
    assert listed["lines"] == ["one", "two", "continued", "first", "second"]
    assert rendered["quote"]["tags"]["blockquote"] == 1
    assert rendered["quote"]["lines"] == ["quoted line", "second line"]
    headings = rendered["headings"]
    assert headings["tags"]["h1"] == 2 and headings["tags"]["h2"] == 1, headings
    assert headings["lines"] == ["ATX", "below atx", "Setext one", "Setext two", "text"]
    table = rendered["table"]
    assert table["tags"]["table"] == 1 and table["tags"]["tr"] == 3, table
    backslash = rendered["backslash"]
    assert backslash["lines"] == ["ends in a backslash", "next line"] and backslash["tags"]["br"] == 1


def test_intraword_stars_are_shown_and_emphasis_still_works(rendered):
    """Before, "2*3*4" was drawn as "234" with the 3 in italics."""
    stars = rendered["stars"]
    assert stars["text"] == "2*3*4 = 24, bold and italic, dunder, 2*3"
    assert stars["tags"]["strong"] == 2 and stars["tags"]["em"] == 1, stars


def test_emoji_shortcodes_are_shown_as_written(rendered):
    """Before, ":smile:" was drawn as 😄 and ":+1:" as 👍."""
    assert rendered["emoji"]["text"].replace("\u200b", "") == "say :smile: and :+1: at 12:30:45, ratio 3:2"


def test_autolinks_are_links_to_what_they_say(rendered):
    """Before, "<http://127.0.0.1:9/auto>" showed a stray "<" and linked to ".../auto%3E" (its "<" was escaped,
    so GFM linked the bare URL on to the next space). Schemes other than web pages and addresses stay text."""
    autolink = rendered["autolink"]
    assert autolink["text"] == "see http://127.0.0.1:9/auto and mailto:a@example.com, not <javascript:alert(1)>"
    assert autolink["links"] == [["http://127.0.0.1:9/auto", "http://127.0.0.1:9/auto"],
                                 ["mailto:a@example.com", "mailto:a@example.com"]]


def test_links_are_only_to_web_pages_and_addresses(rendered):
    """Before, the data: and file: links were live, and "[a](/admin)" linked into the app itself."""
    links = rendered["links"]
    assert links["text"] == ("[x](data:text/html,<b>hi</b>) [f](file:///etc/passwd) [a](/admin) d "
                             "https://host/~user/page")
    assert links["links"] == [["d", "https://docs.example/p"], ["https://host/~user/page", "https://host/~user/page"]]


def test_single_tildes_are_shown_and_double_ones_strike_through(rendered):
    """Before, "~one~" was drawn struck through."""
    tilde = rendered["tilde"]
    assert tilde["text"] == "~one~ two, three four, ~5 to ~6"
    assert tilde["tags"].get("del") == 1


def test_hidden_text_is_shown(rendered):
    """Before, the tag characters spelling "obey" were invisible ("hello world")."""
    assert rendered["hidden"]["text"] == 'hello⟨hidden tag text: "obey"⟩ world a⟨2 variation selectors⟩ b \u2764\ufe0f'


@pytest.mark.parametrize("key", ["html_link", "iframe", "www_tag"])
def test_urls_in_html_are_not_linked_past_their_end(rendered, key):
    """Before, remark-gfm linked each URL on to the next space: a link reading 'https://e.example">x</a' to
    "https://e.example%22%3Ex%3C/a", one to "https://example.com%22%3E%3C/iframe", and one reading
    'www.example.com"><b>bold</b' to "http://www.example.com%22%3E%3Cb%3Ebold%3C/b". The tag is text."""
    shown = rendered[key]
    assert shown["text"].replace("\u200b", "") == CASES[key]
    assert shown["links"] == []
    assert "b" not in shown["tags"] and "iframe" not in shown["tags"]


def test_urls_in_prose_link_to_exactly_the_url(rendered):
    assert rendered["url_query"]["text"] == CASES["url_query"]
    assert rendered["url_query"]["links"] == [["https://example.com/path?q=1", "https://example.com/path?q=1"]]
    trail = rendered["url_trail"]
    assert trail["text"] == CASES["url_trail"]
    assert trail["links"] == [[url, url] for url in (
        "https://e.example/a", "https://e.example/b", "https://en.wikipedia.org/wiki/Foo_(bar)",
        "https://e.example/$5", "https://e.example/p.png")]


def test_a_link_reading_as_another_address_is_shown_as_written(rendered):
    """Before, "[https://bank.example/login](https://evil.example)" was a link reading bank.example that went
    to evil.example (also with the target in angle brackets, and through a reference whose label spans two
    lines). A link whose text names its own host, or no host, stays a link."""
    misleading = rendered["misleading"]
    for text, href in misleading["links"]:
        assert "bank.example" not in text or "bank.example" in href, misleading
    assert "[https://bank.example/login](https://evil.example)" in misleading["text"].replace("\u200b", "")
    assert ["docs.python.org", "https://docs.python.org/3/"] in misleading["links"]
    assert ["the docs", "https://docs.example/p"] in misleading["links"]
    two_lines = rendered["ref_two_lines"]
    assert all(text == href for text, href in two_lines["links"]), two_lines  # a bare URL says where it goes
    assert "see [bank] now" in two_lines["text"]


def test_deep_nesting_does_not_squeeze_text_out_of_sight(rendered):
    """Before, text 30 quotes (or 40 list levels) deep was drawn in a box 0 px wide: the annotator saw a row of
    quote borders, the model read the text."""
    for key in ("deep_quote", "deep_list"):
        width = rendered[key]["width"]
        assert width["text"] >= 0.8 * width["box"], (key, width)
