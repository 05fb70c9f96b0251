"""Held-out evaluation: bits per byte on text, assistant-only loss on chats, and samples.

Bits per byte (bpb) is the summed next-token loss in nats over held-out text, divided by
ln 2 and by the UTF-8 bytes of the text those target tokens decode to. Unlike loss per token
it does not depend on the tokenizer, so runs with different tokenizers compare (nanochat
reports it the same way). Targets that are special tokens (BOS) carry no text: they count in
neither sum.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from xinslm.chat import render_prompt
from xinslm.data import ChatData, val_chat_batches
from xinslm.generate import generate
from xinslm.model import NanoChatModel
from xinslm.tokenizer import Tokenizer
from xinslm.train import autocast_for, evaluate


@torch.no_grad()
def text_loss_and_bpb(
    model: NanoChatModel,
    blocks: np.ndarray,
    token_bytes: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> dict:
    """Mean loss per target token and bits per byte over every [T+1] block in `blocks`."""
    model.eval()
    token_bytes = token_bytes.to(device)
    nats_all, nats_text, n_targets, n_bytes = 0.0, 0.0, 0, 0
    for first in range(0, len(blocks), batch_size):
        rows = torch.from_numpy(blocks[first : first + batch_size].astype(np.int64)).to(device)
        x, y = rows[:, :-1], rows[:, 1:]
        with autocast_for(device):
            logits, _ = model(x)
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        nbytes = token_bytes[y.flatten()]
        nats_all += float(losses.sum())
        nats_text += float((losses * (nbytes > 0)).sum())
        n_targets += y.numel()
        n_bytes += int(nbytes.sum())
    return {
        "val_loss": nats_all / max(n_targets, 1),
        "val_bpb": nats_text / math.log(2) / max(n_bytes, 1),
        "tokens": n_targets,
        "bytes": n_bytes,
    }


def assistant_loss(
    model: NanoChatModel, chats: ChatData, batch_size: int, device: torch.device
) -> float:
    """Mean loss per learned target (assistant tokens and their <|end|>) over every
    held-out conversation."""
    return evaluate(model, val_chat_batches(chats, batch_size, len(chats)), device)


def chat_reply(
    model: NanoChatModel, tokenizer: Tokenizer, conversation: list[dict], **sampling
) -> str:
    """The model's next assistant message after `conversation` (which ends with a user turn)."""
    prompt = render_prompt(conversation, tokenizer)
    return tokenizer.decode(list(generate(model, prompt, stop_id=tokenizer.end_id, **sampling)))


def continuation(model: NanoChatModel, tokenizer: Tokenizer, text: str, **sampling) -> str:
    """The model's continuation of `text`, as a document that starts with BOS."""
    prompt = [tokenizer.bos_id, *tokenizer.encode(text)]
    return tokenizer.decode(list(generate(model, prompt, stop_id=tokenizer.bos_id, **sampling)))
