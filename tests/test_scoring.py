"""Scoring with the active model: service, CLI on a file, model pick-up, errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
from sqlalchemy import select

from annotate import cli, retrain, scoring
from annotate.errors import ModelError, PrefloopError
from annotate.models import ModelVersion
from tests.test_retrain import BAD, GOOD, add_pairs, tiny_encoder  # noqa: F401 - fixture


@pytest.fixture
def rt_settings(settings, tiny_encoder):  # noqa: F811
    return dataclasses.replace(settings, encoder_path=str(tiny_encoder), cold_start=0, torch_threads=1)


@pytest.fixture
def trained(db, rt_settings):
    with db.begin() as s:
        add_pairs(s, 0, 80, judged=True)
    result = retrain.run_once(rt_settings, db=db)
    assert result.status == "succeeded"
    return result


def _env(monkeypatch, settings):
    monkeypatch.setenv("PREFLOOP_DATABASE_URL", settings.sqlalchemy_url)
    monkeypatch.setenv("PREFLOOP_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("PREFLOOP_ENCODER_PATH", settings.encoder_path)
    monkeypatch.setenv("PREFLOOP_ENV", "test")


def test_no_model_is_a_clear_error(db, rt_settings, monkeypatch, capsys):
    with pytest.raises(ModelError, match="retrain --once"):
        scoring.score_texts(rt_settings, ["q"], ["a"])
    _env(monkeypatch, rt_settings)
    assert cli.main(["score", "--prompt", "q", "--response", "a"]) == 2
    assert "no reward model" in capsys.readouterr().err


def test_score_texts_ranks_good_over_bad(db, rt_settings, trained):
    prompts = [f"Question {i}: how should I approach topic {i}?" for i in range(300, 310)]
    good = scoring.score_texts(rt_settings, prompts, [GOOD.format(i=i) for i in range(300, 310)])
    bad = scoring.score_texts(rt_settings, prompts, [BAD.format(i=i) for i in range(300, 310)])
    assert all(g["model_version_id"] == trained.model_version_id for g in good)
    assert sum(g["reward"] > b["reward"] for g, b in zip(good, bad)) >= 9
    # each row's reward and uncertainty are the mean and spread of the model's members on that row
    members = scoring.load_model(rt_settings, good[0]["model_path"]).score(
        prompts, [GOOD.format(i=i) for i in range(300, 310)]).members
    assert [g["reward"] for g in good] == pytest.approx(members.mean(0).tolist(), rel=1e-5)
    assert [g["uncertainty"] for g in good] == pytest.approx(members.std(0).tolist(), rel=1e-5)
    chat = [{"role": "user", "content": "Question 5?"}, {"role": "assistant", "content": "Which topic?"},
            {"role": "user", "content": "Topic 5."}]
    (row,) = scoring.score_texts(rt_settings, [chat], [GOOD.format(i=5)])
    assert isinstance(row["reward"], float)


def test_score_cli_on_a_file(db, rt_settings, trained, monkeypatch, tmp_path):
    src = tmp_path / "in.jsonl"
    rows = [{"id": i, "prompt": f"Question {i}: how should I approach topic {i}?",
             "response": (GOOD if i % 2 else BAD).format(i=i)} for i in range(400, 420)]
    src.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "out.jsonl"
    _env(monkeypatch, rt_settings)
    assert cli.main(["score", "--file", str(src), "--out", str(out)]) == 0
    scored = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in scored] == [r["id"] for r in rows]
    assert all(r["model_version_id"] == trained.model_version_id for r in scored)
    good = [r["reward"] for r in scored if r["id"] % 2]
    bad = [r["reward"] for r in scored if not r["id"] % 2]
    assert min(good) > max(bad)
    # An explicit artifact gives the same scores.
    with db.read() as s:
        path = scoring.artifact_location(rt_settings, scoring.active_model(s).artifact_path)
    again = scoring.score_file(rt_settings, src, model_path=path)
    assert [r["reward"] for r in again] == pytest.approx([r["reward"] for r in scored], abs=1e-5)


def test_bad_file_lines_are_named(db, rt_settings, trained, tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "q", "response": "a"}\n{"prompt": "q"}\n')
    with pytest.raises(PrefloopError, match=":2: each line needs"):
        scoring.score_file(rt_settings, src)
    src.write_text("not json\n")
    with pytest.raises(PrefloopError, match=":1: not valid JSON"):
        scoring.score_file(rt_settings, src)


def test_a_file_scores_an_empty_response_and_names_every_bad_line(db, rt_settings, trained, tmp_path):
    """One empty response among 200 policy samples refused the whole file, naming only the first bad line
    (researcher dogfood run): imports keep empty responses and the model trains on them, so a file's empty
    response is scored; its bad lines are all counted and the first 20 named."""
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "q", "response": "a"}\n{"prompt": "q", "response": ""}\n')
    rows = scoring.score_file(rt_settings, src)
    assert [r["response"] for r in rows] == ["a", ""]
    assert all(isinstance(r["reward"], float) for r in rows) and rows[0]["reward"] != rows[1]["reward"]
    lines = ['{"prompt": "q", "response": "a"}'] + ['{"prompt": ""}'] * 3 + ['{"prompt": "", "response": "a"}'] * 22
    src.write_text("\n".join(lines) + "\n")
    with pytest.raises(PrefloopError) as info:
        scoring.score_file(rt_settings, src)
    message = str(info.value).split("\n")
    assert message[0] == f"{src}: 25 bad lines, nothing scored"
    assert message[1:4] == [f"{src}:{n}: each line needs 'prompt' and 'response' fields" for n in (2, 3, 4)]
    assert message[4] == f"{src}:5: the prompt is empty (an empty text would get a reward that means nothing)"
    assert len(message) == 1 + scoring.SHOWN_PROBLEMS + 1 and message[-1] == "... and 5 more"


def test_a_text_prompt_and_its_one_user_turn_chat_get_one_reward(db, rt_settings, trained):
    """They are one prompt to an import; the model gave them two rewards (-0.598 and -0.498; researcher
    dogfood run), so a policy scored with text prompts was off the chats the model learnt from."""
    text = "How do I boil an egg?"
    chat = [{"role": "user", "content": text}]
    by_text, by_chat, longer = scoring.score_texts(
        rt_settings, [text, chat, [*chat, {"role": "assistant", "content": "Boiled?"}, *chat]],
        ["Simmer it for nine minutes."] * 3)
    assert by_text["reward"] == pytest.approx(by_chat["reward"], abs=1e-6)
    assert longer["reward"] != pytest.approx(by_text["reward"], abs=1e-6)  # a longer chat is another prompt


def test_corrupt_artifact_is_a_model_error(db, rt_settings, trained):
    with db.read() as s:
        path = scoring.artifact_location(rt_settings, scoring.active_model(s).artifact_path)
    heads = path / "heads.safetensors"
    heads.write_bytes(heads.read_bytes()[:-10])
    scoring._loaded.clear()
    with pytest.raises(ModelError, match="corrupt"):
        scoring.score_texts(rt_settings, ["q"], ["a"])


def test_new_promotion_is_picked_up_without_restart(db, rt_settings, trained):
    first = scoring.score_texts(rt_settings, ["q"], ["a"])[0]
    with db.begin() as s:
        add_pairs(s, 1000, 40, judged=True)
    second_run = retrain.run_once(rt_settings, db=db)
    assert second_run.status == "succeeded"
    with db.read() as s:
        active = scoring.active_model(s)
        assert active.id == second_run.model_version_id
        assert s.scalar(select(ModelVersion.is_active).where(ModelVersion.id == trained.model_version_id)) is False
    second = scoring.score_texts(rt_settings, ["q"], ["a"])[0]
    assert second["model_version_id"] == second_run.model_version_id != first["model_version_id"]
    assert second["reward"] != first["reward"]


# --------------------------------------------------------------------------- admin model page (AppTest)

PAGE = str(__import__("pathlib").Path(__file__).resolve().parent.parent / "annotate" / "ui" / "pages" / "models.py")


@pytest.fixture
def page_env(sqlite_db, sqlite_settings, tiny_encoder, monkeypatch):  # noqa: F811
    from tests.factories import make_user

    settings = dataclasses.replace(sqlite_settings, encoder_path=str(tiny_encoder), cold_start=0, torch_threads=1)
    _env(monkeypatch, settings)
    with sqlite_db.begin() as s:
        admin = make_user(s, "boss", "admin")
        annotator = make_user(s, "ann")
    return settings, admin, annotator


def _page(actor):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["actor"] = actor
    return at.run()


def test_model_page_refuses_annotators(sqlite_db, page_env):
    _, _, annotator = page_env
    at = _page(annotator)
    assert not at.exception
    assert any("admin" in e.value for e in at.error)
    assert not any(t.value == "Reward model" for t in at.title)


def test_model_page_shows_versions_and_scores(sqlite_db, page_env):
    settings, admin, _ = page_env
    at = _page(admin)
    assert not at.exception
    assert any("No model yet" in i.value for i in at.info)

    with sqlite_db.begin() as s:
        add_pairs(s, 0, 60, judged=True)
    result = retrain.run_once(settings, db=sqlite_db)
    assert result.status == "succeeded"
    at = _page(admin)
    assert not at.exception
    assert any(f"Active: version {result.model_version_id}" in h.value for h in at.subheader)
    assert any(m.label == "Held-out accuracy" and m.value != "—" for m in at.metric)
    assert len(at.dataframe) == 2
    at.text_area(key="score_prompt").input("Question 7: how should I approach topic 7?")
    at.text_area(key="score_response").input(GOOD.format(i=7))
    at.button[-1].click()  # the form's submit button
    at = at.run()
    assert not at.exception
    assert any(m.label == f"Reward (version {result.model_version_id})" for m in at.metric)


def test_another_machines_model_is_a_clear_error_about_shared_storage(db, rt_settings, trained, monkeypatch,
                                                                       capsys, tmp_path):
    """Machine B (its own PREFLOOP_DATA_DIR) shares the database with machine A, which trained the active model."""
    machine_b = dataclasses.replace(rt_settings, data_dir=tmp_path / "machine-b")
    with pytest.raises(ModelError, match="shared by all of them") as err:
        scoring.score_texts(machine_b, ["q"], ["a"])
    assert f"version {trained.model_version_id}" in str(err.value)
    assert "trained on host" in str(err.value)
    _env(monkeypatch, machine_b)
    assert cli.main(["score", "--prompt", "q", "--response", "a"]) == 2
    assert "PREFLOOP_DATA_DIR" in capsys.readouterr().err


def test_rows_that_are_not_text_are_refused_naming_the_row(db, rt_settings, trained):
    """A None response was scored as the text 'None', and a None prompt raised a bare TypeError."""
    assert scoring.score_texts(rt_settings, [], []) == []
    with pytest.raises(PrefloopError, match="row 1: the response must be text, not NoneType"):
        scoring.score_texts(rt_settings, ["q", "q"], ["a", None])
    with pytest.raises(PrefloopError, match="row 0: the prompt must be text or a list of chat messages"):
        scoring.score_texts(rt_settings, [None], ["a"])
    with pytest.raises(PrefloopError, match="as many prompts as responses"):
        scoring.score_texts(rt_settings, ["q"], ["a", "b"])
    with pytest.raises(PrefloopError, match="chat message 0 has unknown role"):
        scoring.score_texts(rt_settings, [[{"role": "robot", "content": "hi"}]], ["a"])


def test_many_rows_are_scored_a_chunk_at_a_time(db, rt_settings, trained, monkeypatch):
    """A large file is featurised SCORE_ROWS rows at a time (it was one feature matrix for every row)."""
    from rm.model import RewardModel

    sizes = []
    original = RewardModel.score

    def score(self, prompts, responses):
        sizes.append(len(prompts))
        return original(self, prompts, responses)

    prompts = [f"Question {i}: how should I approach topic {i}?" for i in range(10)]
    responses = [(GOOD if i % 2 else BAD).format(i=i) for i in range(10)]
    whole = scoring.score_texts(rt_settings, prompts, responses)
    monkeypatch.setattr(RewardModel, "score", score)
    monkeypatch.setattr(scoring, "SCORE_ROWS", 4, raising=False)  # absent before chunking
    chunked = scoring.score_texts(rt_settings, prompts, responses)
    assert sizes == [4, 4, 2]
    assert [r["reward"] for r in chunked] == pytest.approx([r["reward"] for r in whole], abs=1e-5)


def test_missing_and_other_encoder_artifacts_are_model_errors(db, rt_settings, trained, tmp_path):
    with pytest.raises(ModelError, match="no such directory"):
        scoring.score_texts(rt_settings, ["q"], ["a"], model_path=tmp_path / "nowhere")
    with db.read() as s:
        path = scoring.artifact_location(rt_settings, scoring.active_model(s).artifact_path)
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["encoder"]["encoder_id"] = "some-other-encoder"
    (path / "manifest.json").write_text(json.dumps(manifest))
    scoring._loaded.clear()
    with pytest.raises(ModelError, match="trained on encoder 'some-other-encoder'"):
        scoring.score_texts(rt_settings, ["q"], ["a"])
    scoring._loaded.clear()


def test_a_file_that_is_not_utf8_or_a_folder_is_named_before_any_model_is_loaded(rt_settings, tmp_path, monkeypatch):
    """Random bytes gave a UnicodeDecodeError traceback; a folder was reported as not existing."""
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"prompt": "q", "response": "a"}\n\xff\xfe\x00garbage\n')
    with pytest.raises(PrefloopError, match=r"in\.jsonl:2: not UTF-8"):
        scoring.score_file(rt_settings, src)
    with pytest.raises(PrefloopError, match="is a folder"):
        scoring.score_file(rt_settings, tmp_path)
    # A byte-order mark (as some editors save UTF-8) is not a JSON error.
    seen = []
    monkeypatch.setattr(scoring, "score_texts", lambda settings, prompts, responses, model_path=None, **_: (
        seen.extend(zip(prompts, responses)) or [{} for _ in prompts]))
    src.write_bytes('\ufeff{"prompt": "q", "response": "a"}\n'.encode("utf-8"))
    scoring.score_file(rt_settings, src)
    assert seen == [("q", "a")]


def test_a_file_is_read_as_strictly_as_an_import(rt_settings, tmp_path, monkeypatch):
    """json.loads kept the last of a repeated key ({"prompt": "a", ..., "prompt": "c"} scored "c"), where
    import refuses the line; NaN was read too (and written back out as NaN, which is not JSON)."""
    monkeypatch.setattr(scoring, "score_texts", lambda *a, **k: pytest.fail("a bad file was scored"))
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "q", "response": "a"}\n{"prompt": "a", "response": "b", "prompt": "c"}\n')
    with pytest.raises(PrefloopError, match=r"in\.jsonl:2: not valid JSON \(the key 'prompt' appears more than once"):
        scoring.score_file(rt_settings, src)
    src.write_text('{"prompt": [{"role": "user", "content": "a", "content": "b"}], "response": "r"}\n')
    with pytest.raises(PrefloopError, match=r":1: not valid JSON \(the key 'content' appears more than once"):
        scoring.score_file(rt_settings, src)
    src.write_text('{"prompt": "q", "response": "a", "weight": NaN}\n')
    with pytest.raises(PrefloopError, match=r":1: not valid JSON \(NaN is not a JSON number"):
        scoring.score_file(rt_settings, src)


def test_empty_prompts_and_responses_are_refused_as_on_the_model_page(rt_settings, tmp_path, monkeypatch, capsys):
    """The file and --prompt/--response scored an empty text (-0.158, a reward that means nothing); the
    model page's "Score a response" refused it. One check, scoring.empty_text, serves both (a file's empty
    response is scored: a policy's sample that said nothing)."""
    assert scoring.empty_text("q", "a") is None
    assert scoring.empty_text(" \n", "a") == "the prompt is empty"
    assert scoring.empty_text("q", "") == "the response is empty"
    assert scoring.empty_text("", "\t") == "the prompt and the response are empty"
    assert scoring.empty_text([], "a") == "the prompt is empty"
    assert scoring.empty_text([{"role": "user", "content": " "}], "a") == "the prompt is empty"
    assert scoring.empty_text([{"role": "user", "content": ""}, {"role": "assistant", "content": "hi"}], "a") is None

    monkeypatch.setattr(scoring, "_resolve", lambda *a, **k: pytest.fail("the model was looked for"))
    with pytest.raises(PrefloopError, match="row 1: the response is empty"):
        scoring.score_texts(rt_settings, ["q", "q"], ["a", "  "])
    with pytest.raises(PrefloopError, match="row 0: the prompt is empty"):
        scoring.score_with(object(), [""], ["a"])  # the model page's call
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "q", "response": "a"}\n\n{"prompt": "", "response": "a"}\n')
    with pytest.raises(PrefloopError, match=r"in\.jsonl:3: the prompt is empty"):
        scoring.score_file(rt_settings, src)
    src.write_text('{"prompt": [], "response": ""}\n')  # a file's empty response is scored (below), not its prompt
    with pytest.raises(PrefloopError, match=r":1: the prompt is empty"):
        scoring.score_file(rt_settings, src)

    _env(monkeypatch, rt_settings)
    assert cli.main(["score", "--prompt", "q", "--response", ""]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot score: the response is empty") and err.count("\n") == 1, err


def test_a_bad_chat_role_in_a_file_names_its_line(rt_settings, tmp_path, monkeypatch, capsys):
    """It was 'error: cannot score: chat message 0 has unknown role ...', with no file:line (after the model
    loaded), unlike every other bad line."""
    monkeypatch.setattr(scoring, "_resolve", lambda *a, **k: pytest.fail("the model was looked for"))
    src = tmp_path / "in.jsonl"
    src.write_text('{"prompt": "q", "response": "a"}\n'
                   '{"prompt": [{"role": "bot", "content": "hi"}], "response": "a"}\n')
    with pytest.raises(PrefloopError, match=r"in\.jsonl:2: chat message 0 has unknown role 'bot'"):
        scoring.score_file(rt_settings, src)
    src.write_text('{"prompt": ["hi"], "response": "a"}\n')
    with pytest.raises(PrefloopError, match=r"in\.jsonl:1: chat message 0 must be a dict"):
        scoring.score_file(rt_settings, src)
    with pytest.raises(PrefloopError, match="row 1: chat message 0 has unknown role 'bot'"):
        scoring.score_texts(rt_settings, ["q", [{"role": "bot", "content": "hi"}]], ["a", "a"])

    _env(monkeypatch, rt_settings)
    src.write_text('{"prompt": [{"role": "bot", "content": "hi"}], "response": "a"}\n')
    assert cli.main(["score", "--file", str(src)]) == 2
    assert capsys.readouterr().err.startswith(f"error: {src}:1: chat message 0 has unknown role 'bot'")
