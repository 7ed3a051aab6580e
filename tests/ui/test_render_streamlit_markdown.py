"""safe_markdown and Streamlit's own Markdown extensions: model output must not style itself.

Streamlit renders ``:green-background[text]`` as a coloured badge-like span,
``:help[text]`` as a tooltip icon (the text shown only on hover), a bare
``:red`` as an empty red span (the word vanishes: ``color:red`` showed as
``color``), an unknown ``:name[label]`` as ``:name`` (the label vanishes), and
``:material/x:`` and ``:streamlit:`` as an icon and an <img>. What the browser
draws is checked by tests/ui/test_e2e_browser.py; this is the text it is given.
"""

from __future__ import annotations

import pytest

from annotate.ui.render import safe_markdown

ZWSP = "\u200b"


@pytest.mark.parametrize("text, expected", [
    (":green-background[Verified]", "\\:green-background[Verified]"),
    (":help[only on hover] and :small[tiny]", "\\:help[only on hover] and \\:small[tiny]"),
    (":note[kept] :x{a=b}", "\\:note[kept] \\:x{a=b}"),
    ('color:red; border:blue-badge and :primary', 'color\\:red; border\\:blue-badge and \\:primary'),
    ("\\:red[escaped by the model]", "\\:red[escaped by the model]"),
    ("\\\\:red[after an escaped backslash]", "\\\\\\:red[after an escaped backslash]"),
    (":material/verified: :material_check: :streamlit:",
     f":{ZWSP}material/verified: :{ZWSP}material_check: :{ZWSP}streamlit:"),
])
def test_streamlit_markup_is_shown_as_written(text, expected):
    assert safe_markdown(text) == expected


@pytest.mark.parametrize("text", [
    "`:red[code]` and\n\n```\n:green-background[x] :streamlit:\n```",
    "at 12:30:45, ratio 3:2, javascript:alert(1), x:https://e.example/a, a:b, :Smile:, redder:reddish",
    "| a | b |\n|:--|--:|\n| 1 | 2 |",
])
def test_other_colons_and_code_are_left_alone(text):
    assert safe_markdown(text) == text


@pytest.mark.parametrize("text, expected", [
    (":smile: :+1: :-1: :100: :1234: :t-rex: :1st_place_medal:",
     f":{ZWSP}smile: :{ZWSP}+1: :{ZWSP}-1: :{ZWSP}100: :{ZWSP}1234: :{ZWSP}t-rex: :{ZWSP}1st_place_medal:"),
    ("root:x:0:0:root", f"root:{ZWSP}x:0:0:root"),  # ":x:" is the emoji ❌
    ("\\:smile: escaped", f"\\:{ZWSP}smile: escaped"),  # remark-emoji reads the text after escapes
    ("`:smile:` in code", "`:smile:` in code"),  # remark-emoji leaves code alone
])
def test_emoji_codes_are_shown_as_written(text, expected):
    """Before, Streamlit's remark-emoji drew ":smile:" as 😄 and ":+1:" as 👍."""
    assert safe_markdown(text) == expected


def test_every_emoji_name_streamlit_knows_is_shown_as_written():
    """The names come from the emoji list bundled with the installed Streamlit (node-emoji's), so a new
    name that the pattern does not cover fails here."""
    import json
    import re
    from pathlib import Path

    import streamlit

    names = None
    for bundle in (Path(streamlit.__file__).parent / "static").rglob("*.js"):
        source = bundle.read_text(encoding="utf-8", errors="replace")
        if '"1234"' in source and '"grinning"' in source:
            for match in re.finditer(r"JSON\.parse\(`(\[.*?\])`\)", source, re.S):
                candidate = json.loads(match.group(1))
                if "smile" in candidate and "+1" in candidate:
                    names = candidate
    assert names and len(names) > 1000, "no emoji list found in Streamlit's bundle"
    for name in names:
        assert safe_markdown(f"a :{name}: b") == f"a :{ZWSP}{name}: b", name
