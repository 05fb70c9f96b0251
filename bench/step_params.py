"""The training settings the step benchmarks run with (bench/cpu_step.py, bench/throughput.py).

Set here, not read from params.yaml, so the figures do not move when its defaults do: AdamW
or Muon, warmup over, gradient clipping at 1.0, as params.yaml's pretrain section had them
when the benchmarks were written.
"""

from __future__ import annotations

from xinslm.config import TrainParams


def step_params(optimizer: str, lr: float, compile: bool, fp8: bool = False) -> TrainParams:
    return TrainParams(
        max_steps=10**6, batch_size=1, grad_accum=1, optimizer=optimizer, lr=lr, muon_lr=0.02,
        muon_momentum=0.95, min_lr_frac=0.1, warmup_steps=0, weight_decay=0.1, beta1=0.9,
        beta2=0.95, grad_clip=1.0, log_every=10, eval_every=50, eval_batches=8,
        checkpoint_every=0, seed=0, device="auto", compile=compile, nproc=1,
        fp8=fp8,
    )  # fmt: skip
