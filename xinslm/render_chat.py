"""render-chat: the train and val chat JSONL files -> token ids, learned flags and offsets.

Per split: `{split}_ids.bin` (token ids), `{split}_mask.bin` (uint8, 1 where the token is a
learned target) and `{split}_offsets.bin` (int64, conversation i is ids[offsets[i]:offsets[i+1]]),
plus meta.json with the counts and every skipped record. For the train split also the
fingerprints of each conversation's user messages (`train_fingerprints.bin`, int64 hashes,
and `train_fingerprint_owners.bin`, the conversation of each; see contamination.py), which
evaluate-task checks its questions against.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from xinslm.artifact import ArrayWriter, token_dtype, write_meta
from xinslm.atomic import atomic_dir
from xinslm.chat_records import Conversation, load_conversations
from xinslm.chat_template import fit_conversation, render_conversation
from xinslm.config import ChatParams
from xinslm.contamination import (
    conversation_fingerprints,
    fingerprint_table,
    matching_conversations,
    task_questions,
)
from xinslm.errors import XinslmError
from xinslm.tokenizer import Tokenizer


def render_chat(
    chat: ChatParams, tokenizer: Tokenizer, out_dir: str | Path, context_len: int
) -> dict:
    """Render the train and val chat JSONL files (chat.input, chat.val_input) into token ids,
    learned flags and offsets in `out_dir`. A bad record fails or is skipped (chat.on_error);
    a conversation longer than context_len is cut back to whole turns (chat.overlong:
    truncate) or dropped (drop). The counts, and every skipped record, go into meta.json."""
    splits, skipped = {}, []
    for split, path in (("train", chat.input), ("val", chat.val_input)):
        splits[split], bad = load_conversations(path, chat.on_error, chat.utf8_errors)
        skipped += bad
    # Each training conversation is fingerprinted once: for decontamination and for the table
    # evaluate-task checks its questions against.
    prints = [conversation_fingerprints(c) for c in splits["train"]]
    keep, decontaminated = _decontaminate(prints, chat.decontaminate, chat.utf8_errors)
    splits["train"] = [c for c, k in zip(splits["train"], keep, strict=True) if k]
    prints = [p for p, k in zip(prints, keep, strict=True) if k]
    counts = {"truncated": 0, "dropped": 0}
    arrays, sizes, dtype = {}, {}, token_dtype(tokenizer.vocab_size)
    with atomic_dir(out_dir) as tmp:
        written: list[bool] = []  # for each training conversation: did it fit?
        for split, conversations in splits.items():
            fits = written if split == "train" else []
            rows = _rows(conversations, tokenizer, context_len, chat, counts, fits)
            split_arrays, sizes[split] = _write_split(tmp, split, rows, dtype)
            arrays.update(split_arrays)
        kept = [p for p, fit in zip(prints, written, strict=True) if fit]
        arrays.update(_write_fingerprints(tmp, kept))
        if sizes["train"] == 0:
            raise XinslmError(
                f"{chat.input}: every training conversation is longer than context_len "
                f"{context_len}; raise model.context_len"
            )
        meta = {
            "kind": "chat",
            "tokenizer": tokenizer.identity(),
            "arrays": arrays,
            "context_len": context_len,
            "conversations": sizes,
            "skipped": len(skipped),
            "skipped_records": skipped[:100],
            **counts,
            "tool_calls": chat.tool_calls,
            "decontaminated": decontaminated,
            "sources": {"train": str(chat.input), "val": str(chat.val_input)},
        }
        write_meta(tmp, meta)
    return meta


def _decontaminate(
    prints: list[set[int]], task_files: list[str], utf8_errors: str
) -> tuple[list[bool], dict]:
    """Which conversations (by their fingerprints) hold no question of the task files, and
    how many each file dropped (a conversation counts for the first file it matches)."""
    hashes, owners = fingerprint_table(prints)
    dropped: set[int] = set()
    report = {}
    for path in task_files:
        questions = task_questions(path, utf8_errors)
        new = set(matching_conversations(hashes, owners, questions).tolist()) - dropped
        dropped |= new
        report[str(path)] = {"questions": len(questions), "dropped": len(new)}
    return [i not in dropped for i in range(len(prints))], report


def _write_fingerprints(directory: Path, prints: list[set[int]]) -> dict:
    hashes, owners = fingerprint_table(prints)
    arrays = {}
    for name, values in (("train_fingerprints", hashes), ("train_fingerprint_owners", owners)):
        with ArrayWriter(directory / f"{name}.bin", np.int64) as out:
            out.write(values)
            arrays[name] = out.close()
    return arrays


def _rows(
    conversations: list[Conversation],
    tokenizer: Tokenizer,
    context_len: int,
    chat: ChatParams,
    counts: dict,
    fits: list[bool],
) -> Iterator[tuple | None]:
    """Each conversation's (ids, flags), or None where dropped; `fits` records which."""
    for conversation in conversations:
        row = _fit(conversation, tokenizer, context_len, chat, counts)
        fits.append(row is not None)
        yield row


def _fit(
    conversation: Conversation,
    tokenizer: Tokenizer,
    context_len: int,
    chat: ChatParams,
    counts: dict,
) -> tuple[list, list] | None:
    """The conversation's (ids, learned flags), cut back to fit context_len; None if dropped."""
    ids, learned = render_conversation(conversation, tokenizer, chat.tool_calls)
    if len(ids) <= context_len:
        return ids, learned
    fitted = fit_conversation(conversation, tokenizer, context_len, chat.tool_calls)
    if chat.overlong == "drop" or fitted is None:
        counts["dropped"] += 1
        return None
    counts["truncated"] += 1
    return fitted


def _write_split(
    directory: Path, split: str, rows: Iterator[tuple | None], dtype: np.dtype
) -> tuple[dict, int]:
    """Write {split}_ids.bin, {split}_mask.bin (uint8, 1 where the token is learned) and
    {split}_offsets.bin (int64: conversation i is ids[offsets[i]:offsets[i+1]]) from the
    (ids, flags) rows, one at a time (None: dropped). Returns meta's arrays and the count."""
    offsets = [0]
    with (
        ArrayWriter(directory / f"{split}_ids.bin", dtype) as ids_out,
        ArrayWriter(directory / f"{split}_mask.bin", np.uint8) as mask_out,
        ArrayWriter(directory / f"{split}_offsets.bin", np.int64) as offsets_out,
    ):
        for row in rows:
            if row is not None:
                ids_out.write(row[0])
                mask_out.write(row[1])
                offsets.append(offsets[-1] + len(row[0]))
        offsets_out.write(offsets)
        writers = {"ids": ids_out, "mask": mask_out, "offsets": offsets_out}
        return {f"{split}_{name}": w.close() for name, w in writers.items()}, len(offsets) - 1
