"""The `xinslm` command: one-shot and interactive chat on a model that learned one reply, and
text continuation on the document it learned too."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch
from conftest import conversation_example, save_model_checkpoint, tiny_config, train_on

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
