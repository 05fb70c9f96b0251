"""Muon: momentum, then the update orthogonalized by a Newton-Schulz iteration.

For the 2-D weight matrices inside the Transformer blocks; embeddings and the output head stay
with AdamW. After Keller Jordan's Muon as used in modded-nanogpt and nanochat (MIT).
"""

from __future__ import annotations

import torch


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The nearest semi-orthogonal matrix to g, roughly (U V^T of its SVD), by a quintic
    Newton-Schulz iteration tuned to converge fast rather than exactly. bf16 on a GPU."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.bfloat16() if g.is_cuda else g.float()
    tall = x.size(-2) > x.size(-1)
    if tall:
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= 1
    for _ in range(steps):
        s = x @ x.mT
        x = a * x + (b * s + c * s @ s) @ x
    return x.mT if tall else x


def muon_update(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    buffers: list[torch.Tensor],
    momentum: float,
    lr: float | torch.Tensor,
    ns_steps: int,
) -> None:
    """One Muon step for matrices of one shape: momentum, the Nesterov look-ahead, one batched
    orthogonalization of them all, the update. On a GPU it runs compiled as one graph
    (`fused_update`), so a shape's step is a few kernels instead of several per matrix."""
    for g, buf in zip(grads, buffers, strict=True):
        buf.lerp_(g, 1 - momentum)
    # Nesterov: the update looks ahead along the momentum.
    looking_ahead = [g.lerp(buf, momentum) for g, buf in zip(grads, buffers, strict=True)]
    updates = torch.stack(looking_ahead)
    updates = orthogonalize(updates, ns_steps)
    rows, cols = params[0].shape
    step = lr * max(1.0, rows / cols) ** 0.5  # every shape gets updates of about the same size
    for p, update in zip(params, updates.unbind(0), strict=True):
        p.sub_(update.to(p.dtype) * step)


_fused_update = None


def fused_update():
    """muon_update compiled once per process (each shape and count of matrices is one graph);
    its lr is a 0-d CPU tensor, so the schedule does not recompile it."""
    global _fused_update
    if _fused_update is None:
        _fused_update = torch.compile(muon_update, fullgraph=True, dynamic=False)
    return _fused_update


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose update is orthogonalized, scaled so that every matrix
    shape gets updates of about the same size. Matrices of one shape are orthogonalized
    together, as one batched iteration; compiled (`compiled`, on a GPU) the whole step of a
    shape is one graph."""

    def __init__(
        self,
        params,
        lr: float = 0.02,
        momentum: float = 0.95,
        ns_steps: int = 5,
        compiled: bool = True,
    ):
        super().__init__(params, {"lr": lr, "momentum": momentum, "ns_steps": ns_steps})
        self.compiled = compiled
        self.lr_cell = torch.zeros(())  # the compiled step's lr: a tensor, so no recompiles

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            by_shape: dict[tuple, list] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                by_shape.setdefault(tuple(p.shape), []).append(p)
            for params in by_shape.values():
                grads = [p.grad for p in params]
                buffers = [self.state[p]["momentum_buffer"] for p in params]
                args = (group["momentum"], group["lr"], group["ns_steps"])
                if self.compiled and params[0].is_cuda:
                    self.lr_cell.fill_(group["lr"])
                    args = (group["momentum"], self.lr_cell, group["ns_steps"])
                    fused_update()(params, grads, buffers, *args)
                else:
                    muon_update(params, grads, buffers, *args)
