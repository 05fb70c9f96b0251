"""`xinslm serve` over HTTP, driven as clients drive it: OpenAI's own Python client for the
API, raw requests for the bad ones. The model is random weights over the byte vocabulary
(conftest.chat_checkpoint): its replies are varied bytes, invalid UTF-8 included, and a few
prompts end with <|end|>; what the server returns is checked against the engine run here
directly, in this process."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import openai
import pytest
from conftest import live_server

from xinslm import cli, serve
from xinslm.chat_template import render_prompt
from xinslm.checkpoint import load_checkpoint, model_from_checkpoint
from xinslm.engine import Engine
from xinslm.reply_text import ReplyText, shown_text
from xinslm.sampling import Sampling
from xinslm.tokenizer import ByteTokenizer

BYTE = ByteTokenizer()
CONTEXT = 256  # conftest.save_random_chat_checkpoint's context
LONG = "Hello there"  # the greedy reply runs to the end of the context
ENDS = "Why?"  # the greedy reply ends with <|end|> after 12 tokens


@pytest.fixture(scope="module")
def server(chat_checkpoint) -> str:
    # Four rows: of eight concurrent requests, four wait and join as others leave.
    with live_server(chat_checkpoint, max_batch=4) as url:
        yield url


@pytest.fixture(scope="module")
def client(server: str) -> openai.OpenAI:
    # No retries: a 500 must show as one, not as a second attempt that succeeds.
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(chat_checkpoint):
    """The engine alone in this process: what the server must return, token for token."""
    engine = Engine(model_from_checkpoint(load_checkpoint(chat_checkpoint)), max_batch=1)

    @functools.cache
    def generate(prompt: tuple[int, ...], sampling: Sampling, stop_id: int) -> tuple[str, tuple]:
        """The text a user sees (shown_text: no special tokens) and the tokens."""
        tokens = tuple(engine.generate(list(prompt), sampling, {stop_id}))
        return shown_text(BYTE, list(tokens)), tokens

    return generate


def chat_prompt(content: str) -> tuple[int, ...]:
    return tuple(render_prompt([{"role": "user", "content": content}], BYTE))


def greedy(n: int) -> Sampling:
    return Sampling(max_new_tokens=n, temperature=0, top_k=None, top_p=None)


def ask(client: openai.OpenAI, content: str, **kwargs):
    kwargs = {"model": "chat", "temperature": 0, **kwargs}
    return client.chat.completions.create(messages=[{"role": "user", "content": content}], **kwargs)


def ask_streamed(client: openai.OpenAI, content: str, **kwargs) -> tuple[list, str]:
    chunks = list(ask(client, content, stream=True, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, text


# --- raw HTTP ---------------------------------------------------------------------------


def request(url: str, method: str, path: str, body=None, headers=None):
    """(status, headers, parsed JSON body or text) of one raw request; a dict body is sent
    as JSON, bytes as they are, an iterator of bytes in chunks."""
    headers = dict(headers or {})
    if isinstance(body, dict | list):
        body = json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    conn = http.client.HTTPConnection(urlsplit(url).netloc, timeout=30)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        conn.request(method, path, body=body, headers=headers, encode_chunked=chunked)
        response = conn.getresponse()
        raw = response.read().decode()
    finally:
        conn.close()
    is_json = response.getheader("content-type", "").startswith("application/json")
    return response.status, response, json.loads(raw) if is_json else raw


def still_serves(url: str) -> None:
    body = {"messages": [{"role": "user", "content": ENDS}], "temperature": 0}
    status, _, reply = request(url, "POST", "/v1/chat/completions", body)
    assert status == 200, reply
    assert reply["choices"][0]["finish_reason"] == "stop"


def recorded_sequences(monkeypatch, delay: float) -> list:
    """The sequences the server adds from now, with each engine step slowed by `delay`."""
    seqs, real_add, real_step = [], Engine.add, Engine.step

    def add(engine, *args, **kwargs):
        seqs.append(real_add(engine, *args, **kwargs))
        return seqs[-1]

    def step(engine):
        time.sleep(delay)
        return real_step(engine)

    monkeypatch.setattr(Engine, "add", add)
    monkeypatch.setattr(Engine, "step", step)
    return seqs


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def error(message: str, param=None, code=None, type_="invalid_request_error") -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


# --- the API ------------------------------------------------------------------------------


def test_chat_completion_is_the_engines_greedy_reply(client, reference) -> None:
    reply = ask(client, LONG, max_tokens=30)
    assert reply.id.startswith("chatcmpl-") and reply.object == "chat.completion"
    assert reply.model == "chat" and abs(reply.created - time.time()) < 60
    (choice,) = reply.choices
    want, _ = reference(chat_prompt(LONG), greedy(30), BYTE.end_id)
    assert (choice.index, choice.message.role, choice.finish_reason) == (0, "assistant", "length")
    assert choice.message.content == want and len(set(want)) > 5
    assert reply.usage.model_dump(
        include={"prompt_tokens", "completion_tokens", "total_tokens"}
    ) == {
        "prompt_tokens": len(chat_prompt(LONG)),
        "completion_tokens": 30,
        "total_tokens": len(chat_prompt(LONG)) + 30,
    }
    # A reply that ends with <|end|>: "stop", without the token; max_tokens defaults to the
    # rest of the context, so a long reply runs to its end ("length").
    ended = ask(client, ENDS)
    assert ended.choices[0].finish_reason == "stop"
    assert (
        ended.choices[0].message.content
        == reference(chat_prompt(ENDS), greedy(200), BYTE.end_id)[0]
    )
    assert ended.usage.completion_tokens == 12
    whole = ask(client, LONG)
    assert whole.choices[0].finish_reason == "length"
    assert whole.usage.total_tokens == CONTEXT


def test_a_system_message_and_history_reach_the_prompt(client, reference) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {
            "role": "user",
            "content": [{"type": "text", "text": "and "}, {"type": "text", "text": "you?"}],
        },
    ]
    reply = client.chat.completions.create(
        model="chat", messages=messages, temperature=0, max_tokens=20
    )
    template = [*messages[:3], {"role": "user", "content": "and you?"}]
    prompt = tuple(render_prompt(template, BYTE))
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.choices[0].message.content == reference(prompt, greedy(20), BYTE.end_id)[0]


@pytest.mark.parametrize("content", [LONG, ENDS, "The sky is blue"])
def test_streamed_chat_equals_the_whole_reply(client, content: str) -> None:
    whole = ask(client, content, max_tokens=80)
    chunks, text = ask_streamed(
        client, content, max_tokens=80, stream_options={"include_usage": True}
    )
    assert text == whole.choices[0].message.content
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    first, *middle, last, usage = chunks
    assert first.choices[0].delta.role == "assistant" and first.choices[0].delta.content == ""
    assert all(c.choices[0].finish_reason is None and c.choices[0].delta.content for c in middle)
    assert last.choices[0].finish_reason == whole.choices[0].finish_reason
    assert last.choices[0].delta.content is None
    assert usage.choices == [] and usage.usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])
    # Characters cut between tokens are held back, not sent as U+FFFD halves.
    assert len(middle) < whole.usage.completion_tokens


def test_the_stream_is_server_sent_events_as_openai_sends_them(server) -> None:
    body = {"messages": [{"role": "user", "content": ENDS}], "temperature": 0, "stream": True}
    status, response, raw = request(server, "POST", "/v1/chat/completions", body)
    assert status == 200 and response.getheader("content-type").startswith("text/event-stream")
    events = raw.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(e.startswith("data: {") for e in events[:-2])
    last = json.loads(events[-3].removeprefix("data: "))
    assert "usage" not in last  # only with stream_options.include_usage
    assert last["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]


def test_completions_continue_the_text(client, reference) -> None:
    prompt = (BYTE.bos_id, *BYTE.encode("Once"))
    want, tokens = reference(prompt, greedy(40), BYTE.bos_id)
    # The model emits an <|end|> here: the server leaves it out of the text, as vLLM does.
    assert BYTE.end_id in tokens and "<|end|>" not in want
    reply = client.completions.create(model="chat", prompt="Once", max_tokens=40, temperature=0)
    assert reply.id.startswith("cmpl-") and reply.object == "text_completion"
    assert reply.choices[0].text == want and reply.choices[0].finish_reason == "length"
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5, 40)
    chunks = list(
        client.completions.create(
            model="chat", prompt="Once", max_tokens=40, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == want
    assert {c.object for c in chunks} == {"text_completion"}
    assert chunks[-1].choices[0].finish_reason == "length"


def test_models(client, server) -> None:
    (model,) = client.models.list().data
    assert (model.id, model.object, model.owned_by) == ("chat", "model", "xinslm")
    assert client.models.retrieve("chat").id == "chat"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("gpt-4")
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError) as e:
        ask(client, "hi", model="gpt-4", max_tokens=1)
    assert e.value.body == {
        "message": "The model 'gpt-4' does not exist: this server serves 'chat'.",
        "type": "invalid_request_error",
        "param": "model",
        "code": "model_not_found",
    }
    assert request(server, "GET", "/health")[::2] == (200, {"status": "ok"})


def test_the_page_is_served_without_a_key(server) -> None:
    status, response, html = request(server, "GET", "/")
    if status == 404:
        pytest.skip("xinslm/static/index.html is not written yet")
    assert status == 200 and response.getheader("content-type").startswith("text/html")
    assert html.lstrip().lower().startswith("<!doctype html>")


def test_concurrent_requests_each_get_what_they_get_alone(client, monkeypatch) -> None:
    jobs = [(f"question {i}: " + "why " * i, 20 + 9 * i) for i in range(8)]
    alone = [ask(client, c, max_tokens=n).choices[0].message.content for c, n in jobs]
    assert len(set(alone)) == 8
    in_engine, real_step = [], Engine.step

    def slow_step(engine):
        # Slower steps than the requests' arrival, so that they do meet in the engine.
        in_engine.append(len(engine.rows) + len(engine.waiting))
        time.sleep(0.005)
        return real_step(engine)

    monkeypatch.setattr(Engine, "step", slow_step)
    barrier = threading.Barrier(8)

    def together(job):
        barrier.wait()
        return ask(client, job[0], max_tokens=job[1]).choices[0].message.content

    with ThreadPoolExecutor(8) as pool:
        assert list(pool.map(together, jobs)) == alone
    # Four rows: four decoded together while the others waited for a row.
    assert max(in_engine) >= 6, f"the requests barely met in the engine: {in_engine}"


def test_a_seed_gives_the_same_sample(client, reference) -> None:
    sampled = [ask(client, LONG, temperature=1, seed=s, max_tokens=40) for s in (7, 7, 8)]
    texts = [r.choices[0].message.content for r in sampled]
    assert texts[0] == texts[1] != texts[2]
    want, _ = reference(chat_prompt(LONG), Sampling(40, 1.0, None, None, seed=7), BYTE.end_id)
    assert texts[0] == want
    assert texts[0] != ask(client, LONG, max_tokens=40).choices[0].message.content


def test_stop_strings_end_the_reply_before_them(client, monkeypatch) -> None:
    text = ask(client, LONG, max_tokens=100).choices[0].message.content
    seqs = recorded_sequences(monkeypatch, delay=0)
    stop = text[30:33]
    cut = text.index(stop)
    assert 0 < cut < len(text) - 3
    for kwargs in ({"stop": stop}, {"stop": ["\0never", stop]}):
        reply = ask(client, LONG, max_tokens=100, **kwargs)
        assert reply.choices[0].message.content == text[:cut]
        assert reply.choices[0].finish_reason == "stop"
        assert reply.usage.completion_tokens < 100
        # Streamed: nothing after the cut was ever sent, not even the stop string's start.
        chunks, streamed = ask_streamed(client, LONG, max_tokens=100, **kwargs)
        assert streamed == text[:cut] and chunks[-1].choices[0].finish_reason == "stop"
    # The engine stopped generating there too.
    wait_for(lambda: all(seq.done for seq in seqs))
    assert len(seqs) == 4 and all(s.finish_reason == "cancelled" for s in seqs)
    assert all(len(s.tokens) < 60 for s in seqs)
    # The start of a stop string that never completes is held back, then sent.
    chunks, streamed = ask_streamed(client, LONG, max_tokens=100, stop=stop[:2] + "\0")
    assert streamed == text and chunks[-1].choices[0].finish_reason == "length"


def test_reply_text_holds_back_cut_characters_and_stop_string_starts() -> None:
    reply = ReplyText(BYTE, ["lo!"])
    pieces = [reply.add(BYTE.encode(c)) for c in ["h", "\xe9"]]
    assert pieces == ["h", "é"]
    cut = "\u20ac".encode()  # three bytes, in three tokens
    assert [reply.add([b]) for b in cut] == ["", "", "€"]
    assert [reply.add(BYTE.encode(c)) for c in "lox"] == ["", "", "lox"]
    assert [reply.add(BYTE.encode(c)) for c in "lo!"] == ["", "", ""]
    assert reply.stopped and reply.text == "hé€lox" and reply.finish("length") == ""
    assert reply.finish_reason == "stop" and len(reply.tokens) == 1 + 2 + 3 + 3 + 3
    # At the end, what was held is sent: a cut character as U+FFFD, a stop string's start.
    reply = ReplyText(BYTE, ["lo!"])
    assert reply.add(BYTE.encode("al")) == "a" and reply.add([0xE2]) == ""
    assert reply.finish("length") == "l\ufffd" and reply.finish_reason == "length"


# --- bad requests -----------------------------------------------------------------------

USER = [{"role": "user", "content": "hi"}]
CHAT = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}
BAD_REQUESTS = {
    "malformed JSON": (
        CHAT,
        b'{"messages": [',
        400,
        error("We could not parse the JSON body of your request: Expecting value."),
    ),
    "not a JSON object": (
        CHAT,
        [1, 2],
        400,
        error("The request body must be a JSON object (send Content-Type: application/json)"),
    ),
    "unknown role": (
        CHAT,
        {"messages": [*USER, {"role": "robot", "content": "x"}]},
        400,
        error(
            "Invalid 'messages.1.role': Input should be 'system', 'developer', 'user' or "
            "'assistant' (got 'robot').",
            "messages.1.role",
            "invalid_value",
        ),
    ),
    "content not text": (
        CHAT,
        {"messages": [{"role": "user", "content": 3}]},
        400,
        error(
            "Invalid 'messages.0.content': Input should be a valid string (got 3).",
            "messages.0.content",
            "invalid_value",
        ),
    ),
    "no messages": (
        CHAT,
        {"messages": []},
        400,
        error(
            "Invalid 'messages': List should have at least 1 item after validation, not 0.",
            "messages",
            "invalid_value",
        ),
    ),
    "missing messages": (
        CHAT,
        {"model": "chat"},
        400,
        error("Missing required parameter: 'messages'.", "messages", "missing_required_parameter"),
    ),
    "last message not the user's": (
        CHAT,
        {"messages": [*USER, {"role": "assistant", "content": "x"}]},
        400,
        error("The last message must be a user message: the model answers it.", "messages.1.role"),
    ),
    "prompt over the context": (
        CHAT,
        {"messages": [{"role": "user", "content": "x" * 250}]},
        400,
        error(
            "This model's maximum context length is 256 tokens, but the prompt has 257 tokens. "
            "Please shorten the messages.",
            "messages",
            "context_length_exceeded",
        ),
    ),
    "text prompt over the context": (
        "/v1/completions",
        {"prompt": "x" * 255},
        400,
        error(
            "This model's maximum context length is 256 tokens, but the prompt has 256 tokens. "
            "Please shorten the prompt.",
            "prompt",
            "context_length_exceeded",
        ),
    ),
    "max_tokens 0": (
        CHAT,
        {"messages": USER, "max_tokens": 0},
        400,
        error(
            "Invalid 'max_tokens': must be an integer >= 1, got 0.",
            "max_tokens",
            "invalid_value",
        ),
    ),
    "max_tokens past the context": (
        CHAT,
        {"messages": USER, "max_tokens": 248},
        400,
        error(
            "max_tokens is 248, but the prompt's 9 tokens leave room for at most 247 in this "
            "model's context of 256 tokens.",
            "max_tokens",
        ),
    ),
    "max_completion_tokens past the context": (
        CHAT,
        {"messages": USER, "max_tokens": 5, "max_completion_tokens": 300},
        400,
        error(
            "max_completion_tokens is 300, but the prompt's 9 tokens leave room for at most 247 "
            "in this model's context of 256 tokens.",
            "max_completion_tokens",
        ),
    ),
    "temperature over 2": (
        CHAT,
        {"messages": USER, "temperature": 2.5},
        400,
        error(
            "Invalid 'temperature': must be a number from 0 to 2 (0: greedy), got 2.5.",
            "temperature",
            "invalid_value",
        ),
    ),
    "top_p 0": (
        CHAT,
        {"messages": USER, "top_p": 0},
        400,
        error(
            "Invalid 'top_p': must be a number above 0 and at most 1, got 0.0.",
            "top_p",
            "invalid_value",
        ),
    ),
    "top_p over 1": (
        "/v1/completions",
        {"prompt": "a", "top_p": 1.5},
        400,
        error(
            "Invalid 'top_p': must be a number above 0 and at most 1, got 1.5.",
            "top_p",
            "invalid_value",
        ),
    ),
    # Sampling's bounds, the one check every caller makes (test_sampling), named by field.
    "temperature -1": (
        CHAT,
        {"messages": USER, "temperature": -1},
        400,
        error(
            "Invalid 'temperature': must be a number from 0 to 2 (0: greedy), got -1.0.",
            "temperature",
            "invalid_value",
        ),
    ),
    "top_k 0": (
        "/v1/completions",
        {"prompt": "a", "top_k": 0},
        400,
        error("Invalid 'top_k': must be an integer >= 1, got 0.", "top_k", "invalid_value"),
    ),
    "max_completion_tokens 0": (
        CHAT,
        {"messages": USER, "max_tokens": 5, "max_completion_tokens": 0},
        400,
        error(
            "Invalid 'max_completion_tokens': must be an integer >= 1, got 0.",
            "max_completion_tokens",
            "invalid_value",
        ),
    ),
    "seed past 64 bits": (
        CHAT,
        {"messages": USER, "seed": 2**63},
        400,
        error(
            f"Invalid 'seed': must be an integer from -2**63 to 2**63-1, got {2**63}.",
            "seed",
            "invalid_value",
        ),
    ),
    # Numbers are typed strictly: no string or boolean read as one.
    "seed a string": (
        CHAT,
        {"messages": USER, "seed": "7"},
        400,
        error(
            "Invalid 'seed': Input should be a valid integer (got '7').", "seed", "invalid_value"
        ),
    ),
    "temperature true": (
        CHAT,
        {"messages": USER, "temperature": True},
        400,
        error(
            "Invalid 'temperature': Input should be a valid number (got True).",
            "temperature",
            "invalid_value",
        ),
    ),
    # A lone surrogate escape ("\\ud800"): valid JSON, not text.
    "lone surrogate in content": (
        CHAT,
        {"messages": [{"role": "user", "content": "caf\ud800"}]},
        400,
        error(
            "Invalid 'messages.0.content': lone surrogate \\ud800 (character 4) is not valid "
            "Unicode (got 'caf\\ud800').",
            "messages.0.content",
            "invalid_value",
        ),
    ),
    "lone surrogate in a text part, long": (
        CHAT,
        {
            "messages": [
                *USER,
                {"role": "user", "content": [{"type": "text", "text": "x" * 99 + "\udc80"}]},
            ]
        },
        400,
        error(
            "Invalid 'messages.1.content': lone surrogate \\udc80 (character 100) is not valid "
            "Unicode.",  # a long input is not echoed
            "messages.1.content",
            "invalid_value",
        ),
    ),
    "lone surrogate in a text prompt": (
        "/v1/completions",
        {"prompt": "\udfff"},
        400,
        error(
            "Invalid 'prompt': lone surrogate \\udfff (character 1) is not valid Unicode "
            "(got '\\udfff').",
            "prompt",
            "invalid_value",
        ),
    ),
    "lone surrogate in stop": (
        CHAT,
        {"messages": USER, "stop": ["ok", "\ud800"]},
        400,
        error(
            "Invalid 'stop.1': lone surrogate \\ud800 (character 1) is not valid Unicode "
            "(got '\\ud800').",
            "stop.1",
            "invalid_value",
        ),
    ),
    "lone surrogate in model": (
        CHAT,
        {"messages": USER, "model": "chat\ud800"},
        400,
        error(
            "Invalid 'model': lone surrogate \\ud800 (character 5) is not valid Unicode "
            "(got 'chat\\ud800').",
            "model",
            "invalid_value",
        ),
    ),
    "n 2": (
        CHAT,
        {"messages": USER, "n": 2},
        400,
        error(
            "Invalid 'n': only n=1 is supported (ask again for another reply) (got 2).",
            "n",
            "invalid_value",
        ),
    ),
    "five stop strings": (
        CHAT,
        {"messages": USER, "stop": list("abcde")},
        400,
        error(
            "Invalid 'stop': List should have at most 4 items after validation, not 5.",
            "stop",
            "invalid_value",
        ),
    ),
    "another model": (
        "/v1/completions",
        {"prompt": "a", "model": "gpt-4"},
        404,
        error(
            "The model 'gpt-4' does not exist: this server serves 'chat'.",
            "model",
            "model_not_found",
        ),
    ),
}


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=str)
def test_a_bad_request_gets_openais_error(server, case: str) -> None:
    path, body, status, want = BAD_REQUESTS[case]
    got_status, _, got = request(server, "POST", path, body, JSON)
    assert (got_status, got) == (status, want)
    still_serves(server)


@pytest.mark.parametrize("content_type", ["application/x-www-form-urlencoded", None])
def test_a_body_not_sent_as_json_is_refused(server, content_type) -> None:
    # A web page can send these to a local server without asking first (no CORS
    # preflight): FastAPI does not read them as JSON.
    headers = {"Content-Type": content_type} if content_type else {}
    body = json.dumps({"messages": USER}).encode()
    want = error("The request body must be a JSON object (send Content-Type: application/json)")
    assert request(server, "POST", CHAT, body, headers)[::2] == (400, want)


def test_unknown_routes_and_methods(server) -> None:
    assert request(server, "GET", "/v1/nothing")[::2] == (
        404,
        error("Invalid URL (GET /v1/nothing)."),
    )
    status, response, body = request(server, "GET", CHAT)
    assert (status, body) == (405, error(f"Method not allowed (GET {CHAT})."))
    assert response.getheader("allow") == "POST"
    still_serves(server)


def test_a_body_over_the_limit_is_refused(server) -> None:
    too_large = error(
        f"The request body is over the limit of {1 << 20} bytes.", code="request_too_large"
    )
    body = json.dumps({"messages": USER, "pad": "x" * (1 << 20)}).encode()
    assert request(server, "POST", CHAT, body, JSON)[::2] == (413, too_large)
    # Sent in chunks, without a Content-Length: counted as it comes.
    chunks = iter([body[i : i + 65536] for i in range(0, len(body), 65536)])
    assert request(server, "POST", CHAT, chunks, JSON)[::2] == (413, too_large)
    still_serves(server)
    # Just under the limit is fine.
    fits = json.dumps({"messages": USER, "max_tokens": 1, "pad": ""}).encode()
    fits = fits.replace(b'""', b'"' + b"x" * ((1 << 20) - len(fits)) + b'"')
    assert len(fits) == 1 << 20
    assert request(server, "POST", CHAT, fits, JSON)[0] == 200


# --- the engine thread --------------------------------------------------------------------


@contextlib.contextmanager
def failing_step(monkeypatch, at: int):
    """Engine.step raises on its `at`-th call from now, once."""
    real_step, calls = Engine.step, []

    def step(engine):
        calls.append(1)
        if len(calls) == at:
            raise RuntimeError("boom")
        return real_step(engine)

    monkeypatch.setattr(Engine, "step", step)
    yield
    monkeypatch.setattr(Engine, "step", real_step)


def test_an_engine_failure_is_a_500_and_the_server_goes_on(client, server, monkeypatch) -> None:
    want = ask(client, LONG, max_tokens=20).choices[0].message.content
    body = {"messages": [{"role": "user", "content": LONG}], "max_tokens": 20, "temperature": 0}
    with failing_step(monkeypatch, at=3):
        status, _, got = request(server, "POST", CHAT, body)
    message = "The engine failed while generating (RuntimeError: boom); please retry."
    assert (status, got) == (500, error(message, type_="server_error"))
    assert ask(client, LONG, max_tokens=20).choices[0].message.content == want
    # Failing at the first step (the prefill): a 500 before the stream starts.
    with failing_step(monkeypatch, at=1), pytest.raises(openai.InternalServerError):
        ask_streamed(client, LONG, max_tokens=20)
    # Failing mid-stream: the chunks so far, then OpenAI's error event.
    with failing_step(monkeypatch, at=5), pytest.raises(openai.APIError, match="boom"):
        for _ in ask(client, LONG, max_tokens=20, stream=True):
            pass
    assert ask_streamed(client, LONG, max_tokens=20)[1] == want


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_a_client_that_leaves_cancels_its_sequence(server, monkeypatch, stream: bool) -> None:
    seqs = recorded_sequences(monkeypatch, delay=0.01)  # the whole reply would take 2.4 s
    body = {"messages": [{"role": "user", "content": LONG}], "temperature": 0, "stream": stream}
    conn = http.client.HTTPConnection(urlsplit(server).netloc, timeout=30)
    conn.request("POST", CHAT, body=json.dumps(body), headers=JSON)
    if stream:
        response = conn.getresponse()
        assert response.status == 200
        while b'"content":"' not in response.fp.readline():
            pass  # up to the first piece of text
    else:
        wait_for(lambda: seqs and len(seqs[0].tokens) > 0)
    conn.sock.close()
    conn.close()
    wait_for(lambda: seqs[0].done)
    assert seqs[0].finish_reason == "cancelled" and len(seqs[0].tokens) < 100
    still_serves(server)


# --- the API key --------------------------------------------------------------------------


def test_the_api_key_guards_the_api_only(chat_checkpoint) -> None:
    with live_server(chat_checkpoint, api_key="sesame") as url:
        body = {"messages": USER, "max_tokens": 1}
        missing = error(
            "You didn't provide an API key: send it as 'Authorization: Bearer YOUR_KEY' (the "
            "key given to xinslm serve --api-key or XINSLM_API_KEY).",
            code="invalid_api_key",
        )
        wrong = error("Incorrect API key provided.", code="invalid_api_key")
        assert request(url, "POST", CHAT, body)[::2] == (401, missing)
        assert request(url, "GET", "/v1/models")[::2] == (401, missing)
        for header in ("Bearer open", "Basic sesame", "sesame"):
            auth = {"Authorization": header}
            assert request(url, "POST", CHAT, body, auth)[::2] == (401, wrong)
        assert request(url, "GET", "/health")[0] == 200
        assert request(url, "GET", "/")[0] in (200, 404)  # 404 only while the page is unwritten
        assert request(url, "POST", CHAT, body, {"Authorization": "Bearer sesame"})[0] == 200
        keyed = openai.OpenAI(base_url=url + "/v1", api_key="sesame", max_retries=0)
        assert ask(keyed, ENDS).choices[0].finish_reason == "stop"
        with pytest.raises(openai.AuthenticationError) as e:
            ask(openai.OpenAI(base_url=url + "/v1", api_key="nope", max_retries=0), ENDS)
        assert e.value.code == "invalid_api_key"


@pytest.mark.parametrize(
    ("argv", "env", "key"),
    [([], None, None), ([], "from-env", "from-env"), (["--api-key", "flag"], "from-env", "flag")],
)
def test_serve_command_settings(monkeypatch, argv, env, key) -> None:
    served = []
    monkeypatch.setattr(serve, "run_server", lambda *args: served.append(args))
    if env is None:
        monkeypatch.delenv("XINSLM_API_KEY", raising=False)
    else:
        monkeypatch.setenv("XINSLM_API_KEY", env)
    cli.main(["serve", "--port", "9", "--max-batch", "3", *argv])
    ((settings, host, port),) = served
    assert (host, port) == ("127.0.0.1", 9)
    assert settings == serve.ServeSettings(
        checkpoint="checkpoints/chat.pt", api_key=key, max_batch=3
    )


def test_a_taken_port_is_one_line(chat_checkpoint, capsys) -> None:
    with live_server(chat_checkpoint) as url:
        port = urlsplit(url).port
        with pytest.raises(SystemExit) as e:
            cli.main(["serve", "--checkpoint", str(chat_checkpoint), "--port", str(port)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert err == f"error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_updates_queued_behind_each_other_come_as_one():
    """A stream that falls behind sends one chunk for several steps' tokens."""
    from xinslm.engine_worker import Job, Update

    async def read() -> list:
        job = Job([1], Sampling(temperature=0), frozenset(), asyncio.get_running_loop())
        job._queue.put_nowait(Update([1]))
        first = [u async for u in _take_one(job)]
        for update in (Update([2]), Update([3, 4]), Update([5], "length"), Update([9])):
            job._queue.put_nowait(update)
        return first + [u async for u in job.updates()]

    async def _take_one(job):
        async for update in job.updates():
            yield update
            return

    assert asyncio.run(read()) == [Update([1]), Update([2, 3, 4, 5], "length")]
