"""Will the model fit? Its parameters and the memory one training process needs, estimated
from the config alone (no model is built), against what the device has free.

A training process holds the fp32 weights, the optimizers' state (AdamW: two fp32 moments
per weight; Muon: one fp32 momentum per block matrix, AdamW for the rest), and then either
one micro-batch's activations or the fp32 gradients (with Muon's working memory in its step).
The activations are an estimate: the tensors autograd keeps, counted from model.py's forward
(bf16 under CUDA's autocast, fp32 on the CPU), and the logits of the loss. bench/memory.py
measures it: on the CPU within 5% of the bytes torch holds at its peak, for six shapes
(glibc's heap keeps up to ~1.4x that resident, not counted, so a refusal is never wrong by
it). Compiled on CUDA, two terms (marked) are fitted to the d12 and d20 peaks in
bench/RESULTS.md (all six within 5%); eager CUDA is counted, not measured. Everything is
counted in Python ints, exact at any size, so an absurd config is refused here rather than
by an allocator's traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal

import torch

from xinslm import distributed
from xinslm.config import TrainParams
from xinslm.device import pick_device, use_compile
from xinslm.errors import XinslmError
from xinslm.flops import scaling_params
from xinslm.model import ModelConfig

GIB = 2**30
FP32 = 4


def num_params(config: ModelConfig) -> int:
    """NanoChatModel's parameters: the scaling ones (flops.py) and the input embedding."""
    return scaling_params(config) + config.vocab_size * config.n_embd


def block_matrix_params(config: ModelConfig) -> int:
    """The 2-D weights inside the blocks: what Muon takes (optim.make_optimizers)."""
    return scaling_params(config) - config.n_embd * config.vocab_size


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one training process holds, by what holds them."""

    params: int
    weights: int
    grads: int
    optimizer: int
    activations: int
    step: int  # the optimizer step's working memory (Muon's), once the activations are freed

    def peak(self, ddp: bool = False) -> int:
        """The most held at once. Backward makes the gradients as it frees the activations,
        and every step frees them again (zero_grad to None), so the peak holds the activations
        or the gradients with the step's working memory, not both; under DDP the gradients are
        views of its buckets, which stay."""
        if ddp:
            return self.weights + self.grads + self.optimizer + max(self.activations, self.step)
        return self.weights + self.optimizer + max(self.activations, self.grads + self.step)

    def parts(self, ddp: bool = False) -> str:
        """What the peak is made of, in words."""
        size = {k: _size(getattr(self, k)) for k in ("weights", "grads", "optimizer")}
        size.update(activations=_size(self.activations), step=_size(self.step))
        muon = "Muon's step " + size["step"]
        if ddp:
            then = f"activations {size['activations']}" + (f" or {muon}" if self.step else "")
            held = f"weights {size['weights']}, gradients {size['grads']}, optimizer"
            return f"{held} {size['optimizer']}, then {then}"
        then = f"gradients {size['grads']}" + (f" and {muon}" if self.step else "")
        held = f"weights {size['weights']}, optimizer {size['optimizer']}"
        return f"{held}, then activations {size['activations']} or {then}"


def activation_bytes(
    config: ModelConfig, batch_size: int, tokens: int, cuda: bool, compiled: bool
) -> int:
    """What forward keeps for backward for one micro-batch of batch_size rows of `tokens`,
    at the start of backward (the peak). Per token and layer, counted from model.py: the
    block's input and normed input, q|k|v, q and k before and after their norm, attention's
    output and its reshaped copy (flash attention keeps no tokens x tokens matrix), then the
    MLP's input, normed input and two 4 x n_embd tensors: 17 n_embd + 4 kv width + heads.
    The head, eager: float32 logits kept twice (tanh's and log-softmax's outputs) and two
    more in backward's first step. And the weights' copies the forward makes (q|k|v
    concatenated; on CUDA, autocast's bf16 copy of every matrix)."""
    d, kv = config.n_embd, config.n_kv_head * (config.n_embd // config.n_head)
    width = 2 if cuda else FP32  # bf16 under autocast, fp32 on the CPU
    # Compiled (fitted), the blocks' two normed inputs are recomputed in backward, not kept.
    per_token = config.n_layer * ((15 if compiled else 17) * d + 4 * kv + config.n_head) + 4 * d
    rows = batch_size * tokens
    # Compiled, softcap and loss are one fused kernel each way: only the head's output is
    # kept, and backward reuses its buffer (fitted).
    logits = rows * config.vocab_size * (width if compiled else 4 * FP32)
    qkv_copies = config.n_layer * d * (d + 2 * kv) * width
    cast_copies = 2 * scaling_params(config) if cuda else 0
    return rows * per_token * width + logits + qkv_copies + cast_copies


def muon_step_bytes(config: ModelConfig, cuda: bool) -> int:
    """Muon's working memory during its step (muon.muon_update), for its largest group of
    same-shaped matrices: the looked-ahead copies and their stack (fp32), the normalized
    copy and the Newton-Schulz temporaries (bf16 on CUDA), of which three or four are
    (short side)^2 per matrix. Held with the gradients, after the activations are freed."""
    d, kv = config.n_embd, config.n_kv_head * (config.n_embd // config.n_head)
    L, width = config.n_layer, 2 if cuda else FP32
    groups = [(2 * L, d, d), (2 * L, kv, d), (L, 4 * d, d), (L, d, 4 * d)]  # q, proj; k, v
    if kv == d:
        groups = [(4 * L, d, d), *groups[2:]]
    return max(
        n * (2 * rows * cols * FP32 + (3 * rows * cols + 4 * min(rows, cols) ** 2) * width)
        for n, rows, cols in groups
    )


def estimate_training(
    config: ModelConfig,
    batch_size: int,
    tokens: int,
    optimizer: str,
    cuda: bool,
    compiled: bool,
) -> MemoryEstimate:
    """One training process: fp32 weights and gradients, the optimizer's state (AdamW's two
    moments; Muon's momentum for the block matrices and AdamW's moments for the rest), one
    micro-batch's activations and Muon's working memory in its step."""
    params = num_params(config)
    adamw_params = params - block_matrix_params(config) if optimizer == "muon" else params
    state = 2 * adamw_params + (params - adamw_params)
    return MemoryEstimate(
        params=params,
        weights=params * FP32,
        grads=params * FP32,
        optimizer=state * FP32,
        activations=activation_bytes(config, batch_size, tokens, cuda, compiled),
        step=muon_step_bytes(config, cuda) if optimizer == "muon" else 0,
    )


def available_bytes(device: torch.device) -> int | None:
    """Memory free for this process on `device`: the GPU's free memory, the CPU's
    MemAvailable (Linux), else the physical memory; None where it is not known (mps)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def check_training_memory(
    stage: str, config: ModelConfig, p: TrainParams, rows: int, tokens: int, keys: str
) -> str:
    """The estimate of a training process on its device (`rows` x `tokens` per micro-batch)
    as one line to print, or XinslmError if it needs more than the device has free. `keys`
    are the params that make it smaller. On the CPU, the nproc processes share the memory."""
    device, world = pick_device(p.device), distributed.current()
    if device.type == "cuda" and world.size > 1 and world.local_rank < torch.cuda.device_count():
        device = torch.device("cuda", world.local_rank)  # as distributed.init will pick it
    cuda, compiled = device.type == "cuda", use_compile(p.compile, device)
    e = estimate_training(config, rows, tokens, p.optimizer, cuda, compiled)
    processes = world.size if device.type == "cpu" else 1
    need, free = e.peak(world.size > 1) * processes, available_bytes(device)
    each = f", x {processes} processes" if processes > 1 else ""
    parts = e.parts(world.size > 1)
    estimate = f"{_count(e.params)} parameters need about {_size(need)} ({parts}{each})"
    if free is not None and need > free:
        raise XinslmError(
            f"{stage}: the model does not fit: {estimate}, but {_size(free)} is available "
            f"on {device}; make it smaller: {keys}"
        )
    where = f"of {_size(free)} available" if free is not None else "(free memory unknown)"
    return f"{stage}: memory estimate: {estimate} {where} on {device}"


def _size(n: int) -> str:
    """Bytes in MiB or GiB, from an exact int of any size (an absurd config's may pass 10^308,
    past any float)."""
    if n < GIB:
        return f"{Decimal(n) / 2**20:.1f} MiB"
    gib = Decimal(n) / GIB
    return f"{gib:,.1f} GiB" if gib < 10**9 else f"{gib:.2e} GiB"


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"{Decimal(n):.2e}"
