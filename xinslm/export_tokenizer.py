"""A tokenizer as Hugging Face `tokenizers` JSON (tokenizer.json), built without the library.

Every xinslm tokenizer is byte-level: the byte tokenizer maps each byte to its own id, and the
BPEs (trained, or tiktoken's encodings) merge bytes by rank. tokenizer.json says the same in
Hugging Face's terms:
- pre-tokenizer: the BPE's split pattern (none for bytes), then ByteLevel, which writes each
  byte as one printable character (GPT-2's byte-to-unicode table), the alphabet of the vocab;
- model: BPE with the vocab (token bytes in that alphabet -> id) and the merges, recovered
  from the ranks: a token's merge is the pair that BPE, run on its bytes with only the lower
  ranks, ends with. `ignore_merges` makes a piece that is a whole token one id, as tiktoken
  does before merging;
- added tokens: the encoding's own specials and the chat's, at their ids.
"""

from __future__ import annotations

import re
from functools import cache
from itertools import pairwise

from xinslm.tokenizer import Tokenizer


@cache
def byte_to_unicode() -> dict[int, str]:
    """GPT-2's table: printable bytes stand for themselves, the others for characters from
    U+0100 on, so every byte string is a string of visible characters."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    table, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def as_unicode(token: bytes) -> str:
    table = byte_to_unicode()
    return "".join(table[b] for b in token)


def merges_from_ranks(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """The merge that makes each multi-byte token, in rank order: the two parts left when
    tiktoken's BPE runs on the token's bytes with only the ranks below its own."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        if len(token) > 1:
            parts = _bpe(token, ranks, rank)
            if len(parts) != 2:
                raise ValueError(f"token {token!r} (rank {rank}) is no merge of two tokens")
            merges.append((parts[0], parts[1]))
    return merges


def _bpe(token: bytes, ranks: dict[bytes, int], below: int) -> list[bytes]:
    parts = [bytes([b]) for b in token]
    while True:
        pairs = [(ranks.get(a + b), i) for i, (a, b) in enumerate(pairwise(parts))]
        found = [(r, i) for r, i in pairs if r is not None and r < below]
        if not found:
            return parts
        _, i = min(found)
        parts = parts[:i] + [parts[i] + parts[i + 1]] + parts[i + 2 :]


def tokenizer_json(tokenizer: Tokenizer) -> dict:
    """tokenizer.json's contents for an xinslm tokenizer."""
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True}
    if tokenizer.name == "byte":
        vocab = {as_unicode(bytes([b])): b for b in range(256)}
        merges, steps, specials = [], [], {}
    else:
        vocab = {as_unicode(token): rank for token, rank in tokenizer.ranks.items()}
        merges = [[as_unicode(a), as_unicode(b)] for a, b in merges_from_ranks(tokenizer.ranks)]
        # Oniguruma (Hugging Face's regex engine) reads "{1,3}+" as "({1,3})+", not as a
        # possessive {1,3}: without a "+" the match is the same (nothing after it backtracks).
        pattern = re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", tokenizer.pattern)
        split = {"type": "Split", "pattern": {"Regex": pattern}}
        steps = [{**split, "behavior": "Isolated", "invert": False}]
        specials = tokenizer.own_special
    added = {**specials, **tokenizer.special}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [_added(content, i) for content, i in sorted(added.items(), key=_id)],
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [*steps, {**byte_level, "use_regex": False}],
        },
        "post_processor": None,
        "decoder": {**byte_level, "use_regex": False},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": True,
            "vocab": vocab,
            "merges": merges,
        },
    }


def _id(item: tuple[str, int]) -> int:
    return item[1]


def _added(content: str, i: int) -> dict:
    return {
        "id": i,
        "content": content,
        "single_word": False,
        "lstrip": False,
        "rstrip": False,
        "normalized": False,
        "special": True,
    }


# Our chat template (chat_template.py) in Jinja, as transformers' apply_chat_template runs it:
# <|bos|>, then per message <|role|>\n{content}<|end|>\n; an assistant's <<expr=result>>
# becomes a calculator call and its result; the generation prompt is <|assistant|>\n.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{{- '<|' + message['role'] + '|>\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- set pieces = message['content'].split('<<') -%}"
    "{{- pieces[0] -}}"
    "{%- for piece in pieces[1:] -%}"
    "{%- set call = piece.split('>>', 1) -%}"
    "{%- if call | length == 2 and '=' in call[0] -%}"
    "{%- set parts = call[0].rsplit('=', 1) -%}"
    "{{- '<|calc_start|>' + parts[0] + '<|calc_end|><|result_start|>' + parts[1]"
    " + '<|result_end|>' + call[1] -}}"
    "{%- else -%}"
    "{{- '<<' + piece -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- else -%}"
    "{{- message['content'] -}}"
    "{%- endif -%}"
    "{{- '<|end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|assistant|>\\n' -}}{%- endif -%}"
)


def tokenizer_config(context_len: int) -> dict:
    """tokenizer_config.json: the fast tokenizer over tokenizer.json, its special tokens and
    the chat template."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|bos|>",
        "eos_token": "<|end|>",
        "pad_token": "<|end|>",
        "chat_template": CHAT_TEMPLATE,
        "model_max_length": context_len,
        "clean_up_tokenization_spaces": False,
    }
