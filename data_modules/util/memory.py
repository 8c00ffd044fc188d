"""Peak resident memory of a process tree, sampled (for the benchmarks' JSON)."""

from __future__ import annotations

import threading

import psutil


class PeakRSS:
    """Samples the resident memory of process ``pid`` (default: this one) plus all its descendants
    (loader or shard workers) every ``every`` seconds while the ``with`` block runs; ``peak`` in bytes.

    Sampled, not ``ru_maxrss``: a forked child inherits its parent's high-water mark, so a child of
    a large process would report at least its parent's size."""

    def __init__(self, pid: int | None = None, every: float = 0.05) -> None:
        self.peak = 0
        self._pid, self._every = pid, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            me = psutil.Process(self._pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                rss = me.memory_info().rss + sum(c.memory_info().rss for c in me.children(recursive=True))
                self.peak = max(self.peak, rss)
            except psutil.Error:
                pass
            self._stop.wait(self._every)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
