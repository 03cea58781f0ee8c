"""Progress of one source's preparation, readable in a terminal and in a log file.

Bytes of the source's files read so far against their total, the rate, the time left, and the
documents and tokens written. In a terminal it is a tqdm bar; anywhere else (a log file, a SLURM
output) it is one plain line every ``every_s`` seconds and a last line at the end, never a
carriage-return bar folded into one huge line. Sources whose size is not known up front (demo
sources, Hugging Face datasets held only in memory) count documents only.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO

EVERY_S = 30.0  # seconds between two lines in a log file


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_seconds(s: float) -> str:
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """``update(docs, tokens)`` after each written batch; ``read[0]`` holds the bytes read so far
    (the readers add to it); ``close()`` at the end."""

    def __init__(self, desc: str, total_bytes: Optional[int], *, enabled: bool = True, every_s: float = EVERY_S,
                 stream: Optional[TextIO] = None, terminal: Optional[bool] = None):
        self.desc, self.total, self.enabled, self.every_s = desc, total_bytes, enabled, every_s
        self.stream = stream if stream is not None else sys.stderr
        self.terminal = (self.stream.isatty() if hasattr(self.stream, "isatty") else False) if terminal is None else terminal
        self.read = [0]
        self.docs = self.tokens = 0
        self.t0 = time.perf_counter()
        self._last_line = self.t0
        self._bar = None
        if enabled and self.terminal:
            from tqdm.auto import tqdm

            if total_bytes:
                self._bar = tqdm(desc=desc, total=total_bytes, unit="B", unit_scale=True, file=self.stream,
                                 mininterval=0.5, leave=True)
            else:
                self._bar = tqdm(desc=desc, unit=" docs", file=self.stream, mininterval=0.5, leave=True)

    def line(self) -> str:
        """The progress as one line of text."""
        elapsed = max(time.perf_counter() - self.t0, 1e-9)
        done = self.read[0]
        counts = f"{self.docs:,} docs, {self.tokens:,} tokens"
        if not self.total:
            return f"{self.desc}: {counts} in {human_seconds(elapsed)}"
        rate = done / elapsed
        left = (self.total - done) / rate if rate > 0 else float("inf")
        eta = human_seconds(left) if left != float("inf") else "unknown"
        return (f"{self.desc}: {human_bytes(done)} of {human_bytes(self.total)} ({100 * done / self.total:.0f}%), "
                f"{human_bytes(rate)}/s, ETA {eta}, {counts}")

    def update(self, docs: int, tokens: int) -> None:
        self.docs += docs
        self.tokens = tokens
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update((self.read[0] - self._bar.n) if self.total else docs)
            self._bar.set_postfix_str(f"{self.tokens:,} tokens", refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_line >= self.every_s:
            self._last_line = now
            print(self.line(), file=self.stream, flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        else:
            print(self.line(), file=self.stream, flush=True)
