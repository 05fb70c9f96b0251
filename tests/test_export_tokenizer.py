"""The exported tokenizer: tokenizer.json encodes text to exactly our ids and decodes it back,
for the byte tokenizer, a trained BPE and gpt2; apply_chat_template gives exactly the ids our
renderer gives; a model of gpt2's vocabulary exports and loads as the same network."""

from __future__ import annotations

import json

import pytest
import torch

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from conftest import train_on  # noqa: E402
from test_bpe import TEXT  # noqa: E402
from test_generate import context_model  # noqa: E402

from xinslm.bpe import train_bpe  # noqa: E402
from xinslm.chat_template import render_prompt  # noqa: E402
from xinslm.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from xinslm.export import export_model  # noqa: E402
from xinslm.export_tokenizer import merges_from_ranks, tokenizer_json  # noqa: E402
from xinslm.generate import generate  # noqa: E402
from xinslm.sampling import Sampling  # noqa: E402
from xinslm.tokenizer import ByteTokenizer, get_tokenizer  # noqa: E402

SAMPLES = [
    "Plain ASCII, with punctuation: yes!",
    "Accents: café, naïve, Ærøskøbing, façade",
    "CJK 日本語のテキスト 中文 한국어",
    "Emoji 🙂🚀👩‍👩‍👧 and a flag 🇫🇷",
    "Whitespace runs:   three\t\ttwo tabs\n\n\nlines  \r\n  end   ",
    "Looks special: <|end|> <|assistant|> <|endoftext|> <|calc_start|>",
    "Numbers 1234567 3.14159 don't I'LL you've",
]
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there! 日本?"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is 48 / 2?"},
        {"role": "assistant", "content": "48/2 = <<48/2=24>>24.\n#### 24"},
        {"role": "user", "content": "And  twice that?"},
    ],
]


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bpe") / "tokenizer"
    train_bpe(iter([TEXT]), 300, directory)
    return get_tokenizer("bpe", bpe_dir=directory)


@pytest.fixture(params=["byte", "bpe", "gpt2"])
def tokenizer(request, bpe):
    if request.param == "byte":
        return ByteTokenizer()
    if request.param == "bpe":
        return bpe
    return request.getfixturevalue("gpt2")


def test_tokenizer_json_encodes_to_our_ids_and_decodes_back(tokenizer):
    hf = tokenizers.Tokenizer.from_str(json.dumps(tokenizer_json(tokenizer)))
    # Text that looks like a special token is text, as ours is; the library matches added
    # tokens in text unless told not to (transformers: split_special_tokens=True).
    hf.encode_special_tokens = True
    for text in SAMPLES:
        ids = hf.encode(text).ids
        assert ids == tokenizer.encode(text), text
        assert hf.decode(ids, skip_special_tokens=False) == text


def test_merges_are_the_pairs_bpe_ends_with():
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5}
    # "abc": ab (rank 3) merges before bc (4), so abc is ab + c.
    assert merges_from_ranks(ranks) == [(b"a", b"b"), (b"b", b"c"), (b"ab", b"c")]


def test_apply_chat_template_gives_our_ids(tokenizer, tmp_path):
    model = context_model(vocab_size=tokenizer.vocab_size, context_len=128)
    export_model(load_checkpoint(save(tmp_path, model, tokenizer)), tmp_path / "hf", tokenizer)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", trust_remote_code=True)
    for conversation in CONVERSATIONS:
        ids = hf.apply_chat_template(conversation, add_generation_prompt=True, tokenize=True)
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        assert list(ids) == render_prompt(conversation, tokenizer)
    text = SAMPLES[5]
    assert hf(text, split_special_tokens=True)["input_ids"] == tokenizer.encode(text)
    assert hf.decode(tokenizer.encode(SAMPLES[3])) == SAMPLES[3]


def save(tmp_path, model, tokenizer):
    """A chat checkpoint of `model` made with `tokenizer`."""
    path = tmp_path / "chat.pt"
    save_checkpoint(
        path,
        model=model.state_dict(),
        model_config=model.config.to_dict(),
        tokenizer=tokenizer.identity(),
        step=0,
    )
    return path


def test_a_model_of_each_vocabulary_exports_as_the_same_network(tokenizer, tmp_path):
    # tokenizer: byte (265 ids), a trained BPE (309) or gpt2 (50,266)
    model = context_model(vocab_size=tokenizer.vocab_size, context_len=64)
    # A trained checkpoint: a few steps through the training step, on this tokenizer's ids.
    text = torch.tensor([tokenizer.encode(TEXT)[:33]] * 2)
    train_on(model, text[:, :-1], text[:, 1:], steps=5, lr=1e-3)
    model.eval()
    export_model(load_checkpoint(save(tmp_path, model, tokenizer)), tmp_path / "hf", tokenizer)
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "hf", trust_remote_code=True, dtype=torch.float32
    ).eval()
    ids = torch.randint(0, tokenizer.vocab_size, (2, 20))
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids)[0], atol=1e-5, rtol=0)
    prompt = [tokenizer.bos_id, *tokenizer.encode("The lighthouse keeper")]
    ours = list(generate(model, prompt, Sampling(max_new_tokens=32, temperature=0)))
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=32, do_sample=False)
    theirs = out[0, len(prompt) :].tolist()
    if tokenizer.end_id in theirs:  # generate() stops at its eos, <|end|>
        theirs = theirs[: theirs.index(tokenizer.end_id) + 1]
    assert theirs == ours[: len(theirs)]
