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


_compiled_orthogonalize = None


def _orthogonalize_on(device: torch.device, compiled: bool):
    """Compiled on a GPU if asked, where fusing the iteration's small kernels pays (after a
    few seconds of compiling); plain elsewhere."""
    global _compiled_orthogonalize
    if device.type != "cuda" or not compiled:
        return orthogonalize
    if _compiled_orthogonalize is None:
        _compiled_orthogonalize = torch.compile(orthogonalize)
    return _compiled_orthogonalize


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose update is orthogonalized, scaled so that every matrix
    shape gets updates of about the same size. Matrices of one shape are orthogonalized
    together, as one batched iteration."""

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
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - group["momentum"])
                by_shape.setdefault(tuple(p.shape), []).append(p)
            for shape, params in by_shape.items():
                # Nesterov: the update looks ahead along the momentum.
                updates = torch.stack(
                    [
                        p.grad.lerp(self.state[p]["momentum_buffer"], group["momentum"])
                        for p in params
                    ]
                )
                updates = _orthogonalize_on(updates.device, self.compiled)(
                    updates, group["ns_steps"]
                )
                scale = max(1.0, shape[-2] / shape[-1]) ** 0.5
                for p, update in zip(params, updates, strict=True):
                    p.add_(update.to(p.dtype), alpha=-group["lr"] * scale)
