"""Progress of long stages: `Rate` turns event times into "6.2 cells/min, ETA 1:08" (the driver's
lines, `s2r status`); `Meter` prints a stage with no lines of its own, on a terminal as one line
rewritten with \\r, into a file or pipe one line per tenth of the work, so a log never fills up.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import TextIO

WINDOW = 10  # the rate is that of the last this many events: it follows a stage that slows down
TTY_EVERY_S = 0.2  # a terminal line is rewritten at most this often


def fmt_duration(seconds: float) -> str:
    """1:02:03 from an hour on, else 2:03 (minutes:seconds)."""
    s = max(0, round(seconds))
    hours, rest = divmod(s, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def fmt_rate(per_second: float, unit: str) -> str:
    """Per second when at least one a second, else per minute (slow stages read better so)."""
    x, per = (per_second, "s") if per_second >= 1 else (60 * per_second, "min")
    return f"{x / 1000:.3g}k {unit}/{per}" if x >= 1000 else f"{x:.3g} {unit}/{per}"


class Rate:
    """Done out of total, and the rate over the last `WINDOW` events since `start`: earlier ones
    (an earlier attempt's) count as done only, a pause between attempts is no measure of speed."""

    def __init__(self, total: int, done: int = 0, start: float | None = None, unit: str = "cells"):
        self.total, self.done, self.unit = total, done, unit
        self.start = time.time() if start is None else start
        self._recent: deque[tuple[float, int]] = deque(maxlen=WINDOW + 1)

    def add(self, at: float | None = None, k: int = 1) -> None:
        """k more done at time `at` (now by default)."""
        self.done += k
        self._recent.append((time.time() if at is None else at, k))

    def per_second(self, now: float) -> float | None:
        """Units per second over the recent window, measured up to `now` (a stall lowers it)."""
        if not self._recent:
            return None
        events = list(self._recent)  # a full window starts at its oldest event, else at `start`
        anchor, events = (
            (events[0][0], events[1:]) if len(events) > WINDOW else (self.start, events)
        )
        span = now - anchor
        return sum(k for _, k in events) / span if span > 0 else None

    def eta(self, now: float) -> float | None:
        rate = self.per_second(now)
        return None if not rate else max(0, self.total - self.done) / rate

    def describe(self, now: float | None = None) -> str:
        """'6.2 cells/min, ETA 1:08' (or why there is no rate yet)."""
        now = time.time() if now is None else now
        rate, eta = self.per_second(now), self.eta(now)
        if rate is None or eta is None:
            return f"no {self.unit} finished yet, no ETA"
        return f"{fmt_rate(rate, self.unit)}, ETA {fmt_duration(eta)}"


class Meter:
    """A stage's progress on `stream` (stdout): \\r-updated on a terminal, else whole lines at
    each tenth of the work. Use as a context manager, so a terminal line always ends."""

    def __init__(self, label: str, total: int, unit: str, stream: TextIO | None = None):
        self.label, self.rate = label, Rate(total, unit=unit)
        self.stream = stream or sys.stdout
        self._tty = self.stream.isatty()
        self._written_at, self._tenths = 0.0, 0

    def __enter__(self) -> Meter:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tty and self._written_at:
            self.stream.write("\n")
            self.stream.flush()

    def add(self, k: int) -> None:
        self.rate.add(k=k)
        now, r = time.time(), self.rate
        tenths = 10 * r.done // max(1, r.total)
        # a terminal line at most every TTY_EVERY_S and at the end, else one per tenth
        due = r.done >= r.total or now - self._written_at >= TTY_EVERY_S
        if not (due if self._tty else tenths != self._tenths):
            return
        self._tenths, self._written_at = tenths, now
        # on a terminal: back to the line's start, rewrite it, clear what a longer one left
        text = f"\r{self.line(now)}\x1b[K" if self._tty else f"{self.line(now)}\n"
        self.stream.write(text)
        self.stream.flush()

    def line(self, now: float) -> str:
        r = self.rate
        done = f"{self.label}: {r.done}/{r.total} {r.unit} ({100 * r.done / max(1, r.total):.0f}%)"
        if r.done >= r.total:
            return f"{done} in {fmt_duration(now - r.start)}"
        return f"{done}, {r.describe(now)}"
