"""Serving many requests with one model: sequences from concurrent requests are queued and
generated together on one worker thread with continuous batching (waiting sequences join the
running batch between decode steps, finished ones leave and answer at once); streamed text goes
back to each request's asyncio loop as it is produced, and a request that goes away marks its
sequences cancelled, which frees their rows at the next decode step."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from dscoder.infer.engine import Engine, Sequence

log = logging.getLogger("dscoder")
DONE = object()  # ends a stream's queue of deltas


class Closing(Exception):
    """The batcher was stopped (the server is shutting down): no new sequences."""


class Batcher:
    """Generates queued sequences in batches of up to `max_batch`.

    A batch starts with the first waiting sequence and keeps admitting arrivals while they come
    less than `quiet_seconds` apart, for at most `max_wait_seconds`: a burst of concurrent
    requests becomes one batch, and a lone request waits only `quiet_seconds`."""

    def __init__(self, engine: Engine, max_batch: int = 8, quiet_seconds: float = 0.005,
                 max_wait_seconds: float = 0.02):
        self.engine, self.max_batch = engine, max_batch
        engine.max_rows = max_batch
        self.quiet_seconds, self.max_wait_seconds = quiet_seconds, max_wait_seconds
        self.pending: queue.Queue = queue.Queue()
        self._waiting: dict = {}  # id(sequence) -> its completion callback
        self._armed: dict = {}  # id(sequence) -> the sequence, while it waits or is generated
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
        while self.running:
            first = self.pending.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.max_wait_seconds
            while len(batch) < self.max_batch and time.monotonic() < deadline:
                try:
                    item = self.pending.get(timeout=min(self.quiet_seconds, max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
                if item is None:
                    self.running = False
                    break
                batch.append(item)
            admitted = self._arm(batch)
            try:
                if admitted:
                    self.engine.generate(admitted, admit=lambda free: self._arm(self._take(free)))
            except Exception as exc:  # reported to every request still waiting
                log.exception("generation failed")
                for s in list(self._waiting):
                    self._waiting.pop(s)(exc)

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

    async def run(self, sequences: list[Sequence]) -> None:
        """Generate `sequences` (with the others waiting) and return when all are done."""
        loop = asyncio.get_running_loop()
        futures = []
        if self.closing:
            raise Closing("the server is shutting down")
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

    def stream(self, sequences: list[Sequence]):
        return stream(self.run, sequences)


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
