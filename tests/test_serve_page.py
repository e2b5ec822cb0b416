"""The page at `/` of `omnimm serve`, in a real headless Chromium (Debian's /usr/bin/chromium) driven by Playwright:
load it, upload the valley demo's clip, see the sampled frames, ask, read the streamed answer, ask again.

Set OMNIMM_SCREENSHOT=docs/serving-page.png to keep the screenshot the docs show."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from omnimm_plugins.valley.demo import save_untrained_model

from .test_serve import start_server, stop

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying hosts this closed network refuses.
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).is_file(), reason="no Chromium at /usr/bin/chromium (apt-get install -y chromium)"
)


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is in the dev extra")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield chromium
        chromium.close()


def test_upload_a_clip_ask_and_read_the_streamed_answer(browser, tmp_path):
    folder, clip = save_untrained_model(tmp_path / "demo")
    server = start_server(folder)
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 720})
        page.goto(server.url + "/", timeout=30_000)
        page.wait_for_function("document.getElementById('model').textContent.includes('valley (model)')")
        page.set_input_files("#file", str(clip))
        page.wait_for_function("document.querySelectorAll('#frames img').length === 8", timeout=30_000)
        assert "8 frames sampled" in page.text_content("#status")
        page.fill("#question", "what colour is the shape?")
        page.click("#ask")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=60_000)
        first = page.text_content(".turn.assistant")
        assert first.strip(), "the streamed answer is on the page"
        page.fill("#question", "which way does it move?")
        page.click("#ask")
        page.wait_for_function("document.querySelectorAll('.turn.assistant').length === 2", timeout=60_000)
        page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=60_000)
        assert page.locator(".turn.error").count() == 0
        shot = page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert shot[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("OMNIMM_SCREENSHOT"):
            from omnimm.files import atomic_write_bytes

            atomic_write_bytes(os.environ["OMNIMM_SCREENSHOT"], shot)
    finally:
        stop(server)


def test_a_character_answers_on_the_page_with_its_scenes_beside_the_reply(browser, tmp_path):
    from omnimm import encoders
    from omnimm_plugins.haruhi.character import character_from_script

    from .openai_server import openai_server

    script = tmp_path / "romeo.txt"
    script.write_text("ROMEO:\nBut, soft! what light through yonder window breaks?\n\nJULIET:\nAy me!\n")
    character = character_from_script(script, "ROMEO", window=3, language="en")
    character.save(tmp_path / "character")
    character.index(built_encoder=encoders.build({"name": "hf/sentence-encoder"}))
    with openai_server() as llm:
        config = tmp_path / "llm.yaml"
        config.write_text(f"name: openai/chat\nbase_url: {llm.url}\nmodel: tiny\napi_key_env: null\n")
        server = start_server("--character", tmp_path / "character", "--llm", config)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 720})
            page.goto(server.url + "/", timeout=30_000)
            page.wait_for_function("document.getElementById('model').textContent.includes('ROMEO (character)')")
            assert page.text_content("#side-title") == "Retrieved scenes"
            page.fill("#question", "What light is that?")
            page.click("#ask")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('done')", timeout=60_000)
            assert page.text_content(".turn.assistant").strip().startswith("reply 1 to:")
            scenes = page.locator("#scenes li")
            assert scenes.count() >= 1 and "yonder window" in scenes.first.text_content()
            assert "score" in scenes.first.text_content()
        finally:
            stop(server)
