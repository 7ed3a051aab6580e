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
    "at 12:30, javascript:alert(1), x:https://e.example/a, a:b, :smile:, redder:reddish",
    "| a | b |\n|:--|--:|\n| 1 | 2 |",
])
def test_other_colons_and_code_are_left_alone(text):
    assert safe_markdown(text) == text
