"""TrainStep: one optimizer step, the same for the training loop, the bench scripts and tests.

A step trains on `grad_accum` micro-batches (this process's share of the global batch): the
learning rate from the schedule, forward in bf16 autocast on CUDA (compiled when asked),
backward, gradient clipping, the optimizers' update. With several processes the model runs in
DistributedDataParallel, which averages the gradients during the last micro-batch's backward.
"""

from __future__ import annotations

import torch

from xinslm import distributed
from xinslm.batches import Batch
from xinslm.config import TrainParams
from xinslm.device import autocast_for, use_compile
from xinslm.fp8 import check_fp8, to_float8
from xinslm.model import IGNORE_INDEX, NanoChatModel
from xinslm.optim import lr_scale, make_optimizers, set_lr


class TrainStep:
    def __init__(
        self,
        model: NanoChatModel,
        params: TrainParams,
        device: torch.device,
        compile_mode: str | None = None,
    ) -> None:
        """`model` must be on `device` already (the optimizers are made for it)."""
        self.model, self.params, self.device = model, params, device
        self.processes = distributed.current().size
        if params.fp8:  # before compiling and before the optimizers take the parameters
            check_fp8(device)
            to_float8(model)
        compiled = use_compile(params.compile, device)
        self.optimizers = make_optimizers(model, params, compiled)
        self.ddp = distributed.data_parallel(model, device)
        self.forward = torch.compile(self.ddp, mode=compile_mode) if compiled else self.ddp

    def __call__(self, micro_batches: list[Batch], step: int) -> tuple[torch.Tensor, int]:
        """Step number `step` on these micro-batches. Returns the global batch's loss (on the
        device: reading it would wait for the GPU) and the tokens it held."""
        set_lr(self.optimizers, lr_scale(step, self.params))
        micro = [[t.to(self.device, non_blocking=True) for t in b] for b in micro_batches]
        # The step's loss is the mean over every learned target of the global batch (all
        # micro-batches of all processes), as one big batch would give: each micro-batch
        # weighs by its share of the targets. DDP averages gradients over the processes,
        # hence the factor n. No host sync: the counts stay on the device.
        n = self.processes
        counts = [(y != IGNORE_INDEX).sum() for _, y in micro]
        total = distributed.all_sum_(sum(counts)).clamp(min=1)
        step_loss = torch.zeros((), device=self.device)
        for i, ((x, y), count) in enumerate(zip(micro, counts, strict=True)):
            if n > 1:  # all-reduce the gradients after the last micro-batch only
                self.ddp.require_backward_grad_sync = i == len(micro) - 1
            with autocast_for(self.device):
                _, loss = self.forward(x, y)
            share = loss * (count * n / total)
            share.backward()
            step_loss += share.detach() / n
        distributed.all_sum_(step_loss)  # the global batch's loss on every process
        if self.params.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.params.grad_clip)
        for optimizer in self.optimizers:
            optimizer.step()
        self.model.zero_grad(set_to_none=True)
        return step_loss, sum(x.numel() for x, _ in micro) * n
