"""`provision chat --web`: the Gradio page in a real headless browser (Debian's chromium, driven by Playwright),
talking to the tiny Qwen2 fixture through the real script in the web test env."""
from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.serve.running import QUESTION, REPLY, TINY, Running, started

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is in the test extra (pip install -e .[test])")

#: Debian's chromium (install.sh --test installs it); Playwright's own browser download is not used.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install "
                                                         "chromium; install.sh --test does it as root)")
#: Each wait in the page ends here at the latest (a hang guard: the tiny model answers in well under a second).
WAIT_MS = 120_000
CHAT_TEXT = "document.querySelector('#chatbot').innerText"
FACTS_TEXT = "document.querySelector('#facts').innerText"


@pytest.fixture(scope="module")
def web(web_env_python: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    with started(["chat", "--web", str(TINY), "--env", str(web_env_python.parent.parent), "--port", "0", "--greedy",
                  "--max-new-tokens", "100000"], tmp_path_factory.mktemp("web-home")) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(web: Running, browser: Any) -> Iterator[Any]:
    """A fresh tab (a new Gradio session) on the chat page, loaded."""
    context = browser.new_context(viewport={"width": 1100, "height": 820})
    tab = context.new_page()
    console: list[str] = []
    tab.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
    tab.on("requestfailed", lambda r: console.append(f"request failed: {r.url} ({r.failure})"))
    try:
        tab.goto(web.url + "/")
        try:
            tab.wait_for_selector("#prompt textarea", timeout=WAIT_MS)
        except sync_api.TimeoutError:
            raise AssertionError("the page did not render; browser console:\n" + "\n".join(console)
                                 + "\nserver:\n" + web.log[-3000:]) from None
        yield tab
    finally:
        context.close()


def until(page: Any, condition: str) -> None:
    page.wait_for_function(condition, timeout=WAIT_MS)


def ask(page: Any, text: str, *, press_enter: bool = True) -> None:
    page.fill("#prompt textarea", text)
    if press_enter:
        page.press("#prompt textarea", "Enter")
    else:
        page.click("#send")


def has(text: str, where: str = CHAT_TEXT) -> str:
    return f"{where}.includes({text!r})"


def test_page_shows_model_precision_device_and_speed(page: Any) -> None:
    facts = page.inner_text("#facts")
    assert "tiny-qwen2" in facts and "nf4 (4-bit, float32 compute)" in facts and "Device cpu" in facts
    assert page.title().startswith("tiny-qwen2")
    ask(page, QUESTION)
    until(page, has(REPLY))
    until(page, has("tokens/s", FACTS_TEXT))
    assert float(page.inner_text("#tokens-per-s")) > 0
    assert "13 tokens" in page.inner_text("#facts")   # 12 tokens of text, then <|im_end|>


def test_second_turn_keeps_the_history(page: Any) -> None:
    ask(page, "My name is Ada.")
    until(page, has("Nice to meet you, Ada."))
    # Only the history says who is asking: alone, this question gets "I do not know your name."
    ask(page, "What is my name?", press_enter=False)
    until(page, has("Your name is Ada."))
    assert "I do not know your name." not in page.inner_text("#chatbot")


def test_stop_ends_the_reply_and_keeps_the_session(page: Any, tmp_path: Path,
                                                   record_property: Callable[[str, object], None]) -> None:
    # Record the reply's length each time the page redraws it: streaming means many growing drafts.
    page.evaluate("""() => {
        window.drafts = [];
        new MutationObserver(() => {
            const bot = document.querySelectorAll('#chatbot .bot');
            if (bot.length) window.drafts.push(bot[bot.length - 1].innerText.split('la').length - 1);
        }).observe(document.querySelector('#chatbot'), {subtree: true, childList: true, characterData: true});
    }""")
    ask(page, "Sing for me.")                        # the fixture's reply that never ends by itself
    until(page, "window.drafts.length && window.drafts[window.drafts.length - 1] >= 30")
    assert "generating" in page.inner_text("#facts")
    page.click("#stop")
    until(page, has("stopped", FACTS_TEXT))
    drafts = page.evaluate("window.drafts")
    stopped_at = page.inner_text("#chatbot").count("la")
    assert len(set(drafts)) >= 3 and drafts == sorted(drafts)   # it grew while it streamed
    assert 30 <= stopped_at < 100000
    screenshot = tmp_path / "web-chat.png"
    page.screenshot(path=str(screenshot), full_page=True)
    record_property("screenshot", str(screenshot))
    assert screenshot.stat().st_size > 10_000

    # The session goes on: the stopped reply stays, the next message is answered, and Stop works again.
    ask(page, "What is my name?")
    until(page, f"{CHAT_TEXT}.split('la').length - 1 > {stopped_at + 30}")
    page.click("#stop")
    until(page, f"{has('stopped', FACTS_TEXT)} && !{has('generating', FACTS_TEXT)}")
    text = page.inner_text("#chatbot")
    assert text.index("Sing for me.") < text.index("What is my name?")
    assert len(page.query_selector_all("#chatbot .bot")) == 2

    # Clear history starts over: the fixture's plain answer comes back.
    page.click("#clear")
    until(page, f"!{has('Sing for me.')}")
    ask(page, QUESTION)
    until(page, has(REPLY))
    assert "la la" not in page.inner_text("#chatbot")
