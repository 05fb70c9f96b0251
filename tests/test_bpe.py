"""The trained BPE tokenizer: train, save in tiktoken format, load, and use everywhere."""

from __future__ import annotations

import json
import re

import pytest
from conftest import conversation_example, tiktoken_tokenizer, token_ids, tokenize, train_params
from hypothesis import given, settings
from hypothesis import strategies as st

from xinslm.artifact import check_tokenizer
from xinslm.bpe import train_bpe, training_text, write_unused
from xinslm.corpus import in_val
from xinslm.errors import XinslmError
from xinslm.tokenizer import ByteTokenizer, TiktokenTokenizer, get_tokenizer

TEXT = (
    "The keeper climbed the stairs of the lighthouse every evening. "
    "He lit the lamp, wound the clock, and watched the sea turn dark. "
    "Café owners, naïve sailors and 1234 gulls — all of them knew his light.\n"
) * 40


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("bpe") / "tokenizer"
    train_bpe(iter([TEXT]), 300, directory)
    return directory


@pytest.fixture(scope="module")
def bpe(bpe_dir):
    return get_tokenizer("bpe", bpe_dir=bpe_dir)


def test_trained_bpe_has_the_asked_size_and_specials_after_it(bpe, bpe_dir) -> None:
    meta = json.loads((bpe_dir / "meta.json").read_text())
    assert meta["vocab_size"] == 300 and meta["trained_on_chars"] == len(TEXT)
    assert bpe.vocab_size == 309
    assert bpe.special == {
        "<|bos|>": 300,
        "<|system|>": 301,
        "<|user|>": 302,
        "<|assistant|>": 303,
        "<|end|>": 304,
        "<|calc_start|>": 305,
        "<|calc_end|>": 306,
        "<|result_start|>": 307,
        "<|result_end|>": 308,
    }
    # It learned merges: the training text takes far fewer tokens than bytes.
    assert len(bpe.encode(TEXT)) < len(TEXT.encode()) / 1.5


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_bpe_round_trips_any_text_and_never_emits_a_special(bpe, text) -> None:
    ids = bpe.encode(text)
    assert bpe.decode(ids) == text
    assert all(0 <= i < 300 for i in ids)


def test_special_token_strings_are_ordinary_text(bpe) -> None:
    ids = bpe.encode("<|assistant|>hi<|end|>")
    assert bpe.decode(ids) == "<|assistant|>hi<|end|>"
    assert max(ids) < bpe.bos_id


@pytest.mark.parametrize("name", ["byte", "bpe", "gpt2", "cl100k_base"])
def test_chat_template_special_tokens_survive_every_tokenizer(name, bpe) -> None:
    tok = {"byte": ByteTokenizer(), "bpe": bpe}.get(name) or tiktoken_tokenizer(name)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say <|assistant|> twice"},
        {"role": "assistant", "content": "<|assistant|> <|assistant|>"},
    ]
    ids, labels = conversation_example(conversation, tok)
    assert ids.count(tok.special["<|assistant|>"]) == 1
    assert ids.count(tok.end_id) == 3 and ids[0] == tok.bos_id
    learned = tok.decode([t for t in labels if t != -100])
    assert learned == "<|assistant|> <|assistant|><|end|>"


def test_two_trained_bpes_of_one_size_are_told_apart(bpe, tmp_path) -> None:
    bees = "Bees gather nectar from clover, thyme and lavender; the hive hums with work. " * 50
    train_bpe(iter([bees]), 300, tmp_path)
    other = get_tokenizer("bpe", bpe_dir=tmp_path)
    assert other.vocab_size == bpe.vocab_size
    with pytest.raises(XinslmError, match="made with tokenizer fingerprint="):
        check_tokenizer("data/tokens/meta.json", bpe.identity(), other.identity())


def test_training_reads_only_the_train_split_up_to_max_chars(tmp_path) -> None:
    path = tmp_path / "t.txt"
    path.write_text("train line\n" * 9 + "val line!!\n")
    text = train_params("text", input=str(path), val_fraction=0.1)
    assert "".join(training_text(text, 10**6)) == "train line\n" * 9
    assert "".join(training_text(text, 15)) == "train line\ntrai"
    # A sharded corpus: the train documents only, whole, in shard order.
    (tmp_path / "shards").mkdir()
    docs = [f"document {i}\n" for i in range(40)]
    with open(tmp_path / "shards" / "a.jsonl", "w") as f:
        f.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    text = train_params("text", input=str(tmp_path / "shards"), val_fraction=0.3)
    train = [d for d in docs if not in_val(d, 0.3)]
    assert 0 < len(train) < len(docs)
    assert "".join(training_text(text, 10**6)) == "".join(train)


def test_errors(tmp_path) -> None:
    with pytest.raises(XinslmError, match=re.escape("a BPE needs more than 256")):
        train_bpe(iter(["abc"]), 256, tmp_path / "a")
    with pytest.raises(XinslmError, match="too few distinct pairs"):
        train_bpe(iter(["ab ab ab"]), 400, tmp_path / "b")
    assert not (tmp_path / "b").exists()
    with pytest.raises(XinslmError, match="run the train-tokenizer stage"):
        get_tokenizer("bpe", bpe_dir=tmp_path / "missing")


def test_tampered_bpe_file_is_refused(bpe_dir, tmp_path) -> None:
    copy = tmp_path / "tok"
    copy.mkdir()
    (copy / "meta.json").write_text((bpe_dir / "meta.json").read_text())
    (copy / "bpe.tiktoken").write_text((bpe_dir / "bpe.tiktoken").read_text()[:-10] + "\n")
    with pytest.raises(XinslmError, match="does not match"):
        TiktokenTokenizer.trained(copy)


def test_unused_note_is_always_the_same(tmp_path) -> None:
    write_unused(tmp_path / "a", "byte")
    write_unused(tmp_path / "b", "gpt2")
    assert (tmp_path / "a/meta.json").read_bytes() == (tmp_path / "b/meta.json").read_bytes()


def test_vocab_over_65536_is_stored_as_uint32(tmp_path) -> None:
    tok = tiktoken_tokenizer("o200k_base")
    path = tmp_path / "t.txt"
    text = "Hello wörld — 東京 and café\n" * 50
    path.write_text(text)
    meta = tokenize(path, tok, tmp_path / "tokens", val_fraction=0.0).meta
    assert meta["dtype"] == "uint32"
    expected = [tok.bos_id, *tok.encode(text)]
    assert token_ids(tmp_path / "tokens", "train") == expected and max(expected) > 65535


def test_retraining_in_the_same_place_loads_the_new_tokenizer(tmp_path, monkeypatch) -> None:
    # tiktoken's own loader caches files by path: a retrained BPE must not load as the old one.
    monkeypatch.chdir(tmp_path)
    train_bpe(iter([TEXT]), 280, "data/tokenizer")
    assert get_tokenizer("bpe").vocab_size == 289
    train_bpe(iter([TEXT]), 300, "data/tokenizer")
    assert get_tokenizer("bpe").vocab_size == 309
