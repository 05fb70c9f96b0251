"""Loss on held-out data: mean loss per learned target, and bits per byte.

Bits per byte (bpb) is the summed next-token loss in nats over held-out text, divided by
ln 2 and by the UTF-8 bytes of the text those target tokens decode to. Unlike loss per token
it does not depend on the tokenizer, so runs with different tokenizers compare (nanochat
reports it the same way). Targets that are special tokens (BOS) carry no text: they count in
neither sum.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from xinslm.artifact import open_array
from xinslm.batches import Batch, ChatData, val_block_batches, val_chat_batches
from xinslm.device import autocast_for
from xinslm.model import IGNORE_INDEX, NanoChatModel

if TYPE_CHECKING:
    from xinslm.blocks import TokenBlocks


@torch.no_grad()
def loss_sums(model: NanoChatModel, batches: Iterable[Batch], device: torch.device) -> tuple:
    """(summed loss, learned targets) over the batches: their ratio is the mean loss per
    learned target, and sums from several processes add up."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast_for(device):
            _, loss = model(x, y)
        n = int((y != IGNORE_INDEX).sum())
        total, count = total + float(loss) * n, count + n
    model.train(was_training)
    return total, count


def assistant_loss(
    model: NanoChatModel, chats: ChatData, batch_size: int, device: torch.device
) -> float:
    """Mean loss per learned target (assistant tokens and their <|end|>) over every
    held-out conversation."""
    total, count = loss_sums(model, val_chat_batches(chats, batch_size, len(chats)), device)
    return total / max(count, 1)


@torch.no_grad()
def text_sums(
    model: NanoChatModel, batches: Iterable[Batch], token_bytes: torch.Tensor, device: torch.device
) -> tuple[float, int, float, int]:
    """(nats over every target, targets, nats over the targets that are text, their UTF-8
    bytes): the sums behind val loss and bits per byte, which add up across processes.
    `token_bytes` holds each id's bytes (tokenize-text's token_bytes array)."""
    was_training = model.training
    model.eval()
    token_bytes = token_bytes.to(device)
    nats_all, n_targets, nats_text, n_bytes = 0.0, 0, 0.0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast_for(device):
            logits, _ = model(x)
        losses = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
        nbytes = token_bytes[y.flatten()]
        nats_all += float(losses.sum())
        nats_text += float((losses * (nbytes > 0)).sum())
        n_targets += y.numel()
        n_bytes += int(nbytes.sum())
    model.train(was_training)
    return nats_all, n_targets, nats_text, n_bytes


def read_token_bytes(directory: str | Path, meta: dict) -> torch.Tensor:
    """Each id's UTF-8 bytes (0: special tokens), as tokenize-text recorded them in its
    artifact and pack carried into data/blocks: pretrain's val bpb and evaluate's read this
    one table."""
    return torch.from_numpy(open_array(directory, meta, "token_bytes").astype(np.int64))


def bits_per_byte(nats_text: float, n_bytes: int) -> float:
    return nats_text / math.log(2) / max(n_bytes, 1)


def text_loss_and_bpb(
    model: NanoChatModel,
    blocks: TokenBlocks | np.ndarray,
    token_bytes: torch.Tensor,
    batch_size: int,
    device: torch.device,
) -> dict:
    """Mean loss per target token and bits per byte over every [T+1] block in `blocks`."""
    batches = val_block_batches(blocks, batch_size, len(blocks))
    nats_all, n_targets, nats_text, n_bytes = text_sums(model, batches, token_bytes, device)
    return {
        "val_loss": nats_all / max(n_targets, 1),
        "val_bpb": bits_per_byte(nats_text, n_bytes),
        "tokens": n_targets,
        "bytes": n_bytes,
    }
