"""Study configuration: the typed schema, YAML loading, dotted overrides and readable errors.

Everything a study does is decided here, before any Ray work starts, so a typo costs seconds,
not a cluster allocation.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from s2r_ray import shipped
from s2r_ray.models import family_class
from s2r_ray.models.hyperparameters import FinetuneSpace, PretrainConfig

# How a template (`s2r init --from tables`) marks what the user must write: a value starting so
# is reported by field, never taken for a file or column name.
PLACEHOLDER = "<FILL IN"


class UserError(ValueError):
    """A mistake in what the user gave (config, override, data file): `s2r` prints its one-line
    message and exits 2 instead of showing a traceback."""


class ConfigError(UserError):
    """A config problem, worded for the person who wrote the file."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SyntheticData(_Strict):
    """Real = f + missing physics g + noise; simulated = f + smooth bias + noise (the demo pair).
    With `missing` = 0 (the default) the simulation lacks nothing but a correctable bias."""

    n_source: int = Field(4000, ge=10)
    n_target: int = Field(300, ge=10)
    n_features: int = Field(12, ge=2)
    bias: float = Field(0.5, ge=0, description="size of the systematic sim-vs-real difference")
    missing: float = Field(
        0.0,
        ge=0,
        description="standard deviation of a real component the simulation lacks: what the "
        "target rows cannot fully learn of it is a transfer gap C > 0",
    )
    missing_roughness: float = Field(
        3.0,
        gt=0,
        description="frequency of the missing component: the rougher, the less of it a few "
        "target rows can learn",
    )
    source_noise: float = Field(0.05, ge=0)
    target_noise: float = Field(0.05, ge=0)
    seed: int = 0


class TableSpec(_Strict):
    """One input table: where it is, what identifies a row, what is predicted, how to featurize."""

    path: str
    id_columns: list[str] = Field(min_length=1)
    value_column: str
    featurizer: str = "columns"
    featurizer_options: dict[str, Any] = Field(default_factory=dict)
    condition_columns: list[str] = Field(default_factory=list)
    reduce: Literal["min", "max", "mean", "median", "first"] = "mean"
    query: str | None = None
    valid_range: tuple[float, float] | None = None
    units: str = ""

    @field_validator("valid_range")
    @classmethod
    def _range_ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[0] <= v[1]:
            raise ValueError(f"[{v[0]:g}, {v[1]:g}]: the low end is above the high end")
        return v

    def resolved_path(self) -> Path:
        """The path with ${VARS} expanded; a variable that is unset is an error, not ''."""

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(3)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(f"data path {self.path!r} uses ${{{name}}}, which is not set")

        return Path(re.sub(r"\$\{(\w+)(:-([^}]*))?\}", sub, self.path)).expanduser()


class DataConfig(_Strict):
    kind: Literal["synthetic", "tables"] = "synthetic"
    synthetic: SyntheticData = Field(default_factory=SyntheticData)
    source: TableSpec | None = None
    target: TableSpec | None = None
    property: str = "y"
    units: str = ""
    cache_dir: str = ".s2r_cache"

    @model_validator(mode="after")
    def _tables_named(self) -> DataConfig:
        if self.kind == "tables" and (self.source is None or self.target is None):
            raise ValueError("kind 'tables' needs both data.source and data.target")
        return self


class SplitConfig(_Strict):
    test: float = Field(0.2, gt=0, lt=1, description="share of target rows held out for test")
    val: float = Field(0.15, gt=0, lt=1, description="share of the rest used for validation")
    source_holdout: float = Field(
        0.1, gt=0, lt=1, description="share of the source pool kept for pretraining early stopping"
    )
    source_holdout_max: int = Field(5000, ge=10)
    allow_test_ids_in_source: bool = False


class ModelConfig(_Strict):
    """`kind` picks the model family (`s2r_ray.models`); every other field is an option of that
    family, checked against the family's own schema (the MLP's: hidden, activation, clip)."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    kind: str = "mlp"

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    @model_validator(mode="after")
    def _family_options(self) -> ModelConfig:
        schema = family_class(self.kind).Options
        try:
            options = schema.model_validate(self.options())
        except ValidationError as e:
            raise ValueError(
                "; ".join(
                    f"{'.'.join(map(str, err['loc']))}: "
                    + ("unknown field" if err["type"] == "extra_forbidden" else err["msg"])
                    for err in e.errors()
                )
            ) from None
        object.__setattr__(self, "__pydantic_extra__", options.model_dump(mode="json"))
        return self


class FinetuneConfig(FinetuneSpace):
    """The family's search space, and beside it how many seeds scoring averages."""

    ensemble: int = Field(1, ge=1, description="seeds of the best configuration averaged per cell")

    def space(self) -> FinetuneSpace:
        """The search space alone, for the family."""
        return FinetuneSpace.model_validate(self.model_dump(exclude={"ensemble"}))


class Resources(_Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)

    @field_validator("gpu")
    @classmethod
    def _whole_above_one(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("GPU amounts above 1 must be whole numbers")
        return v


class TuneConfig(_Strict):
    trials_per_cell: int = Field(4, ge=1)
    startup_trials: int = Field(2, ge=1, description="random trials before TPE takes over")
    grace_period: int = Field(5, ge=1, description="ASHA: epochs before a trial can be stopped")
    reduction_factor: int = Field(3, ge=2)
    resources: Resources = Field(default_factory=Resources)
    pretrain_resources: Resources = Field(default_factory=Resources)
    pretrain_slots: int | None = Field(
        None,
        ge=1,
        description="pretrainings running at once, so trials of cells already pretrained "
        "keep the rest of the cluster; default: half the cluster's CPUs, and a CPU that no "
        "trial is ready for takes a pretraining too (a number set is a cap)",
    )
    max_failures: int = Field(
        1,
        ge=0,
        description="retries of a job (trial, pretraining, scoring) whose process or node "
        "dies, and of a trial that raises",
    )
    pack: int = Field(
        1,
        ge=1,
        description="fine-tuning trials trained as one network in one Tune trial: a trial of "
        "each ready cell of the same n and m (its repetitions) in turn, each on its own cell's "
        "rows from its own pretrained network, and each still its own Optuna trial, MLflow run "
        "and early stop (successive halving at ASHA's rungs, within its cell); 1 (measured "
        "best on CPUs; GPUs unmeasured: benchmarks/pack.md): one trial per Tune trial",
    )
    pretrain_pack: int | None = Field(
        None,
        ge=1,
        description="pretrainings of one n (its repetitions) trained as one network in one Tune "
        "trial, each still its own network, MLflow run and stop; 1: each alone; default: all "
        "repetitions of an n where that was measured faster (small networks on a CPU: "
        "benchmarks/pack.md), else 1",
    )


class TrackingConfig(_Strict):
    uri: str | None = Field(
        None, description="default: $MLFLOW_TRACKING_URI or sqlite:///mlruns.db"
    )
    experiment: str = "s2r-ray"
    artifact_location: str | None = Field(
        None,
        description="where a new experiment keeps its artifacts (default: mlartifacts/ beside "
        "a SQLite store; a tracking server's own store); an existing experiment keeps its own",
    )


class ReportConfig(_Strict):
    extrapolate_factors: list[float] = Field(default_factory=lambda: [10.0, 100.0])
    n_boot: int = Field(1000, ge=10)
    reference_mae: dict[str, float] = Field(
        default_factory=dict, description="named literature MAEs drawn as reference lines"
    )


class SteerConfig(_Strict):
    """A study that steers itself: `sizes` x `repetitions` open it, then after each round the
    reducer chooses what to measure next (a new n inside the source pool, or more repetitions
    of a measured one) until the goal's 90% interval is narrow enough or the budget is spent."""

    goal: Literal["mae_at", "n_for_target", "gap"] = Field(
        "mae_at",
        description="mae_at: the MAE at n (or factor x the source pool); n_for_target: the n "
        "that reaches target_mae; gap: the transfer gap C",
    )
    factor: float = Field(
        100.0, gt=0, description="mae_at: the n whose MAE is wanted, as a multiple of the pool"
    )
    n: int | None = Field(None, ge=1, description="mae_at: that n in rows (instead of factor)")
    precision: float = Field(
        0.1,
        gt=0,
        description="stop when the goal's 90% interval is this narrow: (hi - lo) / point, or "
        "ln(hi / lo) for n_for_target",
    )
    budget_seconds: float | None = Field(
        None, gt=0, description="compute seconds of all cells at n > 0, the opening included"
    )
    budget_cells: int | None = Field(
        None, ge=1, description="(n, repetition) pairs at n > 0, the opening included"
    )
    min_sizes: int = Field(4, ge=3, description="distinct sizes measured before any stop")
    new_size_repetitions: int = Field(2, ge=1, description="repetitions a new size opens with")
    top_repetitions: int | None = Field(
        3,
        ge=1,
        description="repetitions of the largest opening size (the noise there decides an "
        "extrapolation; benchmarks/steering.md); null: `repetitions` like the others",
    )
    max_repetitions: int = Field(8, ge=2, description="most repetitions of any size")
    blocks: list[int] = Field(
        [1, 2, 4],
        min_length=1,
        description="repetitions one decision may add at a measured size (a new size opens with "
        "the larger of new_size_repetitions and a block): several at once pin the noise there "
        "(benchmarks/steering.md)",
    )
    fallback_repetitions: int = Field(
        5, ge=1, description="repetitions of each opening size when the law fails its check"
    )
    gamma: float = Field(
        0.5,
        gt=0,
        le=1,
        description="a candidate's score is the expected drop of the goal's squared 90% width "
        "/ cost^gamma",
    )
    per_decade: int = Field(4, ge=1, description="candidate new sizes per decade of n")

    @model_validator(mode="after")
    def _reps_fit(self) -> SteerConfig:
        if max(self.fallback_repetitions, self.top_repetitions or 0) > self.max_repetitions:
            raise ValueError("fallback_repetitions or top_repetitions exceeds max_repetitions")
        if min(self.blocks) < 1 or max(self.blocks) > self.max_repetitions:
            raise ValueError("blocks must be 1 to max_repetitions repetitions")
        return self


class StudyConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    sizes: list[int] = Field(min_length=1)
    repetitions: int = Field(3, ge=1)
    target_sizes: list[int] | None = Field(
        None, description="grid of experimental training-set sizes m (default: all train rows)"
    )
    target_mae: float | None = Field(None, gt=0)
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    tune: TuneConfig = Field(default_factory=TuneConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    steer: SteerConfig | None = Field(
        None, description="let the study choose its next sizes (default: the fixed grid)"
    )
    quick: dict[str, Any] = Field(
        default_factory=dict, description="dotted overrides applied by `s2r run --quick`"
    )

    @field_validator("sizes", "target_sizes")
    @classmethod
    def _sorted_positive(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if any(n < 1 for n in v):
            raise ValueError("every size must be a positive number of rows")
        if len(set(v)) != len(v):
            raise ValueError("sizes must not repeat")
        return sorted(v)

    @model_validator(mode="after")
    def _split_leaves_rows(self) -> StudyConfig:
        if self.split.test + self.split.val * (1 - self.split.test) >= 0.95:
            raise ValueError("split.test and split.val leave under 5% of target rows to train on")
        if self.steer is not None:
            if self.steer.goal == "n_for_target" and self.target_mae is None:
                raise ValueError("steer.goal n_for_target needs target_mae")
            if self.repetitions > self.steer.max_repetitions:
                raise ValueError("repetitions exceeds steer.max_repetitions")
        return self

    @property
    def repetitions_available(self) -> int:
        """Target splits a study may use: a steered one may add repetitions up to its cap."""
        return self.steer.max_repetitions if self.steer else self.repetitions


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is not a section")
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'tune.trials_per_cell=8' -> ('tune.trials_per_cell', 8); values are read as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. repetitions=2")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*", key):
        raise ConfigError(f"--set {text!r}: {key!r} is not a dotted field name")
    try:
        return key, yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ConfigError(
            f"--set {text!r}: the value is not valid YAML ({_yaml_problem(e)})"
        ) from e


def _yaml_problem(err: yaml.YAMLError) -> str:
    """PyYAML's several-line message as one line: what is wrong and where."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        return f"line {mark.line + 1}, column {mark.column + 1}: {err.problem}"
    return " ".join(str(err).split())


def _format(err: ValidationError, origin: str, overrides: list[str]) -> str:
    """One line per error, headed by where the errors come from: the file, the overrides or both."""
    sources: list[str] = []
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling; see configs/demo.yaml)"
        lines.append(f"  {field}: {msg}")
        # the last `--set key=value` that set this field, a field inside it or one of its
        # parents (a section's validator reports the section) caused it, not the file
        source = origin
        for text in reversed(overrides):
            key = text.split("=", 1)[0].strip()
            if field == key or field.startswith(key + ".") or key.startswith(field + "."):
                source = f"--set {text}"
                break
        if source not in sources:
            sources.append(source)
    return "\n".join([f"{', '.join(sources)}: invalid study config", *lines])


def placeholders(node: Any, where: str = "") -> list[str]:
    """The dotted fields whose value is still a template's `<FILL IN ...>`."""
    if isinstance(node, str):
        return [where] if node.lstrip().startswith(PLACEHOLDER) else []
    if isinstance(node, dict):
        items = [(f"{where}.{k}" if where else str(k), v) for k, v in node.items()]
    elif isinstance(node, list):
        items = [(where, v) for v in node]  # an id column of a list is its list's field
    else:
        return []
    return list(dict.fromkeys(f for key, value in items for f in placeholders(value, key)))


def _refuse_placeholders(tree: dict[str, Any], origin: str) -> None:
    """A template run before it was filled in: one line naming every field left to write."""
    if left := placeholders(tree):
        raise ConfigError(
            f"{origin}: fill in the template's {PLACEHOLDER} ...> placeholders first: "
            + ", ".join(left)
        )


def build_config(
    raw: dict[str, Any],
    overrides: list[str] | None = None,
    quick: bool = False,
    origin: str = "config",
) -> StudyConfig:
    """Validate a raw mapping after applying --quick and --set overrides (in that order)."""
    tree = copy.deepcopy(raw)
    if quick:
        quick_set = tree.get("quick") or {}
        if not quick_set:
            raise ConfigError(f"{origin}: --quick given but the config has no 'quick' section")
        for k, v in quick_set.items():
            _set_dotted(tree, k, v)
    for text in overrides or []:
        _set_dotted(tree, *parse_override(text))
    _refuse_placeholders(tree, origin)
    try:
        return StudyConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format(e, origin, overrides or [])) from None


def config_file(text: str | Path) -> Path:
    """The config a command names: a file, else a config shipped with the package by name
    (`s2r run demo`, also without a checkout); anything else is an error listing those names."""
    path = Path(text)
    if path.is_file():
        return path
    found = shipped.find(str(text)) if path.parent == Path(".") else None
    if found is None:
        hint = f"s2r run {path.stem}" if shipped.find(path.name) else "s2r init"
        raise ConfigError(
            f"{text}: no such config file, nor a shipped config "
            f"({', '.join(shipped.names()) or 'none found'}); try `{hint}`"
        )
    return found


def load_config(
    path: str | Path, overrides: list[str] | None = None, quick: bool = False
) -> StudyConfig:
    """The validated config of a file or shipped name, --quick and --set applied."""
    path = config_file(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x}): a config is a YAML file"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot be read ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of fields at the top level")
    return build_config(raw, overrides, quick, origin=str(path))
