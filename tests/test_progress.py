"""Progress of long stages: the rate of recent events, the ETA, and how it is printed."""

from __future__ import annotations

import io

import pytest

from s2r_ray.data.featurizers import map_chunks
from s2r_ray.progress import Meter, Rate, fmt_duration, fmt_rate


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_durations_and_rates_read_like_a_clock() -> None:
    assert [fmt_duration(s) for s in (0, 59.6, 68, 3600, 3725.5)] == [
        "0:00",
        "1:00",
        "1:08",
        "1:00:00",
        "1:02:06",
    ]
    assert fmt_rate(0.1, "cells") == "6 cells/min"
    assert fmt_rate(23_400, "keys") == "23.4k keys/s"
    assert fmt_rate(2_204, "ids") == "2.2k ids/s"


def test_the_rate_is_that_of_recent_events_and_counts_earlier_ones_as_done() -> None:
    rate = Rate(total=40, done=5, start=1000.0)  # 5 cells of an earlier attempt
    assert rate.per_second(1010.0) is None and "no cells finished yet" in rate.describe(1010.0)
    for t in range(1, 4):
        rate.add(1000.0 + 60 * t)  # one a minute
    assert rate.per_second(1180.0) == pytest.approx(1 / 60)
    assert rate.describe(1180.0) == "1 cells/min, ETA 32:00"  # 32 left
    assert rate.eta(1360.0) == pytest.approx(32 * 120)  # a stall since then halves the rate
    for t in range(4, 30):  # then one every 6 s: only the last 10 events count
        rate.add(1180.0 + 6 * (t - 3))
    assert rate.per_second(1180.0 + 6 * 26) == pytest.approx(1 / 6)


def test_a_log_gets_a_line_per_tenth_and_a_terminal_one_rewritten_line() -> None:
    log = io.StringIO()
    with Meter("featurizing x.csv", 1000, "keys", log) as meter:
        for _ in range(100):
            meter.add(10)
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and "\r" not in log.getvalue()
    assert lines[0].startswith("featurizing x.csv: 100/1000 keys (10%), ") and "ETA" in lines[0]
    assert lines[-1].startswith("featurizing x.csv: 1000/1000 keys (100%) in ")
    tty = Terminal()
    with Meter("featurizing x.csv", 1000, "keys", tty) as meter:
        for _ in range(100):
            meter.add(10)
    text = tty.getvalue()
    assert text.startswith("\r") and text.count("\n") == 1 and text.endswith("\n")
    assert "1000/1000 keys (100%)" in text.rsplit("\r", 1)[-1]


def test_featurizing_several_chunks_shows_progress(capsys: pytest.CaptureFixture[str]) -> None:
    out = map_chunks(lambda c: [x * 2 for x in c], list(range(10)), 2, None, "doubling", "items")
    assert [x for chunk in out for x in chunk] == [x * 2 for x in range(10)]
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 5 and lines[-1].startswith("doubling: 10/10 items (100%) in ")
    map_chunks(lambda c: c, [1, 2], 5, None)  # one chunk: too short to show
    assert capsys.readouterr().out == ""
