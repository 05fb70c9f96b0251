"""Held-out evaluation (xinslm.losses): bits per byte, assistant-only loss; and the sampling
helpers the evaluate stage writes its samples with (xinslm.generate)."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import conversation_example, render_chat_files, tiny_config, train_on

from xinslm.batches import ChatData, val_chat_batches
from xinslm.chat_template import render_prompt
from xinslm.engine import Engine
from xinslm.generate import chat_replies, continuations, generate
from xinslm.losses import assistant_loss, loss_sums, text_loss_and_bpb
from xinslm.model import IGNORE_INDEX, ModelConfig, NanoChatModel
from xinslm.sampling import Sampling
from xinslm.tokenizer import ByteTokenizer


def greedy(max_new_tokens: int = 200) -> Sampling:
    return Sampling(max_new_tokens=max_new_tokens, temperature=0)


def chat_reply(model, tokenizer, conversation, sampling):
    return chat_replies(Engine(model, max_batch=1), tokenizer, [conversation], sampling)[0]


def continuation(model, tokenizer, text, sampling):
    return continuations(Engine(model, max_batch=1), tokenizer, [text], sampling)[0]


CPU = torch.device("cpu")
BYTE = ByteTokenizer()
BOS = BYTE.bos_id


@torch.no_grad()
def context_model(context_len=8, seed=0):
    """A tiny byte-level model with real output projections, so its loss varies by token."""
    torch.manual_seed(seed)
    model = NanoChatModel(
        ModelConfig(
            vocab_size=261, context_len=context_len, n_layer=2, n_head=4, n_kv_head=2, n_embd=64
        )
    )
    for block in model.blocks:
        torch.nn.init.normal_(block.attn.c_proj.weight, std=0.3)
        torch.nn.init.normal_(block.mlp.c_proj.weight, std=0.3)
    torch.nn.init.normal_(model.lm_head.weight, std=0.3)
    return model


# Three [T+1] blocks; BOS (256) sits at target positions (columns 1-8) in each row.
BLOCKS = np.array(
    [
        [256, 72, 105, 33, 256, 79, 107, 46, 32],
        [97, 98, 256, 99, 100, 101, 102, 256, 103],
        [104, 105, 106, 107, 108, 109, 110, 111, 256],
    ],
    dtype=np.uint16,
)


@torch.no_grad()
def hand_bpb(model, blocks, token_bytes):
    """Loss per target and bits per byte, written out over the whole array at once."""
    rows = torch.from_numpy(blocks.astype(np.int64))
    x, y = rows[:, :-1], rows[:, 1:]
    logits, _ = model(x)
    ce = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none")
    nbytes = token_bytes[y.flatten()]
    text = nbytes > 0
    return {
        "val_loss": float(ce.mean()),
        "val_bpb": float(ce[text].sum()) / math.log(2) / int(nbytes.sum()),
        "tokens": y.numel(),
        "bytes": int(nbytes.sum()),
    }


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5])
def test_bits_per_byte_matches_a_hand_computation(batch_size):
    model = context_model()
    token_bytes = torch.tensor(BYTE.token_byte_lengths())
    got = text_loss_and_bpb(model, BLOCKS, token_bytes, batch_size, CPU)
    want = hand_bpb(model, BLOCKS, token_bytes)
    assert got["tokens"] == 24
    assert got["bytes"] == 24 - 4 == want["bytes"]  # four BOS targets carry no bytes
    assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-5)
    assert got["val_bpb"] == pytest.approx(want["val_bpb"], rel=1e-5)
    # BOS targets count in the loss but not in bpb: the two differ beyond the ln 2 factor.
    assert got["val_bpb"] != pytest.approx(got["val_loss"] / math.log(2), rel=1e-3)


def test_bits_per_byte_divides_by_bytes_not_tokens():
    """With multi-byte tokens (as a BPE tokenizer has), bpb divides by the bytes they stand for."""
    model = context_model()
    token_bytes = torch.tensor([1 + i % 4 for i in range(256)] + [0] * 5)
    got = text_loss_and_bpb(model, BLOCKS, token_bytes, 2, CPU)
    want = hand_bpb(model, BLOCKS, token_bytes)
    assert got["bytes"] == want["bytes"] > 24
    assert got["val_bpb"] == pytest.approx(want["val_bpb"], rel=1e-5)
    assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-5)


@torch.no_grad()
def test_uniform_model_costs_log2_vocab_bits_per_byte():
    model = context_model()
    torch.nn.init.zeros_(model.lm_head.weight)  # every logit 0: uniform over 261 ids
    got = text_loss_and_bpb(model, BLOCKS, torch.tensor(BYTE.token_byte_lengths()), 2, CPU)
    assert got["val_bpb"] == pytest.approx(math.log2(261), abs=1e-6)
    assert got["val_loss"] == pytest.approx(math.log(261), abs=1e-6)


def test_gpt2_token_byte_lengths_add_up_to_the_utf8_bytes(gpt2):
    lengths = gpt2.token_byte_lengths()
    assert len(lengths) == gpt2.vocab_size
    text = "Hello wörld, café ☕"
    ids = gpt2.encode(text)
    assert len(ids) < len(text.encode("utf-8"))  # some tokens span several bytes
    assert sum(lengths[i] for i in ids) == len(text.encode("utf-8")) == 23
    assert lengths[gpt2.encode("Hello")[0]] == 5
    for token in ("<|bos|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"):
        assert lengths[gpt2.special[token]] == 0
    assert lengths[50256] == 0  # gpt2's own <|endoftext|>


# --- assistant loss ------------------------------------------------------------------------

TRAIN = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
]
VAL = [
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
    {
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "what is 2+2?"},
            {"role": "assistant", "content": "four, as everyone knows"},
            {"role": "user", "content": "and 3+3?"},
            {"role": "assistant", "content": "six"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "a longer question here"},
            {"role": "assistant", "content": "ok"},
        ]
    },
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def val_chats(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", TRAIN * 3)
    val = write_jsonl(tmp_path / "val.jsonl", VAL)
    render_chat_files(train, val, BYTE, tmp_path / "chat", context_len=128)
    return ChatData(tmp_path / "chat", "val")


@torch.no_grad()
def hand_assistant_loss(model, conversations):
    total, count = 0.0, 0
    for record in conversations:
        ids, labels = conversation_example(record["messages"], BYTE)
        logits, _ = model(torch.tensor([ids]))
        labels = torch.tensor(labels)
        keep = labels != IGNORE_INDEX
        total += float(F.cross_entropy(logits[0][keep], labels[keep], reduction="sum"))
        count += int(keep.sum())
    return total / count, count


@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_assistant_loss_matches_a_hand_computation(val_chats, batch_size):
    model = context_model(context_len=128)
    assert len(val_chats) == 3
    want, count = hand_assistant_loss(model, VAL)
    # Learned targets: each assistant message's bytes and its <|end|>.
    assert count == (2 + 1) + (23 + 1) + (3 + 1) + (2 + 1)
    got = assistant_loss(model, val_chats, batch_size, CPU)
    assert got == pytest.approx(want, rel=1e-5)


def test_assistant_loss_weights_every_target_equally(val_chats):
    """The mean is over targets, not over conversations or batches."""
    model = context_model(context_len=128)
    per_conv = [hand_assistant_loss(model, [r])[0] for r in VAL]
    got = assistant_loss(model, val_chats, 1, CPU)
    assert got != pytest.approx(sum(per_conv) / len(per_conv), rel=1e-3)


def test_loss_sums_add_up_over_batches_and_keep_the_training_mode(val_chats):
    model = context_model(context_len=128)
    batches = list(val_chat_batches(val_chats, 1, len(val_chats)))
    total, count = loss_sums(model, batches, CPU)
    assert model.training  # evaluated in eval mode, handed back as it came
    assert count == 3 + 24 + 4 + 3  # learned targets only: padding and context count not
    want, _ = hand_assistant_loss(model, VAL)
    assert total / count == pytest.approx(want, rel=1e-5)
    # Sums of parts (batches, or processes) add up to the sums of the whole.
    parts = [loss_sums(model, [batch], CPU) for batch in batches]
    assert sum(c for _, c in parts) == count
    assert sum(t for t, _ in parts) == pytest.approx(total, rel=1e-5)
    model.eval()
    assert loss_sums(model, batches[:1], CPU) == parts[0]
    assert not model.training


# --- sampling helpers ----------------------------------------------------------------------


@torch.no_grad()
def constant_model(token_id):
    """A model that predicts `token_id` whatever the context: every embedding is the same
    vector (the blocks start as the identity), and the head points only `token_id` at it."""
    torch.manual_seed(0)
    model = NanoChatModel(
        ModelConfig(vocab_size=261, context_len=64, n_layer=1, n_head=2, n_kv_head=1, n_embd=16)
    )
    direction = torch.randn(16)
    model.wte.weight.copy_(direction.expand(261, 16))
    model.lm_head.weight.zero_()
    model.lm_head.weight[token_id] = F.rms_norm(direction, (16,))
    return model


CONVERSATION = [{"role": "user", "content": "hi there"}]
REPLY = {"role": "assistant", "content": "hello"}


def test_chat_reply_stops_at_end_of_turn():
    assert chat_reply(constant_model(97), BYTE, CONVERSATION, greedy(5)) == ("aaaaa")
    assert chat_reply(constant_model(BYTE.end_id), BYTE, CONVERSATION, greedy()) == ""
    # BOS is no stop for a chat reply.
    out = chat_reply(constant_model(BOS), BYTE, CONVERSATION, greedy(2))
    assert out == "<|bos|><|bos|>"


def test_continuation_stops_at_bos():
    assert continuation(constant_model(98), BYTE, "ab", greedy(4)) == "bbbb"
    assert continuation(constant_model(BOS), BYTE, "ab", greedy()) == ""
    out = continuation(constant_model(BYTE.end_id), BYTE, "ab", greedy(2))
    assert out == "<|end|><|end|>"


@pytest.fixture(scope="module")
def storyteller():
    """A model that learned two things: to answer "hi there" with "hello", and the document
    "Once upon a time" (BOS before and after it, as documents sit in the token stream)."""
    torch.manual_seed(0)
    model = NanoChatModel(tiny_config(context_len=64))
    chat_ids, chat_labels = conversation_example([*CONVERSATION, REPLY], BYTE)
    doc = [BOS, *BYTE.encode("Once upon a time"), BOS]
    width = max(len(chat_ids), len(doc))

    def pad(row, value):
        return row + [value] * (width - len(row))

    x = torch.tensor([pad(chat_ids, 0), pad(doc, 0)])
    y = torch.tensor([pad(chat_labels, IGNORE_INDEX), pad(doc[1:], IGNORE_INDEX)])
    assert train_on(model, x, y, steps=100, lr=2e-2) < 0.01
    return model.eval()


def test_chat_reply_is_the_learned_reply_at_temperature_zero(storyteller):
    reply = chat_reply(storyteller, BYTE, CONVERSATION, greedy(40))
    # Stopped at the <|end|> it learned: without the stop, 40 tokens run on past it.
    assert reply == "hello"
    prompt = render_prompt(CONVERSATION, BYTE)
    ids = list(generate(storyteller, prompt, greedy(40), stop_id=BYTE.end_id))
    assert ids == list(b"hello")
    # max_new_tokens short of the end cuts the reply there.
    assert chat_reply(storyteller, BYTE, CONVERSATION, greedy(3)) == "hel"


def test_continuation_is_the_learned_text_at_temperature_zero(storyteller):
    # Stopped at the BOS that ends the learned document.
    assert continuation(storyteller, BYTE, "Once upon", greedy(40)) == (" a time")
    assert continuation(storyteller, BYTE, "Once", greedy(40)) == (" upon a time")
    ids = list(generate(storyteller, [BOS, *BYTE.encode("Once")], greedy(40), stop_id=BOS))
    assert ids == list(b" upon a time")
