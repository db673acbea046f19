"""The cluster recipes in cluster/ stay consistent with the code: every YAML parses (the AWS
config against Ray's own launcher schema), the sbatch script is valid bash, every `s2r` command
they quote is accepted by the real CLI parser (and its --set overrides by the real config
loader), runtime envs are valid, and pinned versions match the installed ray, torch and mlflow."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import subprocess
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

from s2r_ray.cli import build_parser
from s2r_ray.config import load_config

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
README = CLUSTER / "README.md"
SBATCH = CLUSTER / "slurm" / "ray_cluster.sbatch"
YAMLS = sorted([*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")])
SCRIPTS = sorted([*CLUSTER.rglob("*.sbatch"), *CLUSTER.rglob("*.sh")])
TEXT_FILES = sorted(p for p in CLUSTER.rglob("*") if p.is_file())

S2R = re.compile(r"(?<![\w./\-\"'`])s2r (?:run|report|fit|submit|jobs)\b")  # not in a word/quotes
RUNTIME_ENV_KEYS = {
    "working_dir",
    "py_modules",
    "excludes",
    "pip",
    "uv",
    "conda",
    "env_vars",
    "config",
    "image_uri",
    "container",
    "py_executable",
    "java_jars",
    "nsight",
}


def _release(dist: str) -> str:
    return version(dist).split("+")[0]  # 2.13.0+cpu -> 2.13.0


def _logical_lines(text: str) -> list[str]:
    """Lines with backslash continuations joined, as a shell reads them."""
    lines, pending = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
        else:
            lines.append(pending + line)
            pending = ""
    return [*lines, pending] if pending else lines


def _markdown_code(text: str) -> list[str]:
    """The lines of fenced code blocks, plus inline code spans that are commands."""
    out, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif fenced:
            out.append(line)
        else:
            spans = re.findall(r"`([^`]+)`", line)  # an invocation, not a bare `s2r run`
            out.extend(m for m in spans if S2R.match(m) and len(m.split()) > 2)
    return out


def _yaml_strings(node: object) -> list[str]:
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in _yaml_strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _yaml_strings(v)]
    return []


def _tokens(command: str) -> list[str]:
    """Shell words of one command, up to the first operator or comment; array splats such as
    ${ARGS[@]+"${ARGS[@]}"} (extra arguments at run time) are dropped."""
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    lex.commenters = "#"
    words: list[str] = []
    for word in lex:
        if word and set(word) <= set("();<>|&"):
            if word[0] in "<>" and words and words[-1].isdigit():
                words.pop()  # the 2 of 2>&1
            break
        if "[@]" not in word and word not in ("$@", "$*"):
            words.append(word)
    return words


def _s2r_commands(lines: list[str]) -> list[list[str]]:
    commands = []
    for line in lines:
        if line.lstrip().startswith("#"):
            continue  # a shell comment, prose about a command
        for m in S2R.finditer(line):
            commands.append(_tokens(line[m.start() :])[1:])  # without the leading "s2r"
    return commands


def _all_commands() -> dict[str, list[list[str]]]:
    found = {
        README.name: _s2r_commands(_logical_lines("\n".join(_markdown_code(README.read_text()))))
    }
    for path in SCRIPTS:
        found[path.name] = _s2r_commands(_logical_lines(path.read_text()))
    for path in YAMLS:
        strings = [s for doc in yaml.safe_load_all(path.read_text()) for s in _yaml_strings(doc)]
        found[path.name] = _s2r_commands([line for s in strings for line in _logical_lines(s)])
    return found


def _runtime_envs() -> list[tuple[str, dict]]:
    """Every --runtime-env-json in the README and every runtimeEnvYAML in the manifests."""
    envs = []
    for line in _logical_lines("\n".join(_markdown_code(README.read_text()))):
        words = shlex.split(line, comments=True) if "--runtime-env-json" in line else []
        for i, word in enumerate(words):
            if word.startswith("--runtime-env-json="):
                envs.append((README.name, json.loads(word.split("=", 1)[1])))
            elif word == "--runtime-env-json":
                envs.append((README.name, json.loads(words[i + 1])))
    for path in YAMLS:
        for doc in yaml.safe_load_all(path.read_text()):
            spec = (doc or {}).get("spec") or {}
            if "runtimeEnvYAML" in spec:
                envs.append((path.name, yaml.safe_load(spec["runtimeEnvYAML"])))
    return envs


def test_cluster_folder_has_the_recipes():
    for name in (
        "README.md",
        "slurm/ray_cluster.sbatch",
        "kubernetes/raycluster.yaml",
        "kubernetes/rayjob.yaml",
        "kubernetes/mlflow.yaml",
        "aws/cluster.yaml",
    ):
        assert (CLUSTER / name).is_file(), name


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


def test_aws_config_matches_ray_launcher_schema():
    jsonschema = pytest.importorskip("jsonschema")
    ray_dir = Path(importlib.util.find_spec("ray").submodule_search_locations[0])
    schema = json.loads((ray_dir / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((CLUSTER / "aws" / "cluster.yaml").read_text())
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    assert {t["node_config"]["InstanceType"] for t in types.values()} >= {
        "m6i.2xlarge",
        "g5.xlarge",
    }
    commands = [c for key, cs in config.items() if key.endswith("_commands") for c in cs]
    for command in commands:
        result = subprocess.run(
            ["bash", "-n", "-c", command], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"{command!r}: {result.stderr}"


def test_kubernetes_manifests():
    kube = CLUSTER / "kubernetes"
    cluster = yaml.safe_load((kube / "raycluster.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and cluster["spec"]["authOptions"]["mode"] == "token"
    job = yaml.safe_load((kube / "rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["spec"]["entrypoint"].startswith("s2r run ")
    for spec in (cluster["spec"], job["spec"]["rayClusterSpec"]):
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
        assert set(groups) == {"cpu", "gpu"}
        gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert gpu["nvidia.com/gpu"] == "1"
    kinds = {d["kind"]: d for d in yaml.safe_load_all((kube / "mlflow.yaml").read_text())}
    assert {"Deployment", "Service", "PersistentVolumeClaim"} <= set(kinds)
    assert (
        kinds["Service"]["spec"]["selector"]
        == kinds["Deployment"]["spec"]["selector"]["matchLabels"]
    )


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_shell_scripts_parse(path):
    result = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_sbatch_directives_come_before_any_command():
    lines = SBATCH.read_text().splitlines()
    first_command = next(
        i for i, line in enumerate(lines) if line.strip() and not line.startswith("#")
    )
    assert not [line for line in lines[first_command:] if line.startswith("#SBATCH")]
    assert any(line.startswith("#SBATCH --nodes") for line in lines[:first_command])


def test_every_quoted_s2r_command_parses():
    found = _all_commands()
    assert len(found[README.name]) >= 6 and found[SBATCH.name] and found["rayjob.yaml"]
    parser = build_parser()
    for origin, commands in found.items():
        for words in commands:
            try:
                args = parser.parse_args(words)
            except SystemExit:
                pytest.fail(f"{origin}: `s2r {shlex.join(words)}` is not accepted by s2r's parser")
            if args.command not in ("run", "submit") or any("$" in w for w in words):
                continue
            config = REPO / args.config
            if config.is_file():  # the --set overrides name real fields with valid values
                load_config(config, args.set, quick=args.quick)


def test_runtime_envs_are_valid():
    from ray.runtime_env import RuntimeEnv

    envs = _runtime_envs()
    assert len(envs) >= 3
    for origin, env in envs:
        assert set(env) <= RUNTIME_ENV_KEYS, (
            f"{origin}: unknown runtime_env keys {set(env) - RUNTIME_ENV_KEYS}"
        )
        RuntimeEnv(**env)  # raises on a malformed pip/env_vars/config
        assert env["env_vars"]["MLFLOW_DISABLE_TELEMETRY"] == "true", origin
        uri = env["env_vars"].get("MLFLOW_TRACKING_URI", "http://")
        assert uri.startswith("http") and "localhost" not in uri and "127.0.0.1" not in uri, origin


def test_pinned_versions_match_the_installed_ones():
    expected = {"ray": _release("ray"), "torch": _release("torch"), "mlflow": _release("mlflow")}
    patterns = {
        "ray": [
            r"rayproject/ray:(\d+\.\d+\.\d+)",
            r"\bray(?:\[[\w,]+\])?==(\d+\.\d+\.\d+)",
            r"rayVersion:\s*[\"']?(\d+\.\d+\.\d+)",
        ],
        "torch": [r"\btorch==(\d+\.\d+\.\d+)"],
        "mlflow": [r"mlflow/mlflow:v(\d+\.\d+\.\d+)", r"\bmlflow==(\d+\.\d+\.\d+)"],
    }
    seen = dict.fromkeys(expected, 0)
    for path in TEXT_FILES:
        text = path.read_text()
        for dist, regexes in patterns.items():
            for pinned in (v for r in regexes for v in re.findall(r, text)):
                seen[dist] += 1
                assert pinned == expected[dist], f"{path.relative_to(REPO)}: {dist} {pinned}"
    assert all(seen.values()), seen
