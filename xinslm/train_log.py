"""Where a training run reports: progress bar and messages on the console, metrics and loss
curves through dvclive, written as they come, so `dvc plots show`, DVC Studio and the VS Code
extension show a run while it goes.

`TrainLog` itself says nothing (processes other than rank 0, scripts that want silence);
`ConsoleLog` draws a tqdm bar and prints each evaluation; `LiveLog` also logs to dvclive.
"""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from xinslm.train_state import TrainState


class TrainLog:
    """Says nothing."""

    def start(self, state: TrainState, total: int) -> None:
        """Before the first step (of this process: a resumed run starts at state.step)."""

    def step(self) -> None:
        """After each step."""

    def metrics(self, step: int, metrics: dict) -> None:
        """At each log point: train/loss, lr, flops (training FLOPs so far), tokens_per_sec
        (from the second log point of a process on: the first window holds compilation and
        warm-up), and when evaluated val/loss, val/tokens and val/flops (the training tokens
        and FLOPs so far: the x of curves of val loss) and in pretrain val/bpb."""

    def end(self, summary: dict) -> None:
        """When the run is complete."""

    def close(self) -> None:
        """Always, last (also after an error)."""


class ConsoleLog(TrainLog):
    def __init__(self, name: str) -> None:
        self.name, self.total = name, 0
        self.bar: tqdm | None = None

    def start(self, state: TrainState, total: int) -> None:
        self.total = total
        # disable=None: no bar when stdout is not a terminal (dvc repro's log, CI).
        self.bar = tqdm(
            desc=self.name, unit="step", total=total, initial=state.step, mininterval=1.0,
            disable=None,
        )  # fmt: skip

    def step(self) -> None:
        self.bar.update()

    def metrics(self, step: int, metrics: dict) -> None:
        loss, speed = metrics["train/loss"], metrics.get("tokens_per_sec")
        self.bar.set_postfix(loss=f"{loss:.3f}", **({"tok_s": f"{speed:,.0f}"} if speed else {}))
        if "val/loss" in metrics:
            bpb = f", val bpb {metrics['val/bpb']:.4f}" if "val/bpb" in metrics else ""
            tqdm.write(
                f"{self.name} step {step}/{self.total}: train loss {loss:.4f}, "
                f"val loss {metrics['val/loss']:.4f}{bpb}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class LiveLog(ConsoleLog):
    """ConsoleLog, and dvclive in `directory`: each log point goes to the metrics files at
    once. A resumed run first writes back the history up to its resume checkpoint, so the
    curve ends as an uninterrupted run's (points logged after that checkpoint by the killed
    run are dropped: the resumed run logs them again)."""

    def __init__(self, name: str, directory: str | Path) -> None:
        super().__init__(name)
        self.directory = Path(directory)
        self.live = None

    def start(self, state: TrainState, total: int) -> None:
        from dvclive import Live  # imported here: it takes a second, and only rank 0 needs it

        super().start(state, total)
        # resume=False: dvclive clears what the folder held (a killed run's points included).
        self.live = Live(str(self.directory), dvcyaml=None, save_dvc_exp=False, report=None)
        for step, metrics in state.history:
            self._write(step, metrics)

    def metrics(self, step: int, metrics: dict) -> None:
        super().metrics(step, metrics)
        self._write(step, metrics)

    def _write(self, step: int, metrics: dict) -> None:
        self.live.step = step  # dvclive's x axis: optimizer steps done
        for name, value in metrics.items():
            self.live.log_metric(name, value)
        self.live.next_step()

    def end(self, summary: dict) -> None:
        self.live.summary.update(seconds=summary["seconds"], tokens=summary["tokens"])
        self.live.end()


def open_log(name: str, live_dir: str | Path | None, main: bool) -> TrainLog:
    """The log of a stage's process: dvclive and the console on rank 0 (the console only
    without a dvclive folder, or where dvclive is not installed: a stage script run by hand
    on a machine without DVC), nothing on the others."""
    if not main:
        return TrainLog()
    if live_dir is not None and not _has_dvclive():
        print(f"{name}: dvclive is not installed: no curves in {live_dir}, the console only")
        live_dir = None
    return LiveLog(name, live_dir) if live_dir is not None else ConsoleLog(name)


def _has_dvclive() -> bool:
    # An import, not a lookup: the repo's own dvclive/ folder of curves would pass for one.
    try:
        from dvclive import Live  # noqa: F401
    except ImportError:
        return False
    return True
