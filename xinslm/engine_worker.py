"""The engine's own thread, fed by the server's event loop.

The engine is not thread-safe and a step blocks for milliseconds, so it cannot run on the
event loop: one thread owns it and is the only caller of `add` and `step`. Requests come in
through a thread-safe queue; the thread adds every request that is waiting, steps while
anything is live (all live requests advance in the same batched step, and new ones join
between steps: continuous batching) and sleeps on the queue when idle. Each request's new
tokens, and how it ended, go back to that request's asyncio.Queue through
`loop.call_soon_threadsafe`.

A request whose client went away is cancelled (`Job.cancel`, from the event loop): the
engine drops its sequence at its next step. If a step raises, every request in the engine
gets the error (one batched step serves them all, so none of them can be trusted), the
engine is rebuilt, and the thread goes on serving the next requests.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from xinslm.engine import Engine, Sequence
from xinslm.sampling import Sampling
from xinslm.tool_calls import Calculator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Update:
    """What a request got from one step: its new tokens, its finish reason once it ended
    (see engine.Sequence), or the error that ended it."""

    tokens: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: BaseException | None = None


class EngineFailed(Exception):
    """The engine raised while it served this request."""


class Job:
    """One request, as both threads see it: created on the event loop (`EngineWorker.submit`),
    read there through `updates()`, fed by the worker thread."""

    def __init__(
        self,
        prompt: list[int],
        sampling: Sampling,
        stop_ids: frozenset[int],
        loop: asyncio.AbstractEventLoop,
        tool: Calculator | None = None,
    ) -> None:
        self.prompt, self.sampling, self.stop_ids = prompt, sampling, stop_ids
        self.tool = tool
        self.cancelled = False
        self._loop = loop
        self._queue: asyncio.Queue[Update] = asyncio.Queue()
        self._seq: Sequence | None = None  # set by the worker thread when it adds the job
        self._sent = 0  # worker side: how many of the sequence's tokens were pushed

    def cancel(self) -> None:
        """Stop generating (from any thread); harmless once the sequence has ended."""
        self.cancelled = True
        seq = self._seq
        if seq is not None:
            seq.cancelled = True

    async def updates(self) -> AsyncIterator[Update]:
        """The job's updates as they come, up to and including the one with its finish
        reason; raises EngineFailed if the engine failed it."""
        while True:
            update = self._merge(await self._queue.get())
            if update.error is not None:
                raise EngineFailed(f"{type(update.error).__name__}: {update.error}")
            yield update
            if update.finish_reason is not None:
                return

    def _merge(self, update: Update) -> Update:
        """This update and those queued behind it as one: when the event loop falls behind
        (many streams), it sends one chunk for several tokens instead of one per token."""
        while update.error is None and update.finish_reason is None and not self._queue.empty():
            later = self._queue.get_nowait()
            tokens = update.tokens + later.tokens
            update = Update(tokens, later.finish_reason, later.error)
        return update

    # --- the worker thread's side ----------------------------------------------------

    def _attach(self, seq: Sequence) -> None:
        self._seq = seq
        # cancel() sets the flag before it reads _seq, and here _seq is set before the flag
        # is read: whichever thread comes second sees the other's write.
        if self.cancelled:
            seq.cancelled = True

    def _publish(self, seq: Sequence) -> None:
        new, self._sent = seq.tokens[self._sent :], len(seq.tokens)
        self._push(Update(new, seq.finish_reason))

    def _push(self, update: Update) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, update)
        except RuntimeError:
            pass  # the event loop is closed: the server is gone, nobody is waiting


class EngineWorker:
    """The thread that owns an Engine. `make_engine` builds it now, and again after a step
    raised (the failed one's state is not trusted)."""

    def __init__(self, make_engine: Callable[[], Engine]) -> None:
        self._make_engine = make_engine
        self.engine = make_engine()
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()  # None: stop
        self._jobs: dict[Sequence, Job] = {}  # the sequences in the engine, and their jobs
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="xinslm-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish the step under way, fail what is left, and end the thread."""
        if self._thread is not None:
            self._inbox.put(None)
            self._thread.join()
            self._thread = None

    def submit(
        self,
        prompt: list[int],
        sampling: Sampling,
        stop_ids: Iterable[int],
        tool: Calculator | None = None,
    ) -> Job:
        """Queue a request (call from the event loop); read its tokens with `job.updates()`.
        With a tool, the sequence's calculator calls are answered."""
        if self._thread is None or not self._thread.is_alive():
            raise RuntimeError("the engine worker is not running")
        job = Job(list(prompt), sampling, frozenset(stop_ids), asyncio.get_running_loop(), tool)
        self._inbox.put(job)
        return job

    # --- the thread ------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._take_jobs(wait=not self.engine.busy):
                if self.engine.busy:
                    self._step()
        finally:
            self._fail_all(RuntimeError("the server is shutting down"))

    def _take_jobs(self, wait: bool) -> bool:
        """Add every queued job to the engine, first waiting for one if `wait` (the engine
        is idle: nothing to do until a request comes). False once asked to stop."""
        try:
            job = self._inbox.get(block=wait)
        except queue.Empty:
            return True
        while job is not None:
            self._add(job)
            try:
                job = self._inbox.get_nowait()
            except queue.Empty:
                return True
        return False

    def _add(self, job: Job) -> None:
        try:
            seq = self.engine.add(job.prompt, job.sampling, job.stop_ids, job.tool)
        except Exception as error:  # the server checks prompts first; fail only this one
            job._push(Update(error=error))
            return
        job._attach(seq)
        self._jobs[seq] = job

    def _step(self) -> None:
        try:
            touched = self.engine.step()
        except Exception as error:
            log.exception(
                "the engine failed: failing its %d requests, rebuilding it", len(self._jobs)
            )
            self._fail_all(error)
            self._rebuild()
            return
        for seq in touched:
            job = self._jobs.get(seq)
            if job is None:
                continue  # failed earlier and left in an engine that could not be rebuilt
            if seq.done:
                del self._jobs[seq]
            job._publish(seq)

    def _fail_all(self, error: BaseException) -> None:
        for seq, job in self._jobs.items():
            seq.cancelled = True  # if the engine is kept, it drops them at its next step
            job._push(Update(error=error))
        self._jobs.clear()

    def _rebuild(self) -> None:
        try:
            self.engine = self._make_engine()
        except Exception:
            log.exception("could not rebuild the engine: keeping the one that failed")
