"""`s2r status DIR`: where a running or finished study stands, read from its folder alone (no
Ray, no MLflow), so it works from any shell that sees the folder, while the driver runs or after.
"""

from __future__ import annotations

import time
from collections import Counter

from s2r_ray.folder import StudyFolder
from s2r_ray.progress import Rate, fmt_duration
from s2r_ray.protocol import size_key
from s2r_ray.render.text import fit_line
from s2r_ray.steer import study_cells


def status_text(folder: StudyFolder, now: float | None = None) -> str:
    """Cells done/planned per size, failures, time so far, rate and ETA, the current fit."""
    now = time.time() if now is None else now
    cfg, state, records = folder.config(), folder.state(), folder.ledger()
    planned = Counter(c.n for c in study_cells(cfg, folder.decisions()))
    total, status = sum(planned.values()), folder.status()
    done = Counter(r["n"] for r in records)
    failed = Counter(r["n"] for r in records if r.get("status") != "ok")
    before, attempts = float(state.get("elapsed_seconds", 0.0)), state.get("attempts", 1)
    lines = [
        f"study {cfg.name} in {folder.path}: {status}, attempt {attempts}; "
        f"{len(records)}/{total} cells finished, {failed.total()} failed",
        f"  {'size':>10} {'finished':>9} {'planned':>8} {'failed':>7}",
    ]
    lines += [
        f"  {size_key(n):>10} {done[n]:>9} {planned[n]:>8} {failed[n]:>7}" for n in sorted(planned)
    ]
    if status == "running" and folder.driver_alive():
        # the attempt began at study.json's `attempt_started_at`, else when study.json was last
        # written (at its start, seconds after loading the data); only its cells make the rate
        start = float(state.get("attempt_started_at") or folder.state_written_at())
        times = sorted(r["finished_at"] for r in records if r.get("finished_at", 0) >= start)
        rate = Rate(total, len(records) - len(times), start=start)
        for t in times:
            rate.add(t)
        lines.append(
            f"  time so far {fmt_duration(before + now - start)} (this attempt "
            f"{fmt_duration(now - start)}); {rate.describe(now)}"
        )
    elif status == "running":
        lines.append(
            f"  time {fmt_duration(before)} in earlier attempts; no s2r process holds this "
            "folder, so the last attempt was killed before it could record its end: the same "
            "`s2r run` command resumes it"
        )
    else:
        lines.append(f"  time {fmt_duration(before)} over {attempts} attempt(s)")
        if status != "complete":
            lines.append("  the same `s2r run` command resumes it, keeping every finished cell")
    report = folder.read_report()
    lines.append(f"  {fit_line(report)}" if report else "  fit: no report yet")
    return "\n".join(lines)
