"""The `xinslm` command: one-shot and interactive chat on a model that learned one reply."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
import torch

from xinslm import cli, generate
from xinslm.chat import render_conversation_with_labels, render_prompt
from xinslm.checkpoint import save_checkpoint
from xinslm.model import ModelConfig, NanoChatModel
from xinslm.tokenizer import ByteTokenizer

BYTE = ByteTokenizer()
GREEDY = ["--temperature", "0"]


@pytest.fixture(scope="module")
def parrot(tmp_path_factory) -> str:
    """A checkpoint whose model learned to answer 'hi' with 'hello' and then stop."""
    torch.manual_seed(0)
    model = NanoChatModel(
        ModelConfig(vocab_size=BYTE.vocab_size, context_len=64, n_layer=1, n_embd=64, n_head=2)
    )
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    ids, labels = render_conversation_with_labels(conversation, BYTE)
    x, y = torch.tensor([ids]), torch.tensor([labels])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(200):
        _, loss = model(x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.01
    path = tmp_path_factory.mktemp("ckpt") / "chat.pt"
    save_checkpoint(
        path,
        model=model.state_dict(),
        model_config=model.config.to_dict(),
        tokenizer=BYTE.identity(),
        step=200,
    )
    return str(path)


def test_one_shot_answer_stops_at_end_of_turn(parrot: str, capsys) -> None:
    cli.main(["chat", "--checkpoint", parrot, "-p", "hi", "--max-new-tokens", "40", *GREEDY])
    # Without stopping at <|end|> the 40 tokens would run on into a made-up next turn.
    assert capsys.readouterr().out == "hello\n"


def test_interactive_chat_keeps_history_and_resets(parrot: str, capsys, monkeypatch) -> None:
    prompts = []
    real_generate = generate.generate

    def recording_generate(model, prompt, **kwargs):
        prompts.append(BYTE.decode(prompt))
        return real_generate(model, prompt, **kwargs)

    monkeypatch.setattr(generate, "generate", recording_generate)
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
    training = render_conversation_with_labels(
        [*conversation, {"role": "assistant", "content": "x"}], BYTE
    )[0]
    prompt = render_prompt(conversation, BYTE)
    assert training[: len(prompt)] == prompt


def test_sample_continues_text(parrot: str, capsys) -> None:
    cli.main(["sample", "--checkpoint", parrot, "--prompt", "<|user|>", "--max-new-tokens", "3"])
    out = capsys.readouterr().out
    assert out.startswith("<|user|>") and out.endswith("\n")


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
def test_bad_checkpoint_is_one_line(args: list[str], message: str, tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "xinslm.cli", *args], cwd=tmp_path, capture_output=True, text=True
    )
    assert (proc.returncode, proc.stderr) == (1, message + "\n")


def test_not_a_checkpoint_is_one_line(tmp_path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    proc = subprocess.run(
        [sys.executable, "-m", "xinslm.cli", "chat", "--checkpoint", "junk.pt", "-p", "x"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: junk.pt: ") and proc.stderr.count("\n") == 1


def test_help_lists_the_commands() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "xinslm.cli", "--help"], capture_output=True, text=True
    )
    assert proc.returncode == 0
    for command in ("chat", "sample", "info"):
        assert f"xinslm {command}" in proc.stdout
