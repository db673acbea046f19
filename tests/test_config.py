"""Config errors name the field; overrides and --quick apply before validation."""

from pathlib import Path

import pytest
import yaml

from s2r_ray.config import ConfigError, build_config, load_config, parse_override

REPO = Path(__file__).resolve().parents[1]
BASE = {"name": "t", "sizes": [10, 100]}
TABLE = {"path": "t.csv", "id_columns": ["formula"], "value_column": "gap"}


@pytest.mark.parametrize(
    ("raw", "field", "words"),
    [
        ({**BASE, "tune": {"trails_per_cell": 3}}, "tune.trails_per_cell", "unknown field"),
        ({**BASE, "repetitions": "three"}, "repetitions", "integer"),
        ({**BASE, "sizes": [0, 10]}, "sizes", "positive"),
        ({**BASE, "tune": {"resources": {"gpu": 1.5}}}, "tune.resources.gpu", "whole numbers"),
        ({**BASE, "finetune": {"lr": [0.1, 0.01]}}, "finetune", "above high"),
        ({**BASE, "split": {"test": 1.5}}, "split.test", "less than 1"),
        ({**BASE, "data": {"kind": "tables"}}, "data", "needs both"),
        (
            {**BASE, "data": {"kind": "tables", "source": TABLE | {"valid_range": [30, 0]}}},
            "data.source.valid_range",
            "[30, 0]: the low end is above the high end",
        ),
        ({"sizes": [10]}, "name", "Field required"),
    ],
)
def test_errors_name_the_field(raw, field, words):
    with pytest.raises(ConfigError) as e:
        build_config(raw, origin="my.yaml")
    text = str(e.value)
    assert text.startswith("my.yaml: invalid study config")
    line = next(ln for ln in text.splitlines() if ln.strip().startswith(field + ":"))
    assert words in line


def test_overrides_are_typed_and_validated():
    cfg = build_config(BASE, ["repetitions=2", "sizes=[300,100,1000]", "tune.resources.gpu=0.25"])
    assert cfg.repetitions == 2 and cfg.sizes == [100, 300, 1000]
    assert cfg.tune.resources.gpu == 0.25
    with pytest.raises(ConfigError, match=r"tune\.bogus"):
        build_config(BASE, ["tune.bogus=1"])
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("repetitions")


def test_ensemble_stays_under_finetune_but_out_of_the_search_space():
    """Old configs keep `finetune.ensemble`; scoring reads it, the family's space never has it."""
    cfg = build_config({**BASE, "finetune": {"ensemble": 3, "lr": [1e-3, 1e-2]}})
    assert cfg.finetune.ensemble == 3
    space = cfg.finetune.space()
    assert "ensemble" not in type(space).model_fields and space.lr == (1e-3, 1e-2)
    assert space.model_dump() == cfg.finetune.model_dump(exclude={"ensemble"})


def test_an_error_from_an_override_names_the_override_not_the_file():
    with pytest.raises(ConfigError) as e:
        build_config(BASE, ["finetune.lr=[0.1, 0.01]"], origin="my.yaml")
    first, line = str(e.value).splitlines()
    assert first == "--set finetune.lr=[0.1, 0.01]: invalid study config"
    assert line == "  finetune: lr: low 0.1 is above high 0.01"
    raw = {
        **BASE,
        "repetitions": 0,
        "data": {"kind": "tables", "source": TABLE, "target": dict(TABLE)},  # not shared
    }
    with pytest.raises(ConfigError) as e:
        build_config(raw, ["data.source.valid_range=[1, 0]"], origin="my.yaml")
    first, *lines = str(e.value).splitlines()
    assert first == "my.yaml, --set data.source.valid_range=[1, 0]: invalid study config"
    assert [ln.split(":")[0].strip() for ln in lines] == ["repetitions", "data.source.valid_range"]


def test_quick_applies_the_config_own_section_before_set():
    raw = {**BASE, "quick": {"repetitions": 1, "tune.trials_per_cell": 1}}
    cfg = build_config(raw, ["repetitions=2"], quick=True)
    assert cfg.repetitions == 2 and cfg.tune.trials_per_cell == 1
    with pytest.raises(ConfigError, match="no 'quick' section"):
        build_config(BASE, quick=True)


def test_missing_file_and_bad_yaml_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML: line 1, column 16: exp"):
        load_config(bad)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("name: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 0xe9)"),
        (b"\x89PNG\r\n\x1a\n" + bytes(range(256)), "not UTF-8 text (byte 0x89)"),
        (b"\x00" * 64, "not valid YAML: unacceptable character #x0000"),
    ],
    ids=["latin-1", "png", "nul"],
)
def test_a_config_that_is_no_text_is_one_line_naming_the_file(tmp_path, content, words):
    path = tmp_path / "study.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and words in message and "\n" not in message


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    raw = yaml.safe_load(path.read_text())
    if raw.get("quick"):
        load_config(path, quick=True)
    assert cfg.name
