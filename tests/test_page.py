"""The chat page (xinslm/static/index.html) in headless Chromium, against a real `xinslm serve`
app (conftest.live_server) over a random-weights model that talks long: a reply streams in and
grows, Stop ends it with the page ready again, a second reply completes with its stats, a
refused request shows the server's message, New chat clears the history.

Needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver); without
them the test skips, except under CI (the CI environment variable set), where it fails.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from conftest import REPO, headless_chromium, live_server, save_model_checkpoint, tiny_config
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

from xinslm.model import NanoChatModel

CONTEXT = 4096
SCREENSHOT = REPO / ".artifacts" / "chat-page.png"
STATS = re.compile(r"(\d+) tokens · ([\d.]+) tokens/s")  # a reply of 0.1 s or more
DONE = re.compile(r"^\d+ tokens · ")  # any completed reply's stats line


@pytest.fixture
def browser():
    with headless_chromium((1100, 820)) as chrome:
        yield chrome


def chatty_checkpoint(path: Path, context_len: int = CONTEXT) -> Path:
    """A random-weights model with a long context whose head favours lowercase letters,
    space and a few stops: their logits are large (many at the softcap, so sampling varies),
    every other token's is 0, so it all but never says <|end|> (a reply runs to max_tokens)
    and nearly every token is one printable character."""
    torch.manual_seed(0)
    model = NanoChatModel(tiny_config(context_len=context_len))
    talk = torch.tensor([*b"abcdefghijklmnopqrstuvwxyz", *b"     ,.?"])
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.weight[talk] = 8 * torch.randn(len(talk), model.config.n_embd)
    return save_model_checkpoint(path, model)


def refusal(base: str, body: dict) -> dict:
    """The server's error JSON for a request it refuses."""
    request = urllib.request.Request(
        f"{base}/v1/chat/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    return {"status": refused.value.code, **json.loads(refused.value.read())["error"]}


def set_number(browser, element_id: str, value: int | float) -> None:
    field = browser.find_element(By.ID, element_id)
    field.clear()
    field.send_keys(str(value))


def test_chat_page(browser, tmp_path):
    wait = WebDriverWait(browser, 10, poll_frequency=0.02)
    with live_server(chatty_checkpoint(tmp_path / "chatty.pt")) as base:
        with urllib.request.urlopen(f"{base}/v1/models", timeout=10) as resp:
            model_id = json.load(resp)["data"][0]["id"]
        browser.get(f"{base}/")
        find = browser.find_element

        def find_all(selector: str) -> list:
            return browser.find_elements(By.CSS_SELECTOR, selector)

        def reply(i: int):
            return find_all(".message.assistant")[i]

        def ready() -> bool:
            return find(By.ID, "send").is_displayed() and not find(By.ID, "stop").is_displayed()

        wait.until(lambda _: model_id in find(By.ID, "model").text)

        # A reply streams in and grows; meanwhile Stop stands where Send was.
        set_number(browser, "temperature", 1)
        set_number(browser, "max-tokens", CONTEXT - 100)
        first_message = "Tell me a <b>long</b> story"
        find(By.ID, "input").send_keys(first_message, Keys.ENTER)
        wait.until(lambda _: len(reply(0).find_element(By.CLASS_NAME, "content").text) >= 5)
        seen = len(reply(0).find_element(By.CLASS_NAME, "content").text)
        wait.until(lambda _: len(reply(0).find_element(By.CLASS_NAME, "content").text) > seen + 20)
        assert find(By.ID, "stop").is_displayed() and not find(By.ID, "send").is_displayed()
        # The user's text is shown as text, never parsed as HTML.
        assert find_all(".message.user .content")[0].text == first_message
        assert not find_all("#messages b")

        # Stop: the partial reply stays, marked stopped, stops growing; the page is ready.
        find(By.ID, "stop").click()
        wait.until(lambda _: "stopped" in reply(0).get_attribute("class"))
        stopped = reply(0).find_element(By.CLASS_NAME, "content").text
        assert 20 < len(stopped) < CONTEXT - 200
        assert "stopped" in reply(0).find_element(By.CLASS_NAME, "stats").text
        time.sleep(0.5)
        assert reply(0).find_element(By.CLASS_NAME, "content").text == stopped
        assert ready() and find(By.ID, "input").is_enabled()

        # A second message gets a whole reply (max_tokens of them) and its stats line; the
        # whole history went with it: the prompt holds the stopped reply (a token a character).
        set_number(browser, "max-tokens", 200)
        find(By.ID, "input").send_keys("And then?", Keys.ENTER)
        wait.until(lambda _: len(find_all(".message.assistant")) == 2 and ready())
        stats = reply(1).find_element(By.CLASS_NAME, "stats").text
        tokens, speed = STATS.search(stats).groups()
        assert int(tokens) == 200 and float(speed) > 0, stats
        assert reply(1).find_element(By.CLASS_NAME, "content").text
        assert int(re.search(r"prompt (\d+) tokens", stats).group(1)) > len(stopped)
        assert len(find_all(".message.user")) == 2
        SCREENSHOT.parent.mkdir(exist_ok=True)
        assert browser.save_screenshot(str(SCREENSHOT))

        # New chat clears the conversation.
        find(By.ID, "new-chat").click()
        wait.until(lambda _: not find_all(".message"))

        # A request the server refuses (more new tokens than the context holds): its status
        # and message show, and the message goes back into the input box, unsent. The page
        # sends what this request sends, so the server's message is the same.
        too_many = CONTEXT * 2
        expected = refusal(
            base,
            {
                "model": model_id,
                "messages": [{"role": "user", "content": "Too long?"}],
                "stream": True,
                "stream_options": {"include_usage": True},
                "temperature": 1,
                "max_tokens": too_many,
            },
        )
        assert expected["status"] == 400
        set_number(browser, "max-tokens", too_many)
        find(By.ID, "input").send_keys("Too long?", Keys.ENTER)
        wait.until(lambda _: find(By.ID, "error").is_displayed())
        error = find(By.ID, "error").text
        assert "400" in error and expected["message"] in error, error
        assert find(By.ID, "input").get_attribute("value") == "Too long?"
        assert not find_all(".message") and ready()

        # New chat again: the error goes too.
        find(By.ID, "new-chat").click()
        assert not find(By.ID, "error").is_displayed()


def test_chat_page_api_key(browser, tmp_path):
    """A server started with an API key: the page says it needs one and shows the key field;
    with the key it works, and the key is remembered across a reload (localStorage)."""
    wait = WebDriverWait(browser, 10, poll_frequency=0.02)
    with live_server(chatty_checkpoint(tmp_path / "chatty.pt"), api_key="sekrit") as base:
        browser.get(f"{base}/")
        find = browser.find_element
        wait.until(lambda _: find(By.ID, "error").is_displayed())
        assert "401" in find(By.ID, "error").text and "API key" in find(By.ID, "error").text
        key = find(By.ID, "api-key")
        assert key.is_displayed()

        key.send_keys("sekrit", Keys.TAB)  # the change event: stored, models fetched again
        wait.until(lambda _: "chatty" in find(By.ID, "model").text)
        assert not find(By.ID, "error").is_displayed()
        set_number(browser, "max-tokens", 5)
        find(By.ID, "input").send_keys("Hello", Keys.ENTER)
        stats = lambda: [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".stats")]  # noqa: E731
        wait.until(lambda _: any(DONE.search(text) for text in stats()))

        browser.refresh()
        wait.until(lambda _: "chatty" in find(By.ID, "model").text)
        assert find(By.ID, "api-key").get_attribute("value") == "sekrit"


def test_chat_page_drops_old_exchanges(browser, tmp_path):
    """A conversation that outgrows the context (64 tokens here): the page drops its oldest
    exchange and asks again, as `xinslm chat` does; the dropped messages are shown faded."""
    wait = WebDriverWait(browser, 10, poll_frequency=0.02)
    with live_server(chatty_checkpoint(tmp_path / "short.pt", context_len=64)) as base:
        browser.get(f"{base}/")
        find = browser.find_element
        wait.until(lambda _: "short" in find(By.ID, "model").text)
        set_number(browser, "max-tokens", 20)

        def stats() -> list[str]:
            return [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".message .stats")]

        for n, message in enumerate(["Hello there", "Still there?"], start=1):
            find(By.ID, "input").send_keys(message, Keys.ENTER)
            wait.until(lambda _, n=n: len(stats()) == n and DONE.search(stats()[-1]))
        # The second prompt (the first exchange, the message and 20 new tokens) is over 64.
        assert "2 earlier messages left out to fit the context" in stats()[-1]
        faded = browser.find_elements(By.CSS_SELECTOR, ".message.forgotten")
        assert [e.text.splitlines()[0] for e in faded] == ["You", "Assistant"]
        assert not find(By.ID, "error").is_displayed()
