"""End to end in a real browser: an annotator judges three pairs with key presses,
an admin downloads the raw judgments, and the file holds exactly what was pressed.

Needs Debian's chromium at /usr/bin/chromium and playwright; FAILS (never
skips) when either is missing. Saves a screenshot of every page visited to
``bench/screenshots/<page>.png``.
"""

from __future__ import annotations

import contextlib

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from annotate import accounts, migrate
from annotate.db import Database, create_db_engine
from annotate.models import Choice, Judgment, Prompt, User
from tests.factories import make_comparisons

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "bench" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PASSWORD = "e2e-password-1"
RATIONALE = "a bit better, but verbose"
KEYS = {"a": "left", "b": "right", "x": "both_bad"}
PAIR_CAPTION = re.compile(r"Pair #(\d+)")
TIMEOUT_MS = 30_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(base: str, proc: subprocess.Popen, log: Path, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{base}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"streamlit did not become healthy in {timeout_s} s:\n{log.read_text()[-3000:]}")


def _expected(key: str, a_on_left: bool) -> str:
    shown = KEYS[key]
    if shown in ("tie", "both_bad"):
        return shown
    return (Choice.a if (shown == "left") == a_on_left else Choice.b).value


HOSTILE = (
    "# Heading\n\n" + "A long paragraph of model output. " * 60 + "\n\n"
    ":green-background[Verified by experts] :help[only on hover] color:red :material/verified: :streamlit:\n\n"
    "> > > > > > six quotes deep\n\n"
    "مرحبا بالعالم.\n\n"
    "![tracker](https://evil.example/pixel.png) and ![ref][t]\n\n[t]: https://evil.example/ref.png\n\n"
    "https://evil.example/bare.jpg\n\n"
    "<script>window.__pwned = 'script'</script><img src=x onerror=\"window.__pwned = 'img'\">\n\n"
    "<a href=\"https://evil.example/page\">Example</a>\n\n"
    "Price: $5 to $10\n\n```python\nprint('kept <b>$x$</b>')\n```\n" + "\nmore lines" * 30
)


# Measured on the hostile pair: the font size of its heading and of its text, how opaque the
# deepest quote is, and how far the Arabic paragraph's text ends from the right edge.
_LOOK_JS = """() => {
    const md = [...document.querySelectorAll('main [data-testid=stMarkdown]')].find(e => e.querySelector('h1'));
    const px = e => parseFloat(getComputedStyle(e).fontSize);
    const quote = [...md.querySelectorAll('p')].find(p => p.innerText.includes('six quotes deep'));
    let opacity = 1;
    for (let e = quote; e; e = e.parentElement) opacity *= parseFloat(getComputedStyle(e).opacity);
    const rtl = [...md.querySelectorAll('p')].find(p => p.innerText.startsWith('مرحبا'));
    const range = document.createRange();
    range.selectNodeContents(rtl);
    return {heading_px: px(md.querySelector('h1')), text_px: px(md.querySelector('p')), quote_opacity: opacity,
            rtl_gap_px: rtl.getBoundingClientRect().right - range.getBoundingClientRect().right};
}"""
# The labels of the page's buttons that show an ellipsis instead of their whole text.
_TRUNCATED_JS = """() => [...document.querySelectorAll(
        'main :is([data-testid=stButton], [data-testid=stPopover]) button *')]
    .filter(e => getComputedStyle(e).textOverflow === 'ellipsis' && e.scrollWidth > e.clientWidth)
    .map(e => e.innerText)"""


def _add_hostile_chat_pair(session) -> None:
    """A chat prompt with long, hostile markdown answers, served first (highest priority)."""
    from annotate.models import Comparison, Prompt, Response
    from tests.factories import h

    prompt = Prompt(content_hash=h("hostile-chat"), messages=[
        {"role": "user", "content": "Show me a picture."},
        {"role": "assistant", "content": "What of?"},
        {"role": "user", "content": "Anything, with $math$ and <b>html</b>."}])
    session.add(prompt)
    session.flush()
    a = Response(prompt_id=prompt.id, content_hash=h("hostile-a"), text=HOSTILE)
    b = Response(prompt_id=prompt.id, content_hash=h("hostile-b"), text="Short and safe.")
    session.add_all([a, b])
    session.flush()
    session.add(Comparison(prompt_id=prompt.id, response_a_id=a.id, response_b_id=b.id, priority=5.0))


@pytest.fixture
def seeded(tmp_path):
    url = f"sqlite:///{tmp_path / 'e2e.db'}"
    migrate.upgrade(url)
    database = Database(create_db_engine(url))
    with database.begin() as session:
        accounts.create_user(session, "annie", PASSWORD, "annotator", system=True)
        accounts.create_user(session, "root", PASSWORD, "admin", system=True)
        make_comparisons(session, 6, tag="e2e")
        _add_hostile_chat_pair(session)
    yield url, database
    database.dispose()


@contextlib.contextmanager
def streamlit_server(url: str, tmp_path: Path, **extra_env: str):
    """Serve streamlit_app.py on a free port against ``url``; yield its base URL; stop it afterwards."""
    with streamlit_script("streamlit_app.py", tmp_path, PREFLOOP_DATABASE_URL=url,
                          PREFLOOP_DATA_DIR=str(tmp_path / "data"), PREFLOOP_ENV="test", **extra_env) as base:
        yield base


@contextlib.contextmanager
def streamlit_script(script: str | Path, tmp_path: Path, **extra_env: str):
    """Serve a Streamlit ``script`` (run from the repository root) on a free port, its log in ``tmp_path``;
    yield its base URL; stop it afterwards."""
    port = _free_port()
    env = {**os.environ, **extra_env}
    log = tmp_path / "streamlit.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(script), "--server.headless", "true",
             "--server.port", str(port), "--server.address", "127.0.0.1",
             "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer",
             # Others edit the tree while this runs: no "source changed" prompts or reruns.
             "--server.fileWatcherType", "none"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, proc, log)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def server(seeded, tmp_path):
    with streamlit_server(seeded[0], tmp_path, PREFLOOP_GOLD_RATE="0", PREFLOOP_PROBE_RATE="0") as base:
        yield base


def _settle(page) -> None:
    """Wait until the script run has finished and nothing is a loading skeleton any more."""
    from playwright.sync_api import expect

    page.wait_for_timeout(600)  # the running indicator appears only after a short delay
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)
    expect(page.get_by_test_id("stSkeleton")).to_have_count(0)


def _shot(page, name: str, ready) -> None:
    """Screenshot once ``ready`` (the page's last element) is visible and the run has finished."""
    from playwright.sync_api import expect

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    expect(ready.first).to_be_visible()
    _settle(page)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _log_in(page, username: str) -> None:
    page.get_by_role("textbox", name="Username").fill(username)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def require_browser():
    """Playwright's ``expect`` and ``sync_playwright``; a missing browser stack FAILS the test, never skips it."""
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError as exc:
        pytest.fail(f"playwright is not installed: {exc}")
    if not Path(CHROMIUM).exists():
        pytest.fail(f"chromium not found at {CHROMIUM}")
    return expect, sync_playwright


def _launch(p):
    return p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)


@contextlib.contextmanager
def logged_in_page(base: str, username: str, *, width: int = 1280):
    """A page of a fresh headless chromium at ``base``, logged in as ``username``; the browser closes after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": width, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(base)
            _log_in(page, username)
            yield page
        finally:
            browser.close()


def double_click(page, locator, gap_ms: int) -> None:
    """Two clicks ``gap_ms`` apart at the middle of ``locator``, then wait for the runs to finish."""
    locator.scroll_into_view_if_needed()
    box = locator.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.click(x, y)
    page.wait_for_timeout(gap_ms)
    page.mouse.click(x, y)
    _settle(page)


def _pair_on_screen(page) -> int:
    text = page.get_by_text(PAIR_CAPTION).first.inner_text(timeout=TIMEOUT_MS)
    return int(PAIR_CAPTION.search(text).group(1))


def test_annotate_with_keys_then_export_as_admin(server, seeded, tmp_path):
    expect, sync_playwright = require_browser()
    _, database = seeded
    expect.set_options(timeout=TIMEOUT_MS)
    upload = tmp_path / "new-pairs.jsonl"
    upload.write_text("".join(json.dumps({"prompt": f"Imported prompt {i}", "response_a": f"left {i}",
                                          "response_b": f"right {i}"}) + "\n" for i in range(2)))

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(TIMEOUT_MS)
            evil_requests: list[str] = []
            page.on("request", lambda request: "evil.example" in request.url and evil_requests.append(request.url))
            # Nothing else leaves the server either (annotation sites may be offline or private).
            elsewhere: list[str] = []
            page.on("request", lambda request: request.url.startswith(("http:", "https:", "ws:", "wss:"))
                    and not request.url.startswith(server) and elsewhere.append(request.url))
            page.goto(server)
            expect(page.get_by_role("button", name="Log in")).to_be_visible()
            _shot(page, "login", page.get_by_role("button", name="Log in"))
            _log_in(page, "annie")
            expect(page.get_by_text("Which response is better?")).to_be_visible()
            # The hostile chat pair comes first: a chat, inert HTML, no images, code kept.
            expect(page.get_by_test_id("stChatMessage")).to_have_count(3)
            expect(page.get_by_text("print('kept <b>$x$</b>')")).to_be_visible()
            expect(page.get_by_text("<script>window.__pwned = 'script'</script>", exact=False)).to_have_count(1)
            # HTML around a URL is shown as written, not as a link reading 'https://…">Example&lt;/a>'.
            expect(page.get_by_text('<a href="https://evil.example/page">Example</a>', exact=True)).to_have_count(1)
            assert page.locator("img[src*='evil.example']").count() == 0
            assert page.locator("main img").count() == 0
            assert page.locator(".katex").count() == 0
            assert page.evaluate("() => window.__pwned === undefined")
            # Streamlit's own Markdown extensions stay text: no colour, badge, tooltip or icon.
            assert page.locator("main :is(.stMarkdownColoredText, .stMarkdownColoredBackground, "
                                ".stMarkdownBadge, [aria-label='verified icon'])").count() == 0
            expect(page.get_by_text(":green-background[Verified by experts] :help[only on hover] color:red")
                   ).to_have_count(1)
            look = page.evaluate(_LOOK_JS)
            assert look["heading_px"] <= look["text_px"], look  # no "# VERIFIED" louder than the page
            assert look["quote_opacity"] >= 0.5, look  # six quotes deep is still readable
            assert look["rtl_gap_px"] < 2, look  # Arabic starts at the right
            for width in (1280, 800):  # the labels stay whole; nothing scrolls sideways
                page.set_viewport_size({"width": width, "height": 1000})
                _settle(page)
                assert page.evaluate(_TRUNCATED_JS) == [], width
                assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth"), width
            page.set_viewport_size({"width": 1400, "height": 1000})
            _shot(page, "annotate", page.get_by_text("Optional: rationale, flags"))

            # G: the guidelines over the pair; Esc closes them and the pair is the same.
            _settle(page)
            before = _pair_on_screen(page)
            page.get_by_text("Which response is better?").click()
            page.keyboard.press("g")
            expect(page.get_by_role("dialog")).to_contain_text("Judge, in this order:")
            _shot(page, "annotate_guidelines", page.get_by_role("dialog").get_by_text("Open the guidelines page"))
            page.keyboard.press("Escape")
            expect(page.get_by_role("dialog")).to_have_count(0)
            assert _pair_on_screen(page) == before

            pressed: list[tuple[int, str]] = []
            for key in KEYS:
                # The previous pair's widgets are replaced by this run: let it finish before typing.
                _settle(page)
                before = _pair_on_screen(page)
                if key == "b":
                    # Letters typed into the rationale must not fire the shortcuts.
                    page.get_by_text("Optional: rationale, flags").click()
                    page.get_by_role("textbox", name="Rationale").fill(RATIONALE)
                    page.get_by_role("textbox", name="Rationale").press("a")
                    page.wait_for_timeout(500)
                    assert _pair_on_screen(page) == before
                # Focus the page body, not a text box, so the key reaches the shortcuts.
                page.get_by_text("Which response is better?").click()
                _settle(page)  # the blur commits the rationale in a run of its own
                if key == "a":  # strength by key too: 2 (clearly better), then the judgment
                    page.keyboard.press("2")
                    _settle(page)
                    expect(page.get_by_role("button", name=re.compile(r"^Clearly better"))).to_have_attribute(
                        "kind", "primary")
                page.keyboard.press(key)
                expect(page.get_by_text(PAIR_CAPTION).first).not_to_have_text(
                    re.compile(rf"Pair #{before}\b"))
                pressed.append((before, key))
            expect(page.get_by_text("Judged today")).to_be_visible()
            _shot(page, "annotate_after_three", page.get_by_text("Optional: rationale, flags"))

            page.get_by_role("link", name="Guidelines").click()
            _shot(page, "guidelines", page.get_by_text("Judge, in this order:"))

            page.get_by_role("button", name="Log out").click()
            expect(page.get_by_role("button", name="Log in")).to_be_visible()
            _log_in(page, "root")
            expect(page.get_by_role("link", name="Export")).to_be_visible()
            for name, ready in (("Import", page.get_by_test_id("stFileUploader")),
                                ("Users", page.get_by_role("tab", name="Manage a user"))):
                page.get_by_role("link", name=name).click()
                _shot(page, name.lower(), ready)

            page.get_by_role("link", name="Import").click()
            page.locator("input[type=file]").set_input_files(upload)
            _shot(page, "import_preview", page.get_by_role("button", name="Import"))
            page.get_by_role("button", name="Import").click()
            expect(page.get_by_text("added 2 comparisons", exact=False)).to_be_visible()
            page.get_by_role("link", name="Export").click()
            _shot(page, "export", page.get_by_role("button", name="Judgments JSONL"))
            with page.expect_download() as download_info:
                page.get_by_role("button", name="Judgments JSONL").click()
            download = download_info.value
            rows = [json.loads(line) for line in Path(download.path()).read_text().splitlines() if line]
        finally:
            browser.close()

    assert evil_requests == []
    assert elsewhere == []
    with database.read() as session:
        imported = session.scalars(select(Prompt.text).where(Prompt.text.like("Imported prompt %"))).all()
        assert sorted(imported) == ["Imported prompt 0", "Imported prompt 1"]
        annie = session.scalar(select(User).where(User.username == "annie"))
        stored = {j.comparison_id: j for j in session.scalars(select(Judgment).where(
            Judgment.annotator_id == annie.id))}
    assert sorted(stored) == sorted(cid for cid, _ in pressed)
    by_comparison = {row["comparison_id"]: row for row in rows}
    assert len(rows) == 3
    for cid, key in pressed:
        row = by_comparison[cid]
        expected = _expected(key, stored[cid].a_on_left)
        assert (row["annotator"], row["choice"], row["state"]) == ("annie", expected, "active"), row
        assert row["a_on_left"] == stored[cid].a_on_left
        assert row["choice_shown"] == KEYS[key]
        assert row["rationale"] == (RATIONALE + "a" if key == "b" else None)
        assert row["strength"] == (2 if key == "a" else None), row
        assert row["time_spent_ms"] is not None and row["time_spent_ms"] > 0




def test_a_key_pressed_twice_judges_the_pair_on_screen_once(server, seeded):
    """Two presses of a key before the next pair arrives (the second lands while the first one's
    run is still going) record one judgment, of the pair on screen: the second press neither
    judges the next pair unseen nor warns that the pair is "not assigned any more".

    On a loaded machine the test's own "second" press can be sent after the next pair's buttons
    have arrived (the fixed gaps are the test's, not the browser's). That press is for the next
    pair, and the page's half-second guard refuses it with its own toast, which names how soon it
    came: that toast is allowed (and its figure must be under the guard's half second); any other
    toast is not, and the next pair must still not be judged."""
    from playwright.sync_api import expect

    _, database = seeded
    expect.set_options(timeout=TIMEOUT_MS)
    on_screen, warnings = [], []
    guard = re.compile(r"Not saved: that key came (\d+) ms after this pair appeared")
    with logged_in_page(server, "annie", width=1400) as page:
        for gap_ms in (0, 5, 10, 20, 40):
            _settle(page)
            before = _pair_on_screen(page)
            page.get_by_text("Which response is better?").click()
            page.keyboard.press("t")
            page.wait_for_timeout(gap_ms)
            page.keyboard.press("t")
            expect(page.get_by_text(PAIR_CAPTION).first).not_to_have_text(re.compile(rf"Pair #{before}\b"))
            _settle(page)
            on_screen.append(before)
            for toast in page.get_by_test_id("stToast").all():
                text = toast.inner_text()
                refused = guard.search(text)
                if refused is None or int(refused.group(1)) >= 500:
                    warnings.append(text)
                else:
                    print(f"gap {gap_ms} ms: the second press reached the next pair: {text!r}")
    with database.read() as session:
        annie = session.scalar(select(User).where(User.username == "annie"))
        judged = [j.comparison_id for j in session.scalars(
            select(Judgment).where(Judgment.annotator_id == annie.id).order_by(Judgment.id))]
    assert judged == on_screen
    assert warnings == []


def test_a_strength_key_then_a_judgment_key_at_typing_speed_keep_the_strength(server, seeded):
    """2 then A, 80 ms apart (fast typing) and with no pause at all. At typing speed the judgment carries
    the strength: the two presses may reach the server as one run, whose callbacks Streamlit calls judge
    first (tests/ui/test_app.py covers that order). With no pause, a busy server can drop the 2 (Streamlit
    stops its run for the A's before the 2's callback runs: measured 3 to 4 in 30 beside two busy cores,
    none at 60 ms): the page must then say so, reading back what was stored, so U can take it back."""
    from playwright.sync_api import expect

    _, database = seeded
    with logged_in_page(server, "annie") as page:
        for gap_ms in (80, 80, 0, 0):
            page.get_by_role("button", name=re.compile(r"^Clearly better")).wait_for()
            _settle(page)
            page.wait_for_timeout(600)  # past the half-second guard
            before = _pair_on_screen(page)
            page.keyboard.press("2")
            if gap_ms:
                page.wait_for_timeout(gap_ms)
            page.keyboard.press("a")
            expect(page.get_by_text(PAIR_CAPTION).first).not_to_have_text(re.compile(rf"Pair #{before}\b"))
            with database.read() as session:
                judged = session.scalar(select(Judgment).where(Judgment.comparison_id == before))
            assert judged.choice.value == _expected("a", judged.a_on_left)
            assert judged.strength == 2 if gap_ms else judged.strength in (2, None)
            said = f"Last saved: pair #{before}, A is better{' (clearly better)' if judged.strength else ''}. U takes"
            expect(page.get_by_text(re.compile(r"Last saved: pair #"))).to_contain_text(said)


def test_keys_pressed_while_the_guidelines_are_open_judge_nothing(server, seeded):
    """G opens the guidelines over the pair. Before, A, 2 or S pressed while reading them acted on the pair
    behind the dialog (a judgment the annotator never meant); now those keys do nothing until it is closed,
    and Esc gives them back."""
    from playwright.sync_api import expect

    _, database = seeded
    expect.set_options(timeout=TIMEOUT_MS)

    def judged() -> list[int]:
        with database.read() as session:
            return list(session.scalars(select(Judgment.comparison_id).join(User, Judgment.annotator_id == User.id)
                                        .where(User.username == "annie").order_by(Judgment.id)))

    with logged_in_page(server, "annie", width=1400) as page:
        _settle(page)
        pair = _pair_on_screen(page)
        page.get_by_text("Which response is better?").click()
        page.keyboard.press("g")
        dialog = page.get_by_role("dialog")
        expect(dialog).to_be_visible()
        _settle(page)
        for key in ("2", "a", "s", "u"):
            page.keyboard.press(key)
            page.wait_for_timeout(400)
        _settle(page)
        expect(dialog).to_be_visible()
        assert judged() == []
        assert _pair_on_screen(page) == pair
        page.keyboard.press("Escape")
        expect(dialog).to_have_count(0)
        _settle(page)
        page.get_by_text("Which response is better?").click()
        page.wait_for_timeout(600)  # the half-second guard counts from the rerun the dismissal made
        page.keyboard.press("a")
        expect(page.get_by_text(PAIR_CAPTION).first).not_to_have_text(re.compile(rf"Pair #{pair}\b"))
        _settle(page)
    assert judged() == [pair]


@pytest.mark.browser
def test_a_reloaded_or_bookmarked_page_asks_to_log_in_then_opens_there(server):
    """F5 starts a logged-out session: at /review Streamlit said "Page not found" over the login page (only
    the login page was registered) and the admin landed on the overview, as did every shared admin link.
    An annotator at an admin address logs in and is told the page is for admins, with a link to Annotate."""
    from playwright.sync_api import expect, sync_playwright

    require_browser()
    expect.set_options(timeout=TIMEOUT_MS)
    with sync_playwright() as p:
        browser = _launch(p)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{server}/review")
            expect(page.get_by_role("button", name="Log in")).to_be_visible()
            _settle(page)
            expect(page.get_by_text("Page not found")).to_have_count(0)
            expect(page.get_by_test_id("stSidebarNav")).to_have_count(0)
            _log_in(page, "root")
            expect(page.get_by_role("heading", name="Review a comparison")).to_be_visible()
            assert page.url.endswith("/review")

            other = browser.new_page(viewport={"width": 1280, "height": 1000})
            other.set_default_timeout(TIMEOUT_MS)
            other.goto(f"{server}/review")
            _log_in(other, "annie")
            # Told why, rather than "Page not found" and the annotation page (which leased a pair).
            expect(other.get_by_text("is for admins. You are signed in as annie, an annotator")).to_be_visible()
            expect(other.get_by_role("heading", name="Review a comparison")).to_have_count(0)
            expect(other.get_by_text("Page not found")).to_have_count(0)
            assert other.url.endswith("/review")
            other.get_by_role("link", name="Go to Annotate").click()
            expect(other.get_by_role("heading", name="Which response is better?")).to_be_visible()
        finally:
            browser.close()
