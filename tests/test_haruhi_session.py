"""haruhi sessions: the character's language, the default prompt, reply cleaning, and bad input at the CLI.

Real parts throughout: the packaged MiniLM, a faiss index on disk, a local OpenAI-compatible server, and the
installed `omnimm` console script in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from omnimm import encoders
from omnimm_plugins.haruhi.character import Character, character_from_script
from omnimm_plugins.haruhi.prompt import clean_reply, known_speakers
from omnimm_plugins.haruhi.scripts import default_system_prompt, parse_turns
from omnimm_plugins.haruhi.session import RolePlaySession, read_session

from .conftest import OMNIMM, REPO
from .openai_server import openai_server

ROMEO_SCRIPT = """\
ROMEO:
He jests at scars that never felt a wound.
But, soft! what light through yonder window breaks?

JULIET:
Ay me!

ROMEO:
She speaks: O, speak again, bright angel!
"""

HARUHI_SCRIPT = """\
春日：
我对普通的人类没有兴趣。如果你们当中有外星人、未来人、异世界人或者超能力者，就来找我吧！

阿虚：
你说的外星人，是认真的吗？

春日：
当然是认真的！SOS团就是为了寻找他们而成立的。
"""

REUSE_EN = "If others' questions are related with the play, please try to reuse the original lines from the play."
REUSE_ZH = "如果其他人的问题和剧本中的情节相关，请尽量重用剧本中的原句。"


@pytest.fixture(scope="module")
def minilm():
    return encoders.build({"name": "hf/sentence-encoder"})


def built(tmp_path: Path, minilm, script: str, name: str, language: str) -> Character:
    path = tmp_path / f"{name}.txt"
    path.write_text(script, encoding="utf-8")
    character = character_from_script(path, name, window=3, language=language)
    character.save(tmp_path / "character")
    character.index(built_encoder=minilm)
    return character


@pytest.fixture
def romeo(tmp_path: Path, minilm) -> Character:
    return built(tmp_path, minilm, ROMEO_SCRIPT, "ROMEO", "en")


@pytest.fixture
def haruhi(tmp_path: Path, minilm) -> Character:
    return built(tmp_path, minilm, HARUHI_SCRIPT, "春日", "zh")


def run_cli(*args: object, stdin: bytes = b"") -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIMM_")}
    done = subprocess.run(
        [str(OMNIMM), *map(str, args)], input=stdin, capture_output=True, cwd=REPO, env=env, timeout=300
    )
    done.stdout, done.stderr = done.stdout.decode(), done.stderr.decode()
    return done


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    assert "Traceback" not in result.stderr, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("error:")]


def answer(content: str):
    """A server behaviour: one valid chat answer with `content`."""

    def send(handler: BaseHTTPRequestHandler) -> None:
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
        handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        handler.wfile.write(f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    return send


def short_body(handler: BaseHTTPRequestHandler) -> None:
    """Promises 400 bytes, sends 12 and hangs up."""
    handler.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: 400\r\n\r\n{"choices": ')
    handler.wfile.flush()


# -- language ---------------------------------------------------------------------------------------------------


def test_a_chinese_character_gets_chinese_headings_and_bracketed_queries(haruhi: Character, minilm, tmp_path: Path):
    with openai_server() as server:
        llm = {"name": "openai/chat", "base_url": server.url, "model": "m"}
        config = {"character": str(haruhi.folder), "llm": llm, "user_role": "阿虚"}
        session = RolePlaySession.from_config(config, encoder=minilm)
        assert session.language == "zh"
        session.ask("你好")
        sent = server.requests[0]["messages"]
    assert sent[-1]["content"] == "阿虚:「你好」"
    assert "角色的经典桥段如下" in sent[0]["content"] and "Classic scenes" not in sent[0]["content"]
    assert REUSE_ZH in sent[0]["content"]  # the default zh instruction, reuse request included
    session.save(tmp_path / "s.json")
    resumed = RolePlaySession.resume(tmp_path / "s.json", encoder=minilm)
    assert resumed.language == "zh" and resumed.format_query("再见") == "阿虚:「再见」"


def test_the_config_language_overrides_the_characters_and_narrators_speak_plainly(haruhi: Character, minilm):
    config = {"character": str(haruhi.folder), "prompt": {"language": "en"}, "user_role": "Kyon"}
    session = RolePlaySession.from_config(config, encoder=minilm)
    assert session.format_query("hello") == "Kyon: hello"
    prompt, _ = session.prepare("hello")
    assert "Classic scenes for the role" in prompt.messages[0]["content"]
    chinese = RolePlaySession.from_config({"character": str(haruhi.folder)}, encoder=minilm)
    assert chinese.format_query("夕阳西下。", role="旁白") == "旁白:夕阳西下。"


def test_full_width_colons_open_turns_in_chinese_scripts():
    turns = parse_turns(HARUHI_SCRIPT)
    assert [t.speaker for t in turns] == ["春日", "阿虚", "春日"]


def test_a_speaker_without_words_does_not_swallow_the_next_speaker_line():
    turns = parse_turns("TITUS:\n\nCOMINIUS:\nNoble Marcius!\n")  # tinyshakespeare, line 400
    assert [(t.speaker, t.speech, t.line) for t in turns] == [("COMINIUS", "Noble Marcius!", 3)]


# -- the default system prompt --------------------------------------------------------------------------------


def test_the_default_prompt_asks_to_reuse_the_original_lines_in_the_characters_language(tmp_path: Path):
    assert default_system_prompt("ROMEO").endswith(REUSE_EN)
    assert default_system_prompt("春日", language="zh").endswith(REUSE_ZH)
    script = tmp_path / "play.txt"
    script.write_text(ROMEO_SCRIPT, encoding="utf-8")
    result = run_cli("haruhi", "import-script", script, "ROMEO", "--out", tmp_path / "R", "--index", "flat")
    assert result.returncode == 0, result.stderr
    assert REUSE_EN in (tmp_path / "R" / "system_prompt.txt").read_text(encoding="utf-8")


# -- reply cleaning -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "own", "speakers", "expected"),
    [
        ("ROMEO: It is my lady, O, my love!\nJULIET: Romeo?", "ROMEO", {"JULIET"}, "It is my lady, O, my love!"),
        ("It is my lady.\nO, my love!\n\nJuliet: Wherefore?", "ROMEO", {"JULIET"}, "It is my lady.\nO, my love!"),
        ("ROMEO:\nShe speaks.\n\nBENVOLIO:\nHere comes Romeo.", "ROMEO", set(), "She speaks."),
        ("春日:「无聊死了。」\n阿虚:「那你想怎样？」", "春日", set(), "无聊死了。"),
        ("春日：「第一句。」\n春日：「第二句。」\n古泉：「真有意思。」", "春日", set(), "第一句。\n第二句。"),
        ("我要去找外星人。\n阿虚：你疯了。", "春日", {"阿虚"}, "我要去找外星人。"),
        ("Mark me: I go to Verona.\nNote: tonight.", "ROMEO", {"JULIET"}, "Mark me: I go to Verona.\nNote: tonight."),
        ('ROMEO: "Not I, believe me."', "ROMEO", set(), "Not I, believe me."),
        ("JULIET: Romeo, Romeo!", "ROMEO", {"JULIET"}, "JULIET: Romeo, Romeo!"),  # nothing of ROMEO's: kept
    ],
)  # fmt: skip
def test_replies_are_cut_at_the_next_speaker_and_lose_the_echoed_name(raw, own, speakers, expected):
    assert clean_reply(raw, own, speakers) == expected


def test_known_speakers_come_from_script_and_chatharuhi_lines():
    scenes = ["ROMEO:\nAy me!\n\nLADY CAPULET:\nWhat, ho!", "阿虚:「你好」\n旁白:夕阳西下。"]
    assert known_speakers(scenes) == {"ROMEO", "LADY CAPULET", "阿虚"}


@pytest.mark.timeout(300)
def test_the_cli_prints_and_keeps_only_the_characters_words(romeo: Character, tmp_path: Path):
    session = tmp_path / "chat.json"
    with openai_server() as server:
        server.then = [answer("ROMEO: I am here, sweet.\nJULIET: Art thou?\nROMEO: I am."), answer("Farewell.")]
        result = run_cli(
            "haruhi", "chat", romeo.folder, "--endpoint", server.url, "--role", "JULIET", "--session", session,
            stdin=b"Romeo?\nGood night.\n",
        )  # fmt: skip
        second = server.requests[1]["messages"]
    assert result.returncode == 0, result.stderr
    assert "ROMEO: I am here, sweet.\n" in result.stdout and "Art thou" not in result.stdout
    assert second[2] == {"role": "assistant", "content": "I am here, sweet."}
    saved = json.loads(session.read_text(encoding="utf-8"))
    assert [h["reply"] for h in saved["history"]] == ["I am here, sweet.", "Farewell."]


# -- bad input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "character", "expected"),
    [
        (b"ROMEO:\nAy me!\n\nEnter JULIET above\n", "ROMEO", "play.txt:4: text outside a turn"),
        (b"ROMEO:\nAy me!\n", "TYBALT", "play.txt: 'TYBALT' never speaks; speakers include ROMEO"),
        (b"", "ROMEO", "play.txt: no turns"),
        (b"ROMEO:\nAy me!\nsoft \xff light\n", "ROMEO", "play.txt:3: not UTF-8 text (byte 0xff at column 6"),
    ],
)
def test_import_script_reports_bad_scripts_in_one_line(tmp_path: Path, content: bytes, character: str, expected):
    (tmp_path / "play.txt").write_bytes(content)
    result = run_cli("haruhi", "import-script", tmp_path / "play.txt", character, "--out", tmp_path / "out")
    assert result.returncode == 1
    errors = error_lines(result)
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("session_text", "expected"),
    [
        ('{"format": "omnimm-haruhi-session/1", "config": {"charac', "s.json:1: not valid JSON: Unterminated string"),
        ('{"format": "omnimm-haruhi-session/1", "config": [], "history": []}', "s.json: config: expected a mapping"),
        (
            '{"format": "omnimm-haruhi-session/1", "config": {"character": "R", "prompt": {"top_k": "ten"}}, '
            '"history": []}',
            "s.json: config.prompt.top_k: Input should be a valid integer",
        ),
        (
            '{"format": "omnimm-haruhi-session/1", "config": {"character": "R"}, "history": [{"user": 1}]}',
            "s.json: history[0]: expected {user, reply} strings",
        ),
    ],
)
def test_chat_refuses_a_corrupt_session_file_in_one_line(tmp_path: Path, session_text: str, expected: str):
    path = tmp_path / "s.json"
    path.write_text(session_text, encoding="utf-8")
    with pytest.raises(ValueError, match=r"s\.json"):
        read_session(path)
    result = run_cli("haruhi", "chat", "--session", path, "--no-llm", stdin=b"hello\n")
    assert result.returncode == 1
    errors = error_lines(result)
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert path.read_text(encoding="utf-8") == session_text  # never overwritten


def test_chat_refuses_an_ftp_endpoint_before_loading_anything(tmp_path: Path):
    result = run_cli("haruhi", "chat", tmp_path / "absent", "--endpoint", "ftp://127.0.0.1/v1", stdin=b"hi\n")
    assert result.returncode == 1
    errors = error_lines(result)
    assert errors == ["error: ValueError: --endpoint: expected an http:// or https:// URL, got 'ftp://127.0.0.1/v1'"]


@pytest.mark.timeout(300)
def test_chat_reports_a_line_that_is_not_utf8_and_a_cut_short_answer_and_goes_on(romeo: Character, tmp_path: Path):
    with openai_server() as server:
        server.then = [short_body] * 3  # the first call and its two retries
        result = run_cli(
            "haruhi", "chat", romeo.folder, "--endpoint", server.url, "--session", tmp_path / "s.json",
            stdin=b"soft \xff light\nRomeo?\nAre you there?\n",
        )  # fmt: skip
    assert result.returncode == 1
    errors = error_lines(result)
    assert len(errors) == 2, result.stderr
    assert "stdin line 1: not UTF-8 text (byte 0xff at column 6)" in errors[0]
    assert "cut short" in errors[1] and "gave up after 3 attempt(s)" in errors[1]
    assert "ROMEO: reply 4 to: Are you there?" in result.stdout
    saved = json.loads((tmp_path / "s.json").read_text(encoding="utf-8"))
    assert [h["user"] for h in saved["history"]] == ["Are you there?"]
