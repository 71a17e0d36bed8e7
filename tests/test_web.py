"""The chat page of `ovchat serve`, driven in a real headless Chromium against the real server and model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest
from helpers import GREEDY, Server

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Chromium on a closed network: no background connections, no first-run work.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DOCS = Path(__file__).resolve().parents[1] / "docs"

if not Path(CHROMIUM).exists():  # a missing browser fails the run: these tests prove the page
    if not os.environ.get("OVCHAT_SKIP_BROWSER"):
        raise RuntimeError(
            f"no Chromium at {CHROMIUM}: apt-get install chromium (scripts/setup.sh test does, as root), "
            "or set OVCHAT_SKIP_BROWSER=1 to leave the chat page untested"
        )
    pytest.skip("OVCHAT_SKIP_BROWSER is set and there is no Chromium", allow_module_level=True)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Page:
    """One browser tab on the chat page, failing the test on any script error."""

    def __init__(self, browser, base_url: str, width: int = 1200, height: int = 800, ready: bool = True):
        # Playwright evaluates its waits as strings, which the page's policy forbids; bypassing the policy
        # also means the injection test proves the rendering safe on its own, not only behind the policy.
        self.context = browser.new_context(viewport={"width": width, "height": height}, bypass_csp=True)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.requests: list[dict] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", self._console)
        self.page.on("dialog", self._dialog)
        self.page.on("request", self._request)
        self.base_url = base_url
        self.page.goto(base_url + "/")
        if ready:
            self.wait_model()

    def _console(self, message) -> None:
        # Chromium logs every HTTP error status (a 401 the page handles) as a console error: not a fault.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(message.text)

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.accept()

    def _request(self, request) -> None:
        if request.url.endswith("/v1/chat/completions"):
            self.requests.append(request.post_data_json)

    def wait_model(self) -> None:
        self.page.wait_for_function("document.getElementById('model-name').textContent === 'smollm2-135m'")

    def greedy(self) -> None:
        """Plain greedy decoding, as `ovchat generate` answers (the page otherwise samples as the model recommends)."""
        self.page.click("#settings summary")
        self.page.fill("#temperature", "0")
        self.page.fill("#repetition-penalty", "1")
        self.page.click("#settings summary")

    def send(self, text: str) -> None:
        self.page.fill("#prompt", text)
        self.page.press("#prompt", "Enter")

    def wait_answered(self, count: int, timeout: float = 90_000) -> None:
        """Until `count` answers are finished (stats shown, nothing busy)."""
        self.page.wait_for_function(
            f"document.querySelectorAll('.message.assistant .stats:not([hidden])').length === {count}"
            " && !document.querySelector('[aria-busy]')",
            timeout=timeout,
        )

    def answers(self) -> list[str]:
        return self.page.locator(".message.assistant .content").all_inner_texts()

    def close(self) -> None:
        self.context.close()
        assert self.errors == [], self.errors


def chat(server: Server, messages: list[dict], max_tokens: int = 512) -> str:
    body = {"messages": messages, "max_tokens": max_tokens, **GREEDY}
    answer = httpx.post(server.base_url + "/v1/chat/completions", json=body, timeout=120).json()
    return answer["choices"][0]["message"]["content"]


def test_page_is_served_with_a_strict_policy(server):
    page = httpx.get(server.base_url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe-inline" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    for asset in ("/ui/app.js", "/ui/markdown.js", "/ui/style.css"):
        assert httpx.get(server.base_url + asset).status_code == 200
    assert "http" not in page.text.replace("http-equiv", "")  # nothing from another origin
    missing = httpx.get(server.base_url + "/ui/../cli.py")
    assert missing.status_code == 404


def test_an_answer_streams_in_and_matches_the_api(browser, server):
    tab = Page(browser, server.base_url)
    # Record every state the answer passes through while it streams.
    tab.page.evaluate(
        """() => {
        window.seen = [];
        new MutationObserver(() => {
          const last = document.querySelector('.message.assistant:last-of-type .content');
          if (last && last.textContent && window.seen.at(-1) !== last.textContent) window.seen.push(last.textContent);
        }).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
      }"""
    )
    question = "Write three sentences about the sea."
    tab.greedy()
    tab.send(question)
    tab.wait_answered(1)
    shown = tab.answers()[0]
    assert shown.strip() == chat(server, [{"role": "user", "content": question}]).strip()  # greedy: the same text
    seen = tab.page.evaluate("window.seen")
    assert len(seen) >= 5 and all(shown.startswith(part.strip()[:10]) for part in seen)  # arrived in pieces
    stats = tab.page.inner_text(".message.assistant .stats")
    assert "tokens" in stats and "first token" in stats and "tok/s" in stats
    assert tab.requests[0]["stream"] is True and tab.requests[0]["stream_options"] == {"include_usage": True}
    assert tab.page.evaluate("document.activeElement.id") == "prompt"  # ready for the next message
    tab.close()


def test_stop_cancels_the_answer_on_the_server(browser, server):
    tab = Page(browser, server.base_url)
    tab.page.click("#settings summary")
    tab.page.fill("#max-tokens", "800")
    cancelled = server.metric("ovchat_requests_cancelled_total")

    def freed() -> bool:
        return server.metric("ovchat_requests_cancelled_total") > cancelled and (
            server.metric("ovchat_requests_running") == 0
        )

    # Answers are sampled: one may end by itself just as Stop is clicked, leaving nothing to cancel.
    # Then the next question is stopped; a cancellation must be seen on the server within three.
    for turn in range(3):
        tab.send("Tell me a very long story about a dragon and a knight.")
        tab.page.wait_for_function(
            f"document.querySelectorAll('.message.assistant .content')[{turn}].textContent.length > 40"
        )
        tab.page.click("#stop")
        tab.wait_answered(turn + 1)
        assert "stopped" in tab.page.inner_text(f".message.assistant >> nth={turn} >> .stats")
        assert tab.page.is_visible("#send") and not tab.page.is_visible("#stop")
        assert tab.requests[turn]["max_tokens"] == 800
        for _ in range(100):
            if freed():
                break
            tab.page.wait_for_timeout(100)
        if freed():
            break
    assert freed()  # the server saw the disconnect and gave the slot back
    kept = tab.answers()[0]
    assert kept and len(kept) < 2000  # the partial answer stays on the page
    tab.close()


def test_settings_start_from_the_models_defaults_and_a_loop_is_noted(browser, server):
    from test_loops import BUDGET, first_that_loops_on

    card = httpx.get(server.base_url + "/v1/models").json()["data"][0]
    tab = Page(browser, server.base_url)
    tab.page.click("#settings summary")
    for element, field in [("temperature", "temperature"), ("top-p", "top_p"), ("top-k", "top_k"),
                           ("repetition-penalty", "repetition_penalty")]:
        assert tab.page.input_value(f"#{element}") == ""  # left out of the request: the server's default applies
        assert tab.page.get_attribute(f"#{element}", "placeholder") == str(card["sampling_defaults"][field])
        assert tab.page.locator(f"label[for='{element}']").count() == 1
    assert card["sampling_source"] in tab.page.inner_text("#sampling-note")
    tab.send("Hi")
    tab.wait_answered(1)
    sent = tab.requests[0]
    assert sent["loop_guard"] is True and not {"temperature", "top_p", "top_k", "repetition_penalty"} & set(sent)

    prompt = first_that_loops_on(server)  # greedy
    tab.page.fill("#temperature", "0")
    tab.page.fill("#repetition-penalty", "1")
    tab.page.fill("#max-tokens", str(BUDGET))
    tab.page.click("#settings summary")
    tab.page.click("#new-chat")  # the prompt alone, as the server was asked it
    tab.send(prompt)
    tab.wait_answered(1)
    assert tab.requests[1]["temperature"] == 0 and tab.requests[1]["repetition_penalty"] == 1
    assert "stopped a repeating answer" in tab.page.inner_text(".message.assistant .stats")
    tab.page.reload()  # the note is kept with the conversation, the settings with the page
    tab.wait_answered(1)
    assert "stopped a repeating answer" in tab.page.inner_text(".message.assistant .stats")
    assert tab.page.input_value("#temperature") == "0"
    tab.close()


def test_second_turn_carries_the_first_and_survives_a_reload(browser, server):
    tab = Page(browser, server.base_url)
    first, second = "Give me a number between 1 and 10.", "Double it."
    tab.greedy()
    tab.send(first)
    tab.wait_answered(1)
    tab.send(second)
    tab.wait_answered(2)
    one, two = tab.answers()
    history = tab.requests[1]["messages"]
    assert [m["role"] for m in history] == ["user", "assistant", "user"]
    assert history[0]["content"] == first and history[1]["content"].strip() == one.strip()
    expected = chat(server, history)
    assert two.strip() == expected.strip()  # the model answered the whole conversation...
    assert expected != chat(server, [{"role": "user", "content": second}])  # ...which changes the answer

    tab.page.reload()
    tab.wait_answered(2)
    assert tab.answers() == [one, two]
    assert tab.page.locator(".message.user .content").all_inner_texts() == [first, second]
    assert tab.page.locator(".chat-open").all_inner_texts() == [first]

    tab.page.click("#new-chat")
    assert tab.page.locator(".message").count() == 0
    tab.send("Say hello.")
    tab.wait_answered(1)
    assert tab.page.locator(".chat-open").count() == 2
    assert len(tab.requests[-1]["messages"]) == 1  # a new chat starts with no history
    tab.page.click(f"[aria-label='Delete conversation: {first}']")
    assert tab.dialogs and first in tab.dialogs[-1]
    tab.page.reload()
    assert tab.page.locator(".chat-open").all_inner_texts() == ["Say hello."]
    tab.close()


def test_model_output_is_rendered_as_text_never_as_markup(browser, server):
    tab = Page(browser, server.base_url)
    tab.page.evaluate("window.pwned = 0")
    # The real model repeats the markup back (greedy); the page must show it, not run it.
    tab.greedy()
    tab.send("Repeat exactly: <img src=x onerror=window.pwned=1>")
    tab.wait_answered(1)
    tab.send("Repeat exactly: <script>alert(2)</script>")
    tab.wait_answered(2)
    answers = tab.answers()
    assert "<img src=x onerror=window.pwned=1>" in answers[0]
    assert "<script>" in answers[1]
    # The same through stored history, with Markdown around it: code blocks, links, emphasis.
    hostile = (
        "**bold** and `code`\n\n```html\n<script>window.pwned=2</script>\n```\n"
        '<img src=x onerror="window.pwned=3"> [site](javascript:window.pwned=4) [ok](https://example.org)\n'
        '<iframe src="javascript:window.pwned=5"></iframe>'
    )
    tab.page.evaluate(
        """(text) => {
        const chats = JSON.parse(localStorage.getItem('ovchat.chats.v1'));
        chats[0].messages.push({role: 'user', content: '<b>typed</b>'}, {role: 'assistant', content: text});
        localStorage.setItem('ovchat.chats.v1', JSON.stringify(chats));
      }""",
        hostile,
    )
    tab.page.reload()
    tab.wait_answered(2)  # the stored answer has no stats: two answers with stats, three in all
    tab.page.wait_for_timeout(300)  # time for an injected handler to have fired
    assert not tab.page.evaluate("window.pwned")  # no handler or script of the answer ran
    assert tab.dialogs == []  # no alert() ran
    content = tab.page.locator("#messages")
    assert content.locator("img, script, iframe").count() == 0
    last = tab.page.locator(".message.assistant .content").last
    assert last.locator("strong").inner_text() == "bold"
    assert last.locator("pre code").inner_text().startswith("<script>")
    assert last.locator("a").count() == 1 and last.locator("a").get_attribute("href") == "https://example.org"
    assert tab.page.locator(".message.user .content").last.inner_text() == "<b>typed</b>"
    tab.close()


TRICKY = [
    "**a *b* c** d",
    "**unclosed bold and *unclosed italic",
    "`a``b` ``` `` `",
    "```\nprint('never closed')",  # (a fence's language would be a tag, not text)
    "- one\n+ two\n> four\n# five\n---\nsix",
    "[a](javascript:alert(1)) [b](data:text/html,x) [c](https://example.org/?q=<script>)",
    "*" * 500 + "_" * 500 + "`" * 500,
    "<p onclick=alert(1)>x</p>\n\n<svg onload=alert(1)>",
]


def test_markdown_keeps_every_word_and_always_finishes(browser, server):
    tab = Page(browser, server.base_url)
    texts = tab.page.evaluate(
        "(inputs) => inputs.map((t) => { const d = document.createElement('div');"
        " d.append(window.ovchatMarkdown.render(t));"
        " return [d.textContent, [...d.querySelectorAll('a')].map((a) => a.getAttribute('href'))]; })",
        TRICKY,
    )
    for source, (text, links) in zip(TRICKY, texts, strict=True):
        assert all(link.startswith("https://") for link in links)  # never javascript: or data:
        shown = text + " ".join(links)
        for word in "".join(c if c.isalnum() else " " for c in source).split():
            assert word in shown, (word, source, shown)  # formatting may drop markers, never words
    numbered = tab.page.evaluate(
        "() => { const d = document.createElement('div'); d.append(window.ovchatMarkdown.render('3. x\\n4. y'));"
        " return [d.querySelector('ol').start, d.querySelectorAll('ol > li').length]; }"
    )
    assert numbered == [3, 2]
    tab.close()


def test_keyboard_and_phone_width(browser, server, tmp_path):
    tab = Page(browser, server.base_url, width=390, height=844)
    tab.page.click("#settings summary")
    tab.page.fill("#system-prompt", "You answer briefly.")
    tab.page.click("#settings summary")
    tab.page.fill("#prompt", "Line one")
    tab.page.press("#prompt", "Shift+Enter")
    tab.page.keyboard.type("line two")
    assert tab.page.input_value("#prompt") == "Line one\nline two" and not tab.requests
    tab.page.press("#prompt", "Enter")
    tab.wait_answered(1)
    assert tab.requests[0]["messages"] == [
        {"role": "system", "content": "You answer briefly."},
        {"role": "user", "content": "Line one\nline two"},
    ]
    assert not tab.page.locator("#sidebar").is_visible() or tab.page.evaluate(
        "document.getElementById('sidebar').getBoundingClientRect().right <= 0"
    )
    width = tab.page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390  # nothing wider than the phone
    for element in ("#prompt", "#system-prompt", "#temperature", "#top-p", "#max-tokens"):
        label = tab.page.locator(f"label[for='{element[1:]}']")
        assert label.count() == 1  # every field has a label for screen readers
    shots = [tmp_path / "phone.png"]
    tab.page.screenshot(path=shots[0])
    tab.page.click("#toggle-sidebar")
    assert tab.page.get_attribute("#toggle-sidebar", "aria-expanded") == "true"
    tab.page.wait_for_function("document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    tab.page.click(".chat-open")  # choosing a conversation closes the panel
    assert tab.page.get_attribute("#toggle-sidebar", "aria-expanded") == "false"
    tab.close()

    desk = Page(browser, server.base_url)
    desk.page.click("#settings summary")
    desk.page.fill("#max-tokens", "90")
    desk.page.click("#settings summary")
    desk.send("What is the capital of France?")
    desk.wait_answered(1)
    desk.send("Write a Python function that adds two numbers.")
    desk.wait_answered(2)
    shots.append(tmp_path / "desktop.png")
    desk.page.screenshot(path=shots[1])
    desk.close()
    for shot in shots:
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("OVCHAT_SCREENSHOTS"):  # refresh the README's pictures
            shutil.copy(shot, DOCS / f"chat-{shot.name}")


def test_the_page_asks_for_the_api_key(browser, smollm2_ov, tmp_path):
    running = Server(smollm2_ov, "--api-key", "sesame", log_path=tmp_path / "serve.log")
    try:
        tab = Page(browser, running.base_url, ready=False)  # the page itself is public; the API is not
        tab.page.wait_for_selector("#key-dialog[open]")
        tab.page.fill("#key-input", "wrong")
        tab.page.press("#key-input", "Enter")
        tab.page.wait_for_selector("#key-dialog[open]")  # refused again: asked again
        tab.page.fill("#key-input", "sesame")
        tab.page.press("#key-input", "Enter")
        tab.wait_model()
        tab.send("Say hello.")
        tab.wait_answered(1)
        assert tab.answers()[0].strip()
        assert tab.requests[0] is not None
        tab.close()
    finally:
        running.stop()


def test_a_server_with_several_models_offers_a_picker(browser, smollm2_ov, tiny_phi3_ov, tmp_path):
    running = Server(smollm2_ov, "--model", str(tiny_phi3_ov), log_path=tmp_path / "serve.log")
    tiny = tiny_phi3_ov.name
    try:
        tab = Page(browser, running.base_url)
        assert tab.page.is_visible("#model-pick") and not tab.page.is_visible("#model-name")
        options = tab.page.locator("#model-pick option").all_inner_texts()
        assert options == ["smollm2-135m", f"{tiny} (loads when asked)"]
        tab.page.select_option("#model-pick", tiny)
        tiny_context = httpx.get(running.base_url + f"/v1/models/{tiny}").json()["context_length"]
        assert tab.page.inner_text("#model-context") == f"{tiny_context:,}-token context"
        tab.send("Hi")
        tab.wait_answered(1)
        assert tab.requests[0]["model"] == tiny and tab.answers()[0].strip()  # the tiny model loaded and answered
        tab.page.reload()  # the pick is remembered
        tab.page.wait_for_function(f"document.getElementById('model-name').textContent === '{tiny}'")
        assert tab.page.input_value("#model-pick") == tiny
        tab.close()
    finally:
        running.stop()
