"""Shipped configs by name and `s2r init`: what a user who installed the package (no checkout)
starts from. Every config written loads; a template left unfilled names its fields."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from s2r_ray import shipped
from s2r_ray.cli import main
from s2r_ray.config import load_config
from s2r_ray.data import load_dataset

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p.stem for p in (REPO / "configs").glob("*.yaml"))


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("s2r: error: ") and err.count("\n") == 1, err
    return err


def test_every_yaml_in_configs_is_shipped_by_name(tmp_path, monkeypatch):
    assert shipped.names() == SHIPPED and "demo" in SHIPPED
    monkeypatch.chdir(tmp_path)  # no configs/ here: the names still resolve
    for name in SHIPPED:
        assert load_config(name).name == name == load_config(f"{name}.yaml").name


def test_a_file_wins_over_a_shipped_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("demo").write_text("name: mine\nsizes: [10]\n")
    assert load_config("demo").name == "mine"


@pytest.mark.parametrize(
    ("given", "hint"),
    [("nope", "try `s2r init`"), ("configs/demo.yaml", "try `s2r run demo`")],
)
def test_neither_file_nor_shipped_name_lists_the_names(tmp_path, monkeypatch, capsys, given, hint):
    monkeypatch.chdir(tmp_path)
    assert main(["run", given]) == 2
    err = one_error_line(capsys)
    assert f"{given}: no such config file, nor a shipped config ({', '.join(SHIPPED)})" in err
    assert hint in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("source", SHIPPED)
def test_init_copies_a_shipped_config_under_the_new_name(tmp_path, monkeypatch, capsys, source):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--from", source]) == 0
    path = tmp_path / f"my_{source}.yaml"
    printed = capsys.readouterr().out
    assert printed.startswith(f"wrote my_{source}.yaml (from the shipped config {source})")
    assert f"next: s2r run my_{source}.yaml" in printed
    written, original = load_config(path), load_config(source)
    assert written.name == f"my_{source}"
    assert written.model_dump(exclude={"name"}) == original.model_dump(exclude={"name"})
    assert path.read_text().count("\n#") >= 2  # the comments travel with it


def test_init_never_overwrites(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "study.yaml").write_text("mine\n")
    assert main(["init", "study"]) == 2
    assert "study.yaml: already exists; s2r init never overwrites" in one_error_line(capsys)
    assert (tmp_path / "study.yaml").read_text() == "mine\n"
    assert main(["init", "bad name"]) == 2
    assert "a study name is letters" in one_error_line(capsys)
    assert main(["init", "x", "--from", "nope"]) == 2
    assert "--from nope: no shipped config or template" in one_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.yaml"]


TEMPLATE_FIELDS = [
    "data.property",
    "data.source.path",
    "data.source.id_columns",
    "data.source.value_column",
    "data.source.featurizer",
    "data.target.path",
    "data.target.id_columns",
    "data.target.value_column",
    "data.target.featurizer",
]


def test_the_tables_template_names_what_is_left_to_fill_in(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "gaps", "--from", "tables"]) == 0
    printed = capsys.readouterr().out
    assert "wrote gaps.yaml (from the template tables)" in printed
    assert f"next: replace <FILL IN ...> in {', '.join(TEMPLATE_FIELDS)}" in printed
    assert "then s2r run gaps.yaml --quick" in printed

    assert main(["run", "gaps.yaml"]) == 2  # unfilled: one line naming every field
    err = one_error_line(capsys)
    assert "gaps.yaml: fill in the template's <FILL IN ...> placeholders first: " in err
    assert err.rstrip().endswith(", ".join(TEMPLATE_FIELDS))
    assert not (tmp_path / "runs").exists()
    # an override that fills one is taken into account; the others are still named
    assert main(["run", "gaps.yaml", "--set", "data.property=band gap"]) == 2
    assert "data.property" not in one_error_line(capsys)


def test_the_filled_tables_template_loads_and_reads_the_tables(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "gaps", "--from", "tables"]) == 0
    rows = ["Fe2O3", "NaCl", "SiO2", "GaAs", "ZnO", "MgO", "TiO2", "CdS"]
    Path("computed.csv").write_text(
        "formula,gap_pbe\n" + "".join(f"{f},{i * 0.5}\n" for i, f in enumerate(rows))
    )
    Path("measured.csv").write_text(
        "formula,gap\n" + "".join(f"{f},{i * 0.7}\n" for i, f in enumerate(rows))
    )
    filled = {
        "data.property": "band gap",
        "data.source.path": "computed.csv",
        "data.source.id_columns": ["formula"],
        "data.source.value_column": "gap_pbe",
        "data.source.featurizer": "composition",
        "data.target.path": "measured.csv",
        "data.target.id_columns": ["formula"],
        "data.target.value_column": "gap",
        "data.target.featurizer": "composition",
    }
    text = Path("gaps.yaml").read_text()
    raw = yaml.safe_load(text)
    for dotted, value in filled.items():  # as a user edits: the placeholder's line only
        *parents, key = dotted.split(".")
        node = raw
        for part in parents:
            node = node[part]
        placeholder = node[key][0] if isinstance(node[key], list) else node[key]
        assert placeholder.startswith("<FILL IN") and f'"{placeholder}"' in text
        written = value[0] if isinstance(value, list) else value
        text = text.replace(f'"{placeholder}"', written, 1)
    Path("gaps.yaml").write_text(text)
    cfg = load_config("gaps.yaml")
    assert cfg.name == "gaps" and cfg.data.kind == "tables"
    assert cfg.data.source.value_column == "gap_pbe" and cfg.data.target.id_columns == ["formula"]
    data = load_dataset(cfg.data, workers=1)
    assert len(data.target_y) == len(rows) and len(data.source_y) == len(rows)
    assert main(["init", "gaps", "--from", "tables"]) == 2  # the edited file is kept
    assert Path("gaps.yaml").read_text() == text
