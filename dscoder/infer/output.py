"""The output processor: what a sequence's next token means for its text and its end.

Given each token the engine chose, it decides, for one sequence: stop tokens (EOS for base
models, `<|EOT|>` for instruct ones), the token limit, cancellation and the time limit; the text
(incremental UTF-8 detokenizing), stop sequences (trimmed, found across token boundaries),
editor rules (where an insertion should end) and which text is safe to stream (whole characters,
no partial stop sequence, whole lines for editors). It knows nothing of the model or the cache.
"""

from __future__ import annotations

import time

from dscoder.infer.sampling import IncrementalDecoder, find_stop, held_back


class OutputProcessor:
    """Text and finish state of one sequence (engine.Sequence), one token at a time."""

    def __init__(self, sequence, tokenizer, stop_token_ids: tuple[int, ...], limit: int):
        self.s, self.limit = sequence, limit
        self.stop_ids = set(sequence.params.stop_token_ids or stop_token_ids)
        self.decoder = IncrementalDecoder(tokenizer)

    def push(self, token: int) -> bool:
        """Take the chosen token; True when the sequence is finished (its result is then final)."""
        s, params = self.s, self.s.params
        if s.first_token_at is None:
            s.first_token_at = time.perf_counter()
        if token in self.stop_ids:
            self._finish("stop")
            return True
        s.token_ids.append(token)
        before = len(s.text)
        s.text += self.decoder.push(token)
        if params.stop:
            cut = find_stop(s.text, params.stop, before)
            if cut is not None:
                s.stopped_by = next((w for w in params.stop if s.text.startswith(w, cut)), None)
                s.text = s.text[:cut]
                self._done("stop")
                return True
        if s.editor is not None:
            cut = s.editor.cut(s.text)
            if cut is not None:
                s.text = s.text[:cut]
                self._done("stop")
                return True
        timed_out = (
            s.max_ms is not None and "\n" in s.text and 1000 * (time.perf_counter() - s.first_token_at) >= s.max_ms
        )
        if len(s.token_ids) >= self.limit or s.cancelled.is_set() or timed_out:
            self._finish("cancelled" if s.cancelled.is_set() else "length")
            return True
        safe = len(s.text) - held_back(s.text, params.stop)
        if s.editor is not None:
            safe = min(safe, s.editor.streamable(s.text))
        s.emit(safe)
        return False

    def end(self, reason: str) -> None:
        """Finish before any token (a sequence cancelled while its prompt was computed)."""
        self._finish(reason)

    def _finish(self, reason: str) -> None:
        s = self.s
        s.text += self.decoder.flush()
        if s.params.stop:
            cut = find_stop(s.text, s.params.stop)
            if cut is not None:
                s.stopped_by = next((w for w in s.params.stop if s.text.startswith(w, cut)), None)
                s.text, reason = s.text[:cut], "stop"
        self._done(reason)

    def _done(self, reason: str) -> None:
        s = self.s
        if s.editor is not None:
            s.text = s.editor.final(s.text)
        s.emit(len(s.text))
        s.finish_reason = reason
        s.finished_at = time.perf_counter()
        if s.on_finish is not None:
            s.on_finish()
