import hashlib
import re

import pytest

from xinslm.errors import XinslmError
from xinslm.tokenizer import PIECE_CHARS, SPECIAL_TOKENS, ByteTokenizer, get_tokenizer

R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"


def test_byte_encode_is_utf8_bytes():
    assert ByteTokenizer().encode("héllo") == [104, 195, 169, 108, 108, 111]


def test_byte_specials_follow_the_bytes_in_order():
    tok = ByteTokenizer()
    assert tok.special == {
        "<|bos|>": 256,
        "<|system|>": 257,
        "<|user|>": 258,
        "<|assistant|>": 259,
        "<|end|>": 260,
        "<|calc_start|>": 261,
        "<|calc_end|>": 262,
        "<|result_start|>": 263,
        "<|result_end|>": 264,
    }
    assert list(tok.special) == list(SPECIAL_TOKENS)
    assert (tok.bos_id, tok.end_id, tok.vocab_size) == (256, 260, 265)


def test_byte_decode_with_a_special_in_the_middle():
    tok = ByteTokenizer()
    ids = [*"hé".encode(), 259, *"日本".encode()]
    assert tok.decode(ids) == "hé<|assistant|>日本"
    assert tok.decode(tok.encode("a\nb")) == "a\nb"


def test_byte_encode_never_yields_a_special():
    ids = ByteTokenizer().encode("<|assistant|>")
    assert ids == list(b"<|assistant|>")
    assert max(ids) < 256


def test_gpt2_hello_world(gpt2):
    assert gpt2.encode("Hello world") == [15496, 995]


def test_cl100k_hello_world(cl100k):
    assert cl100k.encode("Hello world") == [9906, 1917]


def test_gpt2_specials_come_after_endoftext(gpt2):
    assert gpt2.bos_id == 50257
    assert gpt2.special["<|end|>"] == 50261
    assert gpt2.vocab_size == 50266


def test_cl100k_specials_come_after_its_own_specials(cl100k):
    assert cl100k.bos_id == 100277
    assert cl100k.vocab_size == 100286


def test_tiktoken_special_text_is_ordinary_text(tiktoken_tok):
    tok = tiktoken_tok
    ids = tok.encode("<|endoftext|><|end|>")
    assert ids and max(ids) < tok.bos_id
    assert tok.decode(ids) == "<|endoftext|><|end|>"


def test_tiktoken_unicode_round_trip(tiktoken_tok):
    tok = tiktoken_tok
    text = "Grüße, 世界! 🙂 naïve café\n\ttabs  and  spaces"
    assert tok.decode(tok.encode(text)) == text


def test_missing_encodings_dir_names_file_and_dir(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(XinslmError) as e:
        get_tokenizer("gpt2", missing)
    assert str(e.value).startswith(f"tokenizer 'gpt2' needs {missing}/r50k_base.tiktoken: ")
    assert "put r50k_base.tiktoken (tiktoken's ranks file) there" in str(e.value)


def test_wrong_ranks_file_gives_sha256_error(tmp_path):
    junk = b"not a ranks file\n"
    (tmp_path / "r50k_base.tiktoken").write_bytes(junk)
    digest = hashlib.sha256(junk).hexdigest()
    expected = (
        f"{tmp_path}/r50k_base.tiktoken has sha256 {digest}, expected {R50K_SHA256} for 'r50k_base'"
    )
    with pytest.raises(XinslmError, match=re.escape(expected)):
        get_tokenizer("r50k_base", tmp_path)


def test_unknown_name(tmp_path):
    expected = (
        "unknown tiktoken encoding 'gpt5' (known: cl100k_base, gpt2, o200k_base, p50k_base, "
        "r50k_base)"
    )
    with pytest.raises(XinslmError, match=re.escape(expected)):
        get_tokenizer("gpt5", tmp_path)


def test_encode_array_is_encode_of_the_whole_text(tiktoken_tok):
    small = "Hello wörld\n\nand café ☕\n   indented\r\n\n\n<|bos|> ok\n" * 10
    assert tiktoken_tok.encode_array(small).tolist() == tiktoken_tok.encode(small)
    big = small * (3 * PIECE_CHARS // len(small) + 1)
    ids = tiktoken_tok.encode_array(big)
    assert ids.tolist() == tiktoken_tok.encode(big)
    assert ids.max() < tiktoken_tok.bos_id  # "<|bos|>" in the text is ordinary text
    assert tiktoken_tok.decode(ids.tolist()) == big


def test_byte_encode_array():
    assert ByteTokenizer().encode_array("hé").tolist() == [104, 195, 169]
