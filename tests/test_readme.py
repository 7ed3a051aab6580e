"""The README's first-run sections hold: settings and their defaults, the commands and options it names,
what ``make run`` / ``make serve`` do, and the demo guidelines' keys.

The Makefile tests run the real Makefile against a stand-in virtualenv whose ``prefloop`` and Streamlit
only say what they were asked (the real ``python`` runs everything else), so they take a second.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import stat
import subprocess
import sys
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from annotate.cli import build_parser
from annotate.settings import Settings, unknown_variables

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")


def section(title: str) -> str:
    """The README text under ``## title``, up to the next ``## `` heading."""
    start = README.index(f"\n## {title}\n")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


# --- settings ---------------------------------------------------------------------------------------------

def settings_table() -> dict[str, str]:
    """``PREFLOOP_NAME -> default cell`` from the Settings section's table."""
    rows = re.findall(r"^\| `(PREFLOOP_[A-Z_]+)` \| ([^|]+) \|", section("Settings"), flags=re.M)
    return {name: cell.strip() for name, cell in rows}


def test_the_settings_table_lists_every_setting_once():
    """Before, the Settings section named 5 of the 22 settings (the whole README 12)."""
    names = re.findall(r"^\| `(PREFLOOP_[A-Z_]+)` \|", section("Settings"), flags=re.M)
    assert sorted(names) == sorted(f"PREFLOOP_{f.name.upper()}" for f in fields(Settings))


def test_the_settings_tables_defaults_are_the_programs():
    """A literal default in the table is the field's default. The database URL's default is derived from
    PREFLOOP_DATA_DIR: the README gave it as sqlite:///.prefloop/prefloop.db, which a PREFLOOP_DATA_DIR
    set elsewhere moves."""
    table = settings_table()
    for field in fields(Settings):
        cell = table.get(f"PREFLOOP_{field.name.upper()}")
        assert cell is not None, field.name
        assert field.default is not MISSING
        if field.default == "":  # derived: the table says from what
            assert not cell.startswith("`") or "$PREFLOOP_" in cell, (field.name, cell)
            continue
        documented = cell.strip("`")
        if isinstance(field.default, (int, float)):
            assert float(documented) == field.default, (field.name, cell)
        else:
            assert documented == str(field.default), (field.name, cell)
    assert table["PREFLOOP_DATABASE_URL"] == "`sqlite:///$PREFLOOP_DATA_DIR/prefloop.db`"
    assert Settings(data_dir=Path("/x")).sqlalchemy_url == "sqlite:////x/prefloop.db"


# PREFLOOP_* variables the README may name that are not settings, each on purpose. Any name in tests/*.py
# was accepted before, and test_cli.py spells settings wrong on purpose (PREFLOOP_DATABSE_URL, ...).
TEST_VARIABLES = {"PREFLOOP_TEST_PG_URL", "PREFLOOP_NO_SKIPS", "PREFLOOP_HH_DATA"}  # tests/conftest.py's
MISSPELT_EXAMPLES = {"PREFLOOP_DATABASE_URI": "PREFLOOP_DATABASE_URL"}  # the Settings section's warning example


def test_every_setting_the_readme_names_exists():
    """Every ``PREFLOOP_*`` in the README is a setting, one of the test suite's own variables, or the
    misspelling the README shows being warned about."""
    settings = {f"PREFLOOP_{f.name.upper()}" for f in fields(Settings)}
    others = set(re.findall(r"PREFLOOP_[A-Z_]+[A-Z]", README)) - settings
    assert others - TEST_VARIABLES - set(MISSPELT_EXAMPLES) == set()
    conftest = (ROOT / "tests" / "conftest.py").read_text(encoding="utf-8")
    for name in TEST_VARIABLES:  # still read by the tests, and not warned about as a misspelling
        assert f'os.environ.get("{name}"' in conftest and unknown_variables({name: "1"}) == [], name
    for name, meant in MISSPELT_EXAMPLES.items():
        assert unknown_variables({name: "x"}) == [
            f"{name} is not a prefloop setting and is ignored (did you mean {meant}?)"]


def test_the_readmes_settings_defaults_elsewhere_match_the_table():
    """Other sections give some defaults in passing ('`PREFLOOP_X` (default N)', '`PREFLOOP_X` = N')."""
    table = {name: cell.strip("`") for name, cell in settings_table().items()}
    for name, value in re.findall(r"`(PREFLOOP_[A-Z_]+)`(?: \(default| =) ([0-9.]+)", README):
        assert float(value) == float(table[name]), name


# --- the command line -------------------------------------------------------------------------------------

def options_of(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings of ``parser`` itself (not of its subcommands: 'users list --role' is no option)."""
    return {option for action in parser._actions for option in action.option_strings}


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return found[0].choices if found else {}


def commands_of_line(line: str) -> list[tuple[str, argparse.ArgumentParser, str]]:
    """(command, its parser, its words) for each command a line of the block shows: ``prefloop users
    deactivate alice | activate alice | list`` shows three users commands; a ``|`` before anything but a
    sibling command (``retrain --once | --watch``) goes on with the same command."""
    words = line.split()
    assert words[0] == "prefloop", line
    out: list[tuple[str, argparse.ArgumentParser, str]] = []
    parent, parser, path, rest = None, build_parser(), ["prefloop"], words[1:]
    for n, segment in enumerate(" ".join(rest).split(" | ")):
        seg_words = segment.split()
        if n and seg_words and parent is not None and seg_words[0] in subcommands(parent):
            parser, path = parent, path[:-1]  # a sibling: users deactivate ... | activate ...
        elif n:
            name, parser, text = out.pop()
            out.append((name, parser, f"{text} | {segment}"))
            continue
        while seg_words and seg_words[0] in subcommands(parser):
            parent, parser = parser, subcommands(parser)[seg_words[0]]
            path.append(seg_words.pop(0))
        assert len(path) > 1, line
        out.append((" ".join(path), parser, " ".join(seg_words)))
    return out


def test_every_command_and_option_in_the_command_line_section_exists():
    block = re.search(r"```bash\n(.*?)```", section("Command line"), flags=re.S).group(1)
    commands = subcommands(build_parser())
    option = r"(?<![\w-])--[a-z][a-z-]*"
    for line in block.replace("\\\n", " ").splitlines():
        code, _, comment = line.partition("#")
        shown = commands_of_line(code)
        for command, parser, text in shown:  # each option on its own (sub)command's parser
            for name in re.findall(option, text):
                assert name in options_of(parser), (command, name)
        # A comment's options are the line's first command's ('# or --file in.jsonl [--out out.jsonl]').
        for name in re.findall(option, comment):
            assert name in options_of(shown[0][1]), (shown[0][0], name, comment)
    users = subcommands(commands["users"])
    assert {"add", "deactivate", "activate", "reset-password", "set-role", "rename", "list"} <= set(users)
    for action in users:  # every users command is in the block
        assert re.search(rf"(users|\|) {re.escape(action)}\b", block), action
    import_format = next(a for a in commands["import"]._actions if "--format" in a.option_strings)
    named = re.findall(r"\(`--format (\w+)`\)|\(`(\w+)`\) —", section("Import formats"))
    assert ["".join(fmt) for fmt in named] == list(import_format.choices)
    assert re.search(r"--format " + re.escape("|".join(import_format.choices)), block)


# --- make run / make serve ---------------------------------------------------------------------------------

STUB_PREFLOOP = """#!/bin/sh
echo "prefloop $*"
if [ "$1" = retrain ]; then echo "watcher up"; exec sleep 60; fi
"""

STUB_PYTHON = """#!/bin/sh
if [ "$1" = -m ] && [ "$2" = streamlit ]; then
  echo "streamlit $*"
  if [ -n "$STUB_STREAMLIT_SERVES" ]; then exec sleep 60; fi  # up until stopped, as Streamlit is
  # Stay up until the watcher has written its first line (the recipe's trap stops it when this exits).
  for _ in $(seq 100); do grep -q "watcher up" "$PREFLOOP_DATA_DIR/retrain.log" 2>/dev/null && exit 0; sleep 0.1; done
  echo "the watcher never wrote its log" >&2; exit 3
fi
exec {python} "$@"
"""


@pytest.fixture
def stub_venv(tmp_path) -> Path:
    """A virtualenv stand-in that 'make' finds installed: prefloop and Streamlit only print their arguments."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for name, text in (("prefloop", STUB_PREFLOOP), ("python", STUB_PYTHON.format(python=sys.executable))):
        path = venv / "bin" / name
        path.write_text(text)
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    for stamp in (".installed", ".dev-installed"):
        (venv / stamp).touch()  # newer than pyproject.toml, so 'make' installs nothing
    return venv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def make(target: str, venv: Path, data_dir: Path, port: int, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PREFLOOP_", "MAKE"))}
    environ.update(env, PREFLOOP_DATA_DIR=str(data_dir))
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), target, f"VENV={venv}",
                           f"PORT={port}"], env=environ, capture_output=True, text=True, timeout=120)


def test_make_run_starts_the_watcher_when_nothing_made_the_data_directory(stub_venv, tmp_path):
    """On PostgreSQL 'prefloop db upgrade' makes no data directory; 'make run' then could not open
    $PREFLOOP_DATA_DIR/retrain.log ('Directory nonexistent'), served without a watcher, and said it ran."""
    data = tmp_path / "data"
    result = make("run", stub_venv, data, free_port())
    assert result.returncode == 0, result.stderr
    assert "prefloop db upgrade" in result.stdout and "prefloop demo" in result.stdout
    assert "watcher up" in (data / "retrain.log").read_text()
    assert "streamlit -m streamlit run streamlit_app.py" in result.stdout


def test_make_run_on_a_port_in_use_says_so_before_starting_anything(stub_venv, tmp_path):
    """Before, a second 'make run' started a second watcher and Streamlit, which then stopped with
    'Port N is not available'."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = make("run", stub_venv, tmp_path / "data", port)
    assert result.returncode != 0
    assert f"port {port} is in use" in result.stderr and "PORT=8765 make run" in result.stderr
    assert "streamlit" not in result.stdout and "prefloop retrain" not in result.stdout
    assert not (tmp_path / "data" / "retrain.log").exists()


def test_make_serve_serves_without_the_demo(stub_venv, tmp_path):
    """A team's own campaign: the demo's 54 pairs joined every queue, and nothing removes them."""
    port = free_port()
    result = make("serve", stub_venv, tmp_path / "data", port)
    assert result.returncode == 0, result.stderr
    assert "prefloop db upgrade" in result.stdout and "prefloop demo" not in result.stdout
    assert (f"no admin yet: create one with PREFLOOP_DATA_DIR={tmp_path / 'data'} {stub_venv}/bin/prefloop users add "
            f"NAME --role admin, then log in at http://localhost:{port}\n") in result.stdout
    assert "streamlit -m streamlit run" in result.stdout


def test_make_serves_hint_names_the_database_the_server_uses_without_its_password(stub_venv, tmp_path):
    """The hint said '.venv/bin/prefloop users add NAME --role admin' whatever PREFLOOP_DATA_DIR and
    PREFLOOP_DATABASE_URL the server was started with: copied, it made the admin in the default .prefloop/."""
    url = "postgresql+psycopg://team:s3cret@db.example:5432/prefloop"
    result = make("serve", stub_venv, tmp_path / "data", free_port(), PREFLOOP_DATABASE_URL=url)
    assert result.returncode == 0, result.stderr
    assert (f"create one with PREFLOOP_DATA_DIR={tmp_path / 'data'} "
            "PREFLOOP_DATABASE_URL='postgresql+psycopg://team:***@db.example:5432/prefloop' "
            f"{stub_venv}/bin/prefloop users add NAME --role admin (the database password is hidden: write it in "
            "place of ***), then log in at") in result.stdout
    assert "s3cret" not in result.stdout + result.stderr


def running_in_group(pgid: int) -> list[str]:
    """The commands of the processes of group ``pgid`` that still run (zombies left for init to reap are not)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
            command = (stat.parent / "cmdline").read_text().replace("\0", " ").strip()
        except OSError:  # ended meanwhile
            continue
        if int(group) == pgid and state != "Z":
            found.append(command)
    return found


def test_ctrl_c_stops_make_run_and_its_watcher_as_the_readme_says(stub_venv, tmp_path):
    """The README never said how to stop 'make run'. Ctrl-C signals the terminal's foreground process group."""
    import signal
    import time

    assert "Ctrl-C in that terminal stops the server and its watcher" in section("Two commands")
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("PREFLOOP_", "MAKE"))}
    environ.update(PREFLOOP_DATA_DIR=str(tmp_path / "data"), STUB_STREAMLIT_SERVES="1")
    out = tmp_path / "make.out"

    def as_a_terminal_starts_it():  # its own process group, SIGINT not ignored (as it is for a background job)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.setpgid(0, 0)

    with out.open("w") as sink:
        proc = subprocess.Popen(["make", "--no-print-directory", "-C", str(ROOT), "run", f"VENV={stub_venv}",
                                 f"PORT={free_port()}"], env=environ, stdout=sink, stderr=subprocess.STDOUT,
                                preexec_fn=as_a_terminal_starts_it)
    try:
        for _ in range(300):
            if "streamlit -m streamlit" in out.read_text() and "watcher up" in (
                    (tmp_path / "data" / "retrain.log").read_text() if (tmp_path / "data" / "retrain.log").exists()
                    else ""):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(out.read_text())
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=30)
        for _ in range(100):  # nothing of the group is left: not the stand-in server, not its watcher
            if not running_in_group(proc.pid):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"outlived Ctrl-C: {running_in_group(proc.pid)}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_make_run_gives_streamlit_the_upload_limit(stub_venv, tmp_path):
    """.streamlit/config.toml caps uploads at 200 MB, so a larger PREFLOOP_MAX_UPLOAD_MB was refused by
    Streamlit's uploader before the importer saw the file."""
    result = make("run", stub_venv, tmp_path / "data", free_port(), PREFLOOP_MAX_UPLOAD_MB="500")
    assert result.returncode == 0, result.stderr
    assert "--server.maxUploadSize 500" in result.stdout
    result = make("run", stub_venv, tmp_path / "data", free_port())
    assert "maxUploadSize" not in result.stdout  # .streamlit/config.toml's, which matches the default


# --- the demo's guidelines --------------------------------------------------------------------------------

def key_rows(text: str) -> dict[str, str]:
    return {key: meaning for keys, meaning in re.findall(r"^\| (`[A-Z0-9]`(?:(?: / | )`[A-Z0-9]`)*) \| (.+?) \|$", text,
                                                          flags=re.M)
            for key in re.findall(r"`([A-Z0-9])`", keys)}


def test_the_demo_guidelines_name_the_keys_the_readme_does():
    """The default guidelines said U undoes 'your last judgment'; it undoes a skip too, if that came last."""
    guidelines = (ROOT / "annotate" / "demo" / "guidelines.md").read_text(encoding="utf-8")
    readme, shown = key_rows(section("Annotating")), key_rows(guidelines)
    assert sorted(shown) == sorted(readme) == list("123ABGSTUX")
    assert "skip" in readme["U"] and "skip" in shown["U"]
