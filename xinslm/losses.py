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

import numpy as np
import torch
import torch.nn.functional as F

from xinslm.batches import Batch, ChatData, val_chat_batches
from xinslm.device import autocast_for
from xinslm.model import IGNORE_INDEX, NanoChatModel


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
