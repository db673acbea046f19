"""The study folder on its own: what a kill leaves behind, another study's folder, --fresh."""

import json

import pytest
import yaml

from s2r_ray.cli import main
from s2r_ray.config import ConfigError, build_config
from s2r_ray.folder import StudyFolder, StudyMismatch

RAW = {"name": "f", "sizes": [50, 200], "repetitions": 2}


def _record(cell: str, mae: float = 0.5) -> dict:
    return {"cell": cell, "n": 50, "repetition": 0, "m": None, "status": "ok", "mae": mae}


def test_a_partial_last_record_is_skipped_then_set_aside(tmp_path):
    folder = StudyFolder(tmp_path)
    folder.append_cell(_record("n50-mall-r0"))
    with open(tmp_path / "cells.jsonl", "a") as f:
        f.write('{"cell": "n50-mall-r1", "n": 5')  # what a kill mid-write leaves
    with pytest.warns(UserWarning, match="partial last record"):
        assert [r["cell"] for r in folder.ledger()] == ["n50-mall-r0"]
    with pytest.warns(UserWarning, match="set a partial last record aside"):
        folder.claim()
    folder.append_cell(_record("n50-mall-r1"))  # starts on its own line
    assert [r["cell"] for r in folder.ledger()] == ["n50-mall-r0", "n50-mall-r1"]
    assert (tmp_path / "cells.jsonl.partial").read_text() == '{"cell": "n50-mall-r1", "n": 5\n'


def test_a_damaged_record_inside_the_ledger_names_file_and_line(tmp_path):
    (tmp_path / "cells.jsonl").write_text(json.dumps(_record("a")) + "\nnot json\n")
    with pytest.raises(ConfigError, match=r"cells.jsonl:2: not a JSON cell record"):
        StudyFolder(tmp_path).ledger()


def test_the_ledger_never_holds_a_cell_twice(tmp_path):
    folder = StudyFolder(tmp_path)
    folder.append_cell(_record("a", 0.5))
    folder.append_cell(_record("a", 0.9))  # e.g. written by a pre-resume version
    assert [r["mae"] for r in folder.ledger()] == [0.5]


def test_a_folder_runs_one_driver_at_a_time(tmp_path):
    running = StudyFolder(tmp_path)
    running.claim()
    with pytest.raises(ConfigError, match="another s2r process is running this study"):
        StudyFolder(tmp_path).claim()
    del running  # the lock goes with its holder, however that ends
    StudyFolder(tmp_path).claim()


def test_another_study_is_refused_naming_the_fields_that_differ(tmp_path):
    folder = StudyFolder(tmp_path)
    folder.write_config(build_config(RAW))
    same_but_elsewhere = build_config({**RAW, "tune": {"resources": {"cpu": 2}}})
    folder.check_same_study(same_but_elsewhere)  # how it runs may change on resume
    other = build_config({**RAW, "sizes": [50, 300], "seed": 3})
    with pytest.raises(StudyMismatch, match=r"sizes: \[50, 200\] there, \[50, 300\] here") as e:
        folder.write_config(other)
    assert "seed: 0 there, 3 here" in str(e.value) and "--fresh" in str(e.value)
    assert folder.config().sizes == [50, 200]  # never overwritten


def test_a_folder_written_before_a_field_was_retired_still_loads(tmp_path):
    folder = StudyFolder(tmp_path)
    folder.write_config(build_config(RAW))
    stored = yaml.safe_load((tmp_path / "config.yaml").read_text())
    stored["tune"]["placement_timeout_s"] = 300.0  # an execution field an older version had
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(stored))
    assert folder.config().sizes == [50, 200]
    folder.check_same_study(build_config(RAW))  # and it resumes
    with pytest.raises(ConfigError, match="placement_timeout_s"):
        build_config({**RAW, "tune": {"placement_timeout_s": 300.0}})  # not in a user's config


def test_fresh_moves_the_old_study_aside(tmp_path):
    folder = StudyFolder(tmp_path)
    folder.write_config(build_config(RAW))
    folder.append_cell(_record("a"))
    moved = folder.set_aside()
    assert moved.parent == tmp_path / "superseded"
    assert not folder.has_study() and folder.ledger() == []
    assert StudyFolder(moved).ledger()[0]["cell"] == "a"


def test_run_into_another_studys_folder_fails_before_loading_anything(tmp_path, capsys):
    folder = StudyFolder(tmp_path / "out")
    folder.write_config(build_config(RAW))
    before = (tmp_path / "out" / "config.yaml").read_text()
    config = tmp_path / "other.yaml"
    config.write_text("name: other\nsizes: [10]\n")
    assert main(["run", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "holds another study ('f')" in err and "name: 'f' there, 'other' here" in err
    assert (tmp_path / "out" / "config.yaml").read_text() == before
