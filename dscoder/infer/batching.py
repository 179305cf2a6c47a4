"""Serving many requests with one model: sequences from concurrent requests are queued and
generated together on one worker thread with continuous batching (waiting sequences join the
running batch between decode steps, finished ones leave and answer at once); streamed text goes
back to each request's asyncio loop as it is produced, and a request that goes away marks its
sequences cancelled, which frees their rows at the next decode step (or between two chunks of
its prompt). A request made for an editor slot cancels the one that slot still has running
(`run(..., slot=...)`): an editor asks again on every keystroke and wants only the last answer.

While nothing waits, the worker computes prompts that requests are likely to bring next
(`ahead`: an editor's next line, the whole prompt of an answer that was shortened to be on
time, the context an editor sends ahead with `n_predict` 0) in small steps, once no request has
come or ended for AHEAD_AFTER seconds (a pause, not the gap between two keystrokes); a request that
arrives stops that work at the next step, and what was computed stays in the prompt cache.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import OrderedDict

from dscoder.infer.engine import Engine, Sequence

log = logging.getLogger("dscoder")
DONE = object()  # ends a stream's queue of deltas
WAKE = object()  # wakes the worker for work ahead
AHEAD_AFTER = 0.3  # seconds without a request coming or ending before work ahead starts: not between keystrokes


class Closing(Exception):
    """The batcher was stopped (the server is shutting down): no new sequences."""


class Batcher:
    """Generates queued sequences, up to `max_batch` at once. A sequence starts as soon as the
    worker sees it: what arrives while others run joins them between two decode steps."""

    def __init__(self, engine: Engine, max_batch: int = 8):
        self.engine, self.max_batch = engine, max_batch
        engine.max_rows = max_batch
        self.pending: queue.Queue = queue.Queue()
        self._waiting: dict = {}  # id(sequence) -> its completion callback
        self._armed: dict = {}  # id(sequence) -> the sequence, while it waits or is generated
        self.slots = Slots()
        self._ahead: OrderedDict = OrderedDict()  # key -> prompts (token ids) to compute while idle, newest last
        self._ahead_lock = threading.Lock()
        self._last_request = 0.0  # time.monotonic() of the last sequence queued
        self._guesses = 0  # numbers each call of `ahead`: its prompts do not overwrite each other
        self.closing = False
        self.thread = threading.Thread(target=self._work, name="dscoder-batcher", daemon=True)
        self.running = True
        self.thread.start()

    def stop(self) -> None:
        """Cancel every sequence, waiting or being generated (each ends at the next decode step,
        its request answered with what it has), and take no more."""
        self.running = False
        self.closing = True
        for s in list(self._armed.values()):
            s.cancelled.set()
        while True:
            try:
                item = self.pending.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0].cancelled.set()
                item[1](None)
        self.pending.put(None)

    def close(self) -> None:
        self.stop()
        self.thread.join(timeout=5)

    def _work(self) -> None:
        calibrate = getattr(self.engine, "calibrate", None)
        if calibrate is not None:  # the speeds a request's time limit is measured against
            calibrate()
        while self.running:
            try:
                quiet = self._last_request + AHEAD_AFTER - time.monotonic()
                first = self.pending.get(timeout=max(quiet, 0.001) if self._ahead else None)
            except queue.Empty:
                if time.monotonic() >= self._last_request + AHEAD_AFTER:
                    self._work_ahead()
                continue
            if first is None:
                return
            if first is WAKE:
                continue
            batch = [first, *self._take(self.max_batch - 1)]
            admitted = self._arm(batch)
            try:
                if admitted:
                    self.engine.generate(admitted, admit=lambda free: self._arm(self._take(free)))
            except Exception as exc:  # reported to every request still waiting
                log.exception("generation failed")
                for s in list(self._waiting):
                    self._waiting.pop(s)(exc)
            self._last_request = time.monotonic()  # an editor asks again right after an answer

    def ahead(self, key, prompts: list[list[int]], adapter: str | None = None) -> None:
        """Compute `prompts` (token ids, under the LoRA `adapter`), in order, while no request
        waits; they replace what was asked ahead under the same `key` (one editor's guesses: the
        latest count)."""
        with self._ahead_lock:
            self._ahead.pop(key, None)
            if prompts:
                self._guesses += 1
                self._ahead[key] = (self._guesses, list(prompts), adapter)
                while len(self._ahead) > self.max_batch:  # the oldest guesses go first
                    self._ahead.popitem(last=False)
        self.pending.put(WAKE)

    def _work_ahead(self) -> None:
        """Compute the newest prompt asked ahead until done or a request arrives."""
        with self._ahead_lock:
            if not self._ahead:
                return
            key, (guess, prompts, adapter) = self._ahead.popitem(last=True)
        busy = lambda: not self.pending.empty() or not self.running  # noqa: E731
        for index, ids in enumerate(prompts):
            try:
                held = self.engine.warm(ids, stop=busy, guess=guess, adapter=adapter)
            except Exception:  # work ahead only saves time: a failure is logged, never raised
                log.exception("computing a prompt ahead failed")
                return
            if held < len(ids) and busy():  # stopped by a request: go on once idle, unless replaced
                with self._ahead_lock:
                    if key not in self._ahead:
                        self._ahead[key] = (guess, prompts[index:], adapter)
                return

    def _take(self, free: int) -> list:
        """Up to `free` waiting items, without blocking."""
        items = []
        while len(items) < free:
            try:
                item = self.pending.get_nowait()
            except queue.Empty:
                break
            if item is None:
                self.running = False
                break
            if item is not WAKE:
                items.append(item)
        return items

    def _arm(self, items: list) -> list[Sequence]:
        """Hook each sequence's completion to its waiter; cancelled ones answer at once."""
        sequences = []
        for s, done in items:
            if s.cancelled.is_set():
                done(None)
                continue
            self._waiting[id(s)] = done
            self._armed[id(s)] = s
            s.on_finish = lambda s=s: self._finished(s)
            sequences.append(s)
        return sequences

    def _finished(self, s: Sequence) -> None:
        self._armed.pop(id(s), None)
        self._waiting.pop(id(s))(None)

    async def run(self, sequences: list[Sequence], slot=None) -> None:
        """Generate `sequences` (with the others waiting) and return when all are done. With
        `slot` (an editor's), the sequences that slot's previous request still has are
        cancelled (answered with what they have) and these take their place."""
        loop = asyncio.get_running_loop()
        futures = []
        if self.closing:
            raise Closing("the server is shutting down")
        self.slots.enter(slot, sequences)
        self._last_request = time.monotonic()
        for s in sequences:
            future = loop.create_future()

            def done(error, future=future):
                loop.call_soon_threadsafe(_settle, future, error)

            futures.append(future)
            self.pending.put((s, done))
        try:
            await asyncio.gather(*futures)
        except asyncio.CancelledError:
            for s in sequences:
                s.cancelled.set()
            raise
        finally:
            self.slots.leave(slot, sequences)

    def stream(self, sequences: list[Sequence], slot=None):
        return stream(lambda sequences: self.run(sequences, slot), sequences)


class Slots:
    """The sequences of each editor slot's latest request, which a newer one cancels."""

    def __init__(self):
        self._latest: dict = {}

    def enter(self, slot, sequences: list[Sequence]) -> None:
        if slot is None:
            return
        for s in self._latest.get(slot, ()):
            s.cancelled.set()
        self._latest[slot] = sequences

    def leave(self, slot, sequences: list[Sequence]) -> None:
        if slot is not None and self._latest.get(slot) is sequences:
            del self._latest[slot]


def make_batcher(engine, max_batch: int):
    """The batcher that serves `engine`: the one it makes itself where it has its own way to
    generate (an UpstreamEngine forwards to another server), else a Batcher generating here."""
    own = getattr(engine, "make_batcher", None)
    return own(max_batch) if own is not None else Batcher(engine, max_batch)


def stream(run, sequences: list[Sequence]):
    """Wire the sequences' deltas (from any thread) to an asyncio queue of (index, delta) items,
    ending with DONE (or an exception); returns the queue and a starter coroutine that awaits
    `run(sequences)`."""
    loop = asyncio.get_running_loop()
    out: asyncio.Queue = asyncio.Queue()
    for index, s in enumerate(sequences):
        s.on_delta = lambda delta, index=index: loop.call_soon_threadsafe(out.put_nowait, (index, delta))

    async def start():
        try:
            await run(sequences)
            out.put_nowait(DONE)
        except Exception as exc:
            out.put_nowait(exc)

    return out, start


def _settle(future: asyncio.Future, error) -> None:
    if future.done():
        return
    if error is None:
        future.set_result(None)
    else:
        future.set_exception(error)
