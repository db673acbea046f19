"""The study folder (`--out`): the study's durable state, and the only code that reads or
writes it, so that any process (a resumed run, `s2r report`, `s2r status`) can pick a study up.

What <out> holds, and when each part is written:

- ``config.yaml``: the resolved config, written once the study's inputs have loaded, never over
  another study's. ``study.json``: the config's hash, the MLflow ids (tracking URI, experiment,
  study run, size runs) as soon as the runs exist, the status, the seconds of earlier attempts.
- ``cells.jsonl``: the ledger, one record per finished cell, appended and fsynced by the reducer
  as each cell ends; a cell id already there is never appended again.
- ``pretrained/<n>-r<r>.pkl``: each pretrained network, written by the driver as soon as its
  task has ended.
- ``pretrained/trials/<trial key>.pkl``: a fine-tuning trial's own network (its last bests),
  written as the trial ends, so that its cell's scoring reuses it instead of training it again;
  once the cell is in the ledger only its selected trial's is kept (the cell's model).
- ``steering.jsonl``: a steered study's decisions (`s2r_ray.steer`), one per line, appended
  and fsynced before any cell a decision adds is handed out; a resumed study reads them back
  and never decides a taken one again.
- ``optuna.journal``: every cell's Optuna history, written at each ask and tell, so a half-tuned
  cell continues with its remaining trials.
- ``report.json``, ``report.html``, plots: rebuilt from the ledger at start, at each completed
  size and at the end. ``rejected_rows.csv``: input rows rejected while loading.
- ``ray/``: Tune's scratch state of the current attempt (nothing resumes from it).
- ``superseded/<UTC time>/``: a previous study moved aside by ``--fresh``.
- ``.driver.lock``: held (flock) by the process that runs the study.

A folder without config.yaml holds a report alone (`s2r fit --out`): the report's files are
the same. Every file is written through `s2r_ray.atomic`, except the append-only ledger and
journal, so a kill at any moment leaves each file either old or new.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import yaml

from s2r_ray.atomic import write_atomic
from s2r_ray.config import ConfigError, StudyConfig, build_config

CONFIG, STATE, LEDGER, JOURNAL = "config.yaml", "study.json", "cells.jsonl", "optuna.journal"
STEERING = "steering.jsonl"
REPORT, PAGE, REJECTED = "report.json", "report.html", "rejected_rows.csv"
PRETRAINED, SUPERSEDED, LOCK = "pretrained", "superseded", ".driver.lock"
# How a study is executed, not what it computes: these may change when a study is resumed.
EXECUTION_FIELDS = tuple(
    "tune." + f for f in ("resources", "pretrain_resources", "pretrain_slots", "max_failures")
)
# Execution fields a later version retired: a study folder written before it still loads.
RETIRED_FIELDS = ("tune.placement_timeout_s",)  # section.field


def trial_network_key(trial_key: str) -> str:
    """Where a trial's own network is kept among the pretrained ones (`save_pretrained`)."""
    return f"trials/{trial_key}"


class StudyMismatch(ConfigError):
    """The folder holds another study: resuming into it would mix two studies' results."""


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix.rstrip("."): tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out |= _flat(v, f"{prefix}{k}.")
    return out


def _defining(cfg: StudyConfig) -> dict[str, Any]:
    """The config fields that decide the study's results."""
    flat = _flat(cfg.model_dump(mode="json"))
    return {
        k: v for k, v in flat.items() if not any(k.startswith(f + ".") for f in EXECUTION_FIELDS)
    }


def config_hash(cfg: StudyConfig) -> str:
    blob = json.dumps(_defining(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _repair_tail(path: Path) -> None:
    data = path.read_bytes() if path.is_file() else b""
    if not data or data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with open(path.with_name(path.name + ".partial"), "ab") as f:
        f.write(data[cut:] + b"\n")
    with open(path, "r+b") as f:
        f.truncate(cut)
    warnings.warn(f"{path}: set a partial last record aside (a kill mid-write)", stacklevel=3)


class StudyFolder:
    """One study's folder; see the module docstring for what it holds."""

    def __init__(self, path: Path | str):
        self.path = Path(path)

    def claim(self) -> None:
        """Make this process the folder's only driver (an flock, released however it ends), and
        repair what a kill left behind: a partial last line of the ledger or journal is set aside
        (into <name>.partial), and Optuna's lock of the dead process is dropped."""
        self.path.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.path / LOCK, "a+")  # noqa: SIM115 (held until exit)
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{self.path}: another s2r process is running this study") from None
        for name in (LEDGER, JOURNAL, STEERING):
            _repair_tail(self.path / name)
        (self.path / (JOURNAL + ".lock")).unlink(missing_ok=True)

    def driver_alive(self) -> bool:
        """Whether an s2r process holds the folder (`claim`); if not, a running study was killed."""
        path = self.path / LOCK
        if not path.is_file():
            return False
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False

    # -- config and state -------------------------------------------------------------------

    def has_study(self) -> bool:
        return self.config_path().is_file()

    def config_path(self) -> Path:
        return self.path / CONFIG

    def config(self) -> StudyConfig:
        """The stored config, re-validated (so a hand-edited file is checked like any other)."""
        path = self.config_path()
        try:
            raw = yaml.safe_load(path.read_text())
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: cannot read the study's config ({e})") from None
        for field in RETIRED_FIELDS:
            section, leaf = field.split(".")
            if isinstance(raw, dict) and isinstance(raw.get(section), dict):
                raw[section].pop(leaf, None)
        return build_config(raw, origin=str(path))

    def check_same_study(self, cfg: StudyConfig) -> None:
        """Refuse to resume a different study here, naming the fields that differ."""
        if not self.has_study() or config_hash(stored := self.config()) == config_hash(cfg):
            return
        old, new = _defining(stored), _defining(cfg)
        diff = [k for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]
        shown = "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} here" for k in diff[:4])
        more = f" (and {len(diff) - 4} more)" if len(diff) > 4 else ""
        raise StudyMismatch(
            f"{self.path} holds another study ({stored.name!r}) whose config differs: "
            f"{shown}{more}. Use another --out, or --fresh to start over there (the old study "
            f"is moved to {self.path / SUPERSEDED}/, not deleted)"
        )

    def set_aside(self) -> Path | None:
        """Move everything of the previous study into superseded/<UTC time>/ (for --fresh)."""
        entries = [p for p in self.path.iterdir() if p.name not in {SUPERSEDED, LOCK}]
        if not entries:
            return None
        dest = self.path / SUPERSEDED / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest.mkdir(parents=True)
        for p in entries:
            shutil.move(str(p), dest / p.name)
        return dest

    def write_config(self, cfg: StudyConfig) -> None:
        """Record the study's config, once its inputs have loaded (never over another study's)."""
        if self.has_study():
            self.check_same_study(cfg)
            return
        text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        write_atomic(self.config_path(), text)
        self.update_state(config_hash=config_hash(cfg), study=cfg.name, status="running")

    def state(self) -> dict[str, Any]:
        path = self.path / STATE
        return json.loads(path.read_text()) if path.is_file() else {}

    def status(self) -> str:
        """The study's status as study.json records it; "running" before it records one."""
        return self.state().get("status", "running")

    def state_written_at(self) -> float:
        """When study.json was last written (an attempt writes it as it starts)."""
        return (self.path / STATE).stat().st_mtime

    def update_state(self, **fields: Any) -> dict[str, Any]:
        write_atomic(self.path / STATE, json.dumps(state := self.state() | fields, indent=1))
        return state

    # -- the ledger ------------------------------------------------------------------------

    def ledger(self) -> list[dict]:
        """Finished cells, first record per cell id."""
        records: dict[str, dict] = {}
        for record in self._jsonl(LEDGER, "cell record"):
            records.setdefault(record["cell"], record)
        return list(records.values())

    def append_cell(self, record: dict) -> None:
        self._append(LEDGER, record)

    def decisions(self) -> list[dict]:
        """The steering decisions taken so far, in order, first record per index."""
        records: dict[int, dict] = {}
        for record in self._jsonl(STEERING, "steering decision"):
            records.setdefault(record["index"], record)
        return [records[k] for k in sorted(records)]

    def append_decision(self, record: dict) -> None:
        """A steering decision, durable before any of its cells is handed out."""
        self._append(STEERING, record)

    def _jsonl(self, name: str, what: str) -> list[dict]:
        """An append-only file's records. A partial last line (what a kill mid-write leaves) is
        skipped with a warning; a damaged line elsewhere is an error naming it."""
        path = self.path / name
        if not path.is_file():
            return []
        lines = path.read_text().split("\n")
        records = []
        for i, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines):  # no newline after it: the write never finished
                    warnings.warn(f"{path}:{i}: skipping a partial last record", stacklevel=3)
                    continue
                raise ConfigError(f"{path}:{i}: not a JSON {what}: {line[:80]!r}") from None
        return records

    def _append(self, name: str, record: dict) -> None:
        with open(self.path / name, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())

    # -- pretrained networks and tuning history ----------------------------------------------

    def _pretrained_path(self, key: str) -> Path:
        return self.path / PRETRAINED / f"{key}.pkl"

    def save_pretrained(self, key: str, pretrained: Any) -> None:
        write_atomic(self._pretrained_path(key), pickle.dumps(pretrained))

    def load_pretrained(self, key: str) -> Any:
        return pickle.loads(self._pretrained_path(key).read_bytes())

    def prune_trial_networks(self, cell_id: str, keep: str | None) -> None:
        """Delete a recorded cell's trial networks but the selected one (`keep`): nothing reads
        them once the cell is in the ledger, and they add up (the band-gap grid kept 236 MB)."""
        for path in (self.path / PRETRAINED / "trials").glob(f"{cell_id}-t*.pkl"):
            if path.stem != keep:
                path.unlink(missing_ok=True)

    def pretrained_keys(self) -> set[str]:
        folder = self.path / PRETRAINED
        return {p.stem for p in folder.glob("*.pkl")} if folder.is_dir() else set()

    def journal_path(self) -> Path:
        return self.path / JOURNAL

    def tune_path(self) -> Path:
        return (self.path / "ray").resolve()

    # -- the report and the inputs' record ---------------------------------------------------

    def report_path(self) -> Path:
        return self.path / REPORT

    def read_report(self) -> dict[str, Any]:
        """report.json as last written; {} before the first."""
        path = self.report_path()
        return json.loads(path.read_text()) if path.is_file() else {}

    def save_report(self, report: dict[str, Any]) -> Path:
        """Write report.json; `report` must be JSON-safe already (no NaN)."""
        write_atomic(self.report_path(), json.dumps(report, indent=2, allow_nan=False))
        return self.report_path()

    def save_page(self, html: str) -> Path:
        """Write report.html, the page to mail."""
        write_atomic(self.path / PAGE, html)
        return self.path / PAGE

    def plot_paths(self) -> dict[str, Path]:
        """The report's plots in the folder, by name (scaling, backtest, target_axis)."""
        return {p.stem: p for p in sorted(self.path.glob("*.png"))}

    def rejected_rows_path(self) -> Path:
        """Where loading the data lists the input rows it rejected."""
        return self.path / REJECTED

    def record_files(self) -> list[Path]:
        """The config, ledger, steering decisions and rejected rows there: what the study run
        keeps with the report."""
        paths = (self.config_path(), self.path / LEDGER, self.path / STEERING)
        paths += (self.rejected_rows_path(),)
        return [p for p in paths if p.is_file()]
