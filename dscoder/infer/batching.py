"""Serving many requests with one model: sequences from concurrent requests are queued and
generated together in batches on one worker thread; streamed text goes back to each request's
asyncio loop as it is produced, and a request that goes away marks its sequences cancelled,
which frees their rows at the next decode step."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time

from dscoder.infer.engine import Engine, Sequence

log = logging.getLogger("dscoder")
_DONE = object()


class Batcher:
    """Generates queued sequences in batches of up to `max_batch`."""

    def __init__(self, engine: Engine, max_batch: int = 8, gather_seconds: float = 0.005):
        self.engine, self.max_batch, self.gather_seconds = engine, max_batch, gather_seconds
        self.pending: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="dscoder-batcher", daemon=True)
        self.running = True
        self.thread.start()

    def close(self) -> None:
        self.running = False
        self.pending.put(None)
        self.thread.join(timeout=5)

    def _work(self) -> None:
        while self.running:
            first = self.pending.get()
            if first is None:
                return
            batch = [first]
            deadline = time.monotonic() + self.gather_seconds
            while len(batch) < self.max_batch:
                try:
                    item = self.pending.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    self.running = False
                    break
                batch.append(item)
            live = [(s, done) for s, done in batch if not s.cancelled.is_set()]
            try:
                if live:
                    self.engine.generate([s for s, _ in live])
                error = None
            except Exception as exc:  # reported to every waiting request
                log.exception("generation failed")
                error = exc
            for _, done in batch:
                done(error)

    async def run(self, sequences: list[Sequence]) -> None:
        """Generate `sequences` (with the others waiting) and return when all are done."""
        loop = asyncio.get_running_loop()
        futures = []
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
        """Wire the sequences' deltas to an asyncio queue of (index, delta) items, ending with
        _DONE (or an exception); returns the queue and a starter coroutine."""
        loop = asyncio.get_running_loop()
        out: asyncio.Queue = asyncio.Queue()
        for index, s in enumerate(sequences):
            s.on_delta = lambda delta, index=index: loop.call_soon_threadsafe(out.put_nowait, (index, delta))

        async def start():
            try:
                await self.run(sequences)
                out.put_nowait(_DONE)
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
