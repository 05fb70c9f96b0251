"""TrainState: everything a training run carries from one step to the next.

That is the model, its optimizers, the position in the data, the step, the losses of the
current log window (kept on the device until a log point reads them), the totals and the
history of what was logged. A resume checkpoint holds exactly `state_dict()` (plus the RNG
states), so a run resumed from it ends as the uninterrupted run would have.
"""

from __future__ import annotations

import math

import torch

from xinslm.batches import BlockBatches, ChatBatches, MixedBatches, Prefetcher
from xinslm.model import NanoChatModel


class NonFiniteLoss(ArithmeticError):
    """The loss of a step became NaN or infinite."""

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"loss became {loss} at step {step}")
        self.step, self.loss = step, loss


class TrainState:
    def __init__(
        self,
        model: NanoChatModel,
        optimizers: list[torch.optim.Optimizer],
        batches: BlockBatches | ChatBatches | MixedBatches | Prefetcher,
        log_every: int,
    ) -> None:
        self.model, self.optimizers, self.batches = model, optimizers, batches
        self.step = 0  # optimizer steps done
        self.tokens = 0  # tokens trained on (all processes)
        self.train_loss: float | None = None  # of the last log window
        self.val_loss: float | None = None  # of the last evaluation
        self.history: list[tuple[int, dict]] = []  # (step, metrics) of every log point
        device = next(model.parameters()).device
        # Each step's loss since the last log point, on the device until a log point reads it.
        self.window = torch.zeros(log_every, device=device)
        self.window_steps = 0

    def record(self, loss: torch.Tensor, tokens: int) -> None:
        """A step is done: its loss joins the window (on the device, no host sync)."""
        self.window[self.window_steps] = loss
        self.window_steps += 1
        self.step += 1
        self.tokens += tokens

    def check_window(self) -> list[float]:
        """The window's losses (one host sync); NonFiniteLoss names the first bad step."""
        losses = self.window[: self.window_steps].tolist()
        first = self.step - len(losses) + 1
        for i, loss in enumerate(losses):
            if not math.isfinite(loss):
                raise NonFiniteLoss(first + i, loss)
        return losses

    def close_window(self) -> float:
        """At a log point: the window's mean loss, and a new window."""
        losses = self.check_window()
        self.train_loss = sum(losses) / len(losses)
        self.window_steps = 0
        return self.train_loss

    def log(self, metrics: dict) -> None:
        self.history.append((self.step, metrics))
        self.val_loss = metrics.get("val/loss", self.val_loss)

    def weights_finite(self) -> bool:
        """Every weight finite (one host sync for all of them)."""
        return bool(torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all())

    def summary(self) -> dict:
        return {"train_loss": self.train_loss, "val_loss": self.val_loss, "tokens": self.tokens}

    def state_dict(self) -> dict:
        return {
            "model": weights(self.model),
            "model_config": self.model.config.to_dict(),
            "optimizer": [o.state_dict() for o in self.optimizers],
            "data": self.batches.state_dict(),
            "step": self.step,
            "loop": {
                **self.summary(),
                "history": self.history,
                "window": self.window.cpu(),
                "window_steps": self.window_steps,
            },
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        for optimizer, saved in zip(self.optimizers, state["optimizer"], strict=True):
            optimizer.load_state_dict(saved)
        self.batches.load_state_dict(state["data"])
        self.step = state["step"]
        loop = state["loop"]
        self.train_loss, self.val_loss = loop["train_loss"], loop["val_loss"]
        self.tokens, self.history = loop["tokens"], loop["history"]
        self.window = loop["window"].to(self.window.device)
        self.window_steps = loop["window_steps"]


def weights(model: NanoChatModel) -> dict[str, torch.Tensor]:
    """The model's weights on the CPU, as checkpoints hold them."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}
