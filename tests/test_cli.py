"""The `xinslm` command: one-shot and interactive chat on a model that learned one reply, and
text continuation on the document it learned too."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest
import torch
from conftest import conversation_example, save_model_checkpoint, tiny_config, train_on
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from xinslm import cli
from xinslm.chat_template import render_conversation, render_prompt
from xinslm.engine import Engine
from xinslm.model import IGNORE_INDEX, NanoChatModel
from xinslm.tokenizer import ByteTokenizer

BYTE = ByteTokenizer()
GREEDY = ["--temperature", "0"]


@pytest.fixture(scope="module")
def parrot(tmp_path_factory) -> str:
    """A checkpoint whose model learned to answer 'hi' with 'hello' and then stop, and the
    document 'Once upon a time' (BOS before and after it, as in the token stream)."""
    torch.manual_seed(0)
    model = NanoChatModel(tiny_config(context_len=64, n_layer=1, n_embd=64, n_kv_head=2))
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ids, labels = conversation_example(conversation, BYTE)
    doc = [BYTE.bos_id, *BYTE.encode("Once upon a time"), BYTE.bos_id]
    width = max(len(ids), len(doc))
    x = torch.tensor([ids + [0] * (width - len(ids)), doc + [0] * (width - len(doc))])
    y = torch.full((2, width), IGNORE_INDEX)
    y[0, : len(labels)], y[1, : len(doc) - 1] = torch.tensor(labels), torch.tensor(doc[1:])
    assert train_on(model, x, y, steps=200, lr=1e-2) < 0.01
    return str(save_model_checkpoint(tmp_path_factory.mktemp("ckpt") / "chat.pt", model, 200))


def test_one_shot_answer_stops_at_end_of_turn(parrot: str, capsys) -> None:
    cli.main(["chat", "--checkpoint", parrot, "-p", "hi", "--max-new-tokens", "40", *GREEDY])
    # Without stopping at <|end|> the 40 tokens would run on into a made-up next turn.
    assert capsys.readouterr().out == "hello\n"


def test_interactive_chat_keeps_history_and_resets(parrot: str, capsys, monkeypatch) -> None:
    prompts = []
    real_add = Engine.add

    def recording_add(engine, prompt, *args, **kwargs):
        prompts.append(BYTE.decode(prompt))
        return real_add(engine, prompt, *args, **kwargs)

    monkeypatch.setattr(Engine, "add", recording_add)
    monkeypatch.setattr(sys, "stdin", io.StringIO("hi\nhi\n/reset\nhi\n/exit\n"))
    cli.main(["chat", "--checkpoint", parrot, *GREEDY])

    turn = "<|user|>\nhi<|end|>\n"
    reply = "<|assistant|>\nhello<|end|>\n"
    first = "<|bos|>" + turn + "<|assistant|>\n"
    assert prompts == [
        first,
        "<|bos|>" + turn + reply + turn + "<|assistant|>\n",  # the second carries the first
        first,  # after /reset the history is gone
    ]
    out = capsys.readouterr().out
    replies = [line.split("assistant> ")[1] for line in out.splitlines() if "assistant> " in line]
    assert len(replies) == 3 and replies[0] == replies[2] == "hello"
    assert "you> (conversation cleared)\n" in out


def test_prompt_rendering_matches_training(parrot: str) -> None:
    conversation = [{"role": "user", "content": "hi"}]
    training = render_conversation([*conversation, {"role": "assistant", "content": "x"}], BYTE)[0]
    prompt = render_prompt(conversation, BYTE)
    assert training[: len(prompt)] == prompt


def test_sample_continues_text(parrot: str, capsys) -> None:
    cli.main(["sample", "--checkpoint", parrot, "--prompt", "Once upon", *GREEDY])
    # The prompt, the learned rest of the document up to the BOS that ends it, a newline.
    assert capsys.readouterr().out == "Once upon a time\n"
    cli.main(["sample", "--checkpoint", parrot, "--prompt", "Once", "--max-new-tokens", "3"])
    # Default sampling (temperature 0.8, top-p 0.95) keeps only the token the model is sure of.
    assert capsys.readouterr().out == "Once up\n"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["chat", "--checkpoint", "missing.pt", "-p", "x"],
            "error: missing.pt: checkpoint not found",
        ),
        (["info", "missing.pt"], "error: missing.pt: checkpoint not found"),
    ],
)
def test_bad_checkpoint_is_one_line(
    args: list[str], message: str, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main(args)
    assert e.value.code == 1
    assert capsys.readouterr().err == message + "\n"


def test_not_a_checkpoint_is_one_line(tmp_path) -> None:
    # As its own process, through `python -m xinslm.cli`: the entry point works end to end.
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    proc = subprocess.run(
        [sys.executable, "-m", "xinslm.cli", "chat", "--checkpoint", "junk.pt", "-p", "x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: junk.pt: ") and proc.stderr.count("\n") == 1


def help_of(argv: list[str], capsys) -> str:
    """What `xinslm *argv` prints, run in this process; it must exit 0."""
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


def test_help_lists_the_commands(capsys) -> None:
    usage = "usage: xinslm [-h] {chat,sample,info,export,serve} ...\n"
    assert help_of(["--help"], capsys).startswith(usage)
    handlers = {
        "chat": cli.cmd_chat,
        "sample": cli.cmd_sample,
        "info": cli.cmd_info,
        "export": cli.cmd_export,
        "serve": cli.cmd_serve,
    }
    for command, handler in handlers.items():
        assert help_of([command, "--help"], capsys).startswith(f"usage: xinslm {command} [-h]")
        args = {"info": ["x.pt"], "export": ["x.pt", "out"]}.get(command, [])
        argv = [command, *args]
        assert cli.build_parser().parse_args(argv).func is handler
    with pytest.raises(SystemExit) as e:
        cli.main(["train"])
    assert e.value.code == 2
    assert "invalid choice: 'train'" in capsys.readouterr().err


# --- bad settings and text that is not UTF-8: one line and exit 2 ---------------------------

TEMPERATURE = "--temperature: must be a number from 0 to 2 (0: greedy), got"
TOP_P = "--top-p: must be a number above 0 and at most 1, got"
SEED = "--seed: must be an integer from -2**63 to 2**63-1, got"
BAD_SETTINGS = [
    (["chat", "-p", "hi", "--temperature", "-1"], f"{TEMPERATURE} -1.0"),
    (["chat", "-p", "hi", "--top-p", "7"], f"{TOP_P} 7.0"),
    (["chat", "--temperature", "nan"], f"{TEMPERATURE} nan"),
    (["sample", "--top-k", "0"], "--top-k: must be an integer >= 1, got 0"),
    (["sample", "--max-new-tokens", "0"], "--max-new-tokens: must be an integer >= 1, got 0"),
    (["sample", "--seed", str(2**63)], f"{SEED} {2**63}"),
]


NOT_UTF8 = os.fsdecode(b"caf\xe9 \xff")  # as Python reads argv: surrogateescape
UTF8_HINT = "is the terminal set to UTF-8?"
E9 = f"is not UTF-8: byte 0xe9 (character 4); {UTF8_HINT}"
SURROGATE = f"is not UTF-8: lone surrogate \\ud800 (character 3); {UTF8_HINT}"
BAD_TEXT = [
    (["chat", "-p", NOT_UTF8], f"--prompt {E9}"),
    (["chat", "--system", NOT_UTF8], f"--system {E9}"),
    (["chat", "-p", "hi", "--system", NOT_UTF8], f"--system {E9}"),
    (["sample", "--prompt", NOT_UTF8], f"--prompt {E9}"),
    # A Python caller's lone surrogate, not from a byte.
    (["chat", "-p", "ok\ud800"], f"--prompt {SURROGATE}"),
]


@pytest.mark.parametrize(("args", "message"), BAD_SETTINGS + BAD_TEXT, ids=str)
def test_a_bad_setting_or_text_is_a_usage_error(args, message, tmp_path, monkeypatch, capsys):
    # Refused before the checkpoint loads (settings by the one check of test_sampling): a
    # missing check would be exit 1, "checkpoint not found".
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        cli.main([*args, "--checkpoint", "missing.pt"])
    assert e.value.code == 2
    assert capsys.readouterr() == ("", f"error: {message}\n")


def test_a_prompt_that_is_not_utf8_from_the_shell(parrot: str) -> None:
    # As a user runs it (`xinslm chat -p $'caf\xe9 \xff'`): argv bytes, decoded by Python.
    proc = subprocess.run(
        [sys.executable, "-m", "xinslm.cli", "chat", "--checkpoint", parrot, "-p", b"caf\xe9 \xff"],
        capture_output=True,
    )
    assert proc.returncode == 2
    want = f"error: --prompt is not UTF-8: byte 0xe9 (character 4); {UTF8_HINT}\n"
    assert (proc.stdout, proc.stderr) == (b"", want.encode())


def test_a_typed_line_that_is_not_utf8_is_refused_and_the_chat_goes_on(
    parrot: str, capsys, monkeypatch
) -> None:
    stdin = io.TextIOWrapper(io.BytesIO(b"caf\xe9\nhi\n/exit\n"), encoding="utf-8")
    monkeypatch.setattr(sys, "stdin", stdin)
    cli.main(["chat", "--checkpoint", parrot, *GREEDY])
    out, err = capsys.readouterr()
    assert err == f"error: the message is not UTF-8: byte 0xe9 (character 4); {UTF8_HINT}\n"
    assert out.endswith("you> you> assistant> hello\nyou> ")


@settings(
    max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(raw=st.binary(max_size=40), command=st.sampled_from(["chat", "sample"]))
@example(raw="café ok".encode(), command="chat").via("valid UTF-8")
@example(raw=b"caf\xe9 \xed\xa0\x80", command="sample").via("Latin-1, an encoded surrogate")
def test_any_prompt_bytes_are_answered_or_refused(parrot: str, capsys, raw: bytes, command: str):
    # argv as Python builds it from the bytes the shell passes (a NUL cannot be in argv).
    raw = raw.replace(b"\0", b"")
    prompt = os.fsdecode(raw)
    argv = [command, "--checkpoint", parrot, f"--prompt={prompt}", "--max-new-tokens", "2"]
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 2
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("error: --prompt is not UTF-8: byte 0x")
        assert err.endswith(f"; {UTF8_HINT}\n") and err.count("\n") == 1
    else:
        cli.main(argv)  # any exception but these fails the test
        out, err = capsys.readouterr()
        assert err == "" and out.endswith("\n")
        if command == "sample":
            assert out.startswith(prompt)  # echoed, then continued


# --- what a reply shows: no special tokens or bytes that are not UTF-8, unless --raw --------

CALC = [
    BYTE.special[f"<|{name}|>"] for name in ("calc_start", "calc_end", "result_start", "result_end")
]
FORCED = [
    *b"caf", 0xC3, BYTE.bos_id, 0xA9,  # a character cut by a special token
    *b" ok", BYTE.special["<|user|>"],
    CALC[0], *b"6*7", CALC[1], CALC[2], *b"42", CALC[3],  # a calculator call and its result
    0xE2, 0x82,  # a character cut by the end of the reply
]  # fmt: skip
SHOWN = "caf\ufffd\ufffd ok<<6*7=42>>\ufffd"
RAW = (
    "caf\ufffd<|bos|>\ufffd ok<|user|>"
    "<|calc_start|>6*7<|calc_end|><|result_start|>42<|result_end|>\ufffd"
)


@pytest.mark.parametrize(("flags", "want"), [([], SHOWN), (["--raw"], RAW)], ids=["shown", "raw"])
@pytest.mark.parametrize("command", ["chat", "sample"])
def test_a_reply_shows_no_special_tokens_unless_raw(
    parrot: str, command: str, flags: list[str], want: str, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(Engine, "generate", lambda *args, **kwargs: iter(FORCED))
    cli.main([command, "--checkpoint", parrot, "--prompt", "x", *flags])
    echo = "x" if command == "sample" else ""  # sample prints its prompt first
    assert capsys.readouterr().out == echo + want + "\n"


def test_a_random_model_at_temperature_2(chat_checkpoint, capsys) -> None:
    # A model of random weights, sampled hot: special tokens come, and show only with --raw.
    hot = ["--temperature", "2", "--top-p", "1", "--top-k", "300", "--max-new-tokens", "100"]
    argv = ["sample", "--checkpoint", str(chat_checkpoint), "--prompt", "Once", *hot]
    cli.main([*argv, "--raw"])
    assert "<|end|>" in capsys.readouterr().out
    cli.main(argv)
    out = capsys.readouterr().out
    assert "<|" not in out and out.startswith("Once") and len(out) > 50


def test_a_terminal_that_is_not_utf8_gets_question_marks(parrot: str, monkeypatch) -> None:
    # A Latin-1 terminal has no U+FFFD: it prints as '?', not a UnicodeEncodeError traceback.
    terminal = io.TextIOWrapper(io.BytesIO(), encoding="latin-1")
    monkeypatch.setattr(sys, "stdout", terminal)
    monkeypatch.setattr(Engine, "generate", lambda *args, **kwargs: iter(FORCED))
    cli.main(["chat", "--checkpoint", parrot, "--prompt", "x"])
    terminal.flush()
    assert terminal.buffer.getvalue() == b"caf?? ok<<6*7=42>>?\n"
