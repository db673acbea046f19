"""Featurization over a Ray cluster (#19): chunks go to Ray tasks on every node, the result is
the one local processes give, and an interrupted featurization resumes from its finished chunks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from s2r_ray.config import DataConfig
from s2r_ray.data import load_dataset
from s2r_ray.data.cache import FeatureStore
from s2r_ray.data.featurizers import make_featurizer

REPO = Path(__file__).resolve().parents[1]
FORMULAS = [f"Fe{i}O{j}" for i in range(1, 9) for j in range(1, 6)] + ["NaCl", "GaAs", "Si", "Xx2"]


def _tables(tmp_path: Path) -> DataConfig:
    values = np.linspace(0.1, 4.0, len(FORMULAS))
    pd.DataFrame({"formula": FORMULAS, "gap": values}).to_csv(tmp_path / "s.csv", index=False)
    pd.DataFrame({"formula": FORMULAS[::3], "gap": values[::3] + 0.2}).to_csv(
        tmp_path / "t.csv", index=False
    )
    spec = {"id_columns": ["formula"], "value_column": "gap", "featurizer": "composition"}
    return DataConfig.model_validate(
        {
            "kind": "tables",
            "property": "gap",
            "cache_dir": str(tmp_path / "cache"),
            "source": {"path": str(tmp_path / "s.csv"), **spec},
            "target": {"path": str(tmp_path / "t.csv"), **spec},
        }
    )


# A two-node cluster in its own process (the suite's session Ray would be in the way): both
# nodes on 127.0.0.1, one CPU each, chunks of 4 items: each stage of 44 formulas is 11 tasks.
TWO_NODES = """
import json, sys
import ray
from loopback_cluster import loopback_cluster
from s2r_ray.config import DataConfig
from s2r_ray.data import load_dataset
from s2r_ray.data.featurizers.composition import CompositionFeaturizer
from s2r_ray.study.fanout import RayPool

CompositionFeaturizer.chunk_size = 4
with loopback_cluster(nodes=2, cpus=1):
    pool = RayPool()
    ds = load_dataset(DataConfig.model_validate_json(sys.argv[1]), executor=pool)
    addresses = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
    print(json.dumps({"rows_by_node": pool.rows_by_node, "X": ds.source_X.tolist(),
                      "addresses": addresses}))
"""


def test_two_nodes_both_featurize_and_agree_with_local_processes(tmp_path: Path) -> None:
    cfg = _tables(tmp_path)
    path = os.pathsep.join([str(REPO), str(REPO / "benchmarks")])
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": path}
    run = subprocess.run(
        [sys.executable, "-c", TWO_NODES, cfg.model_dump_json()],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["addresses"] == ["127.0.0.1", "127.0.0.1"]
    assert len(out["rows_by_node"]) == 2, out["rows_by_node"]  # both nodes featurized rows
    assert all(rows > 0 for rows in out["rows_by_node"].values())
    # every identifier parsed and every key featurized on the cluster, none here
    assert sum(out["rows_by_node"].values()) >= len(FORMULAS) + len(set(FORMULAS))
    cfg.cache_dir = str(tmp_path / "local-cache")
    local = load_dataset(cfg, workers=1)
    assert np.array_equal(np.array(out["X"], dtype=np.float32), local.source_X)


def test_an_interrupted_featurization_resumes_from_its_finished_chunks(
    tmp_path: Path, stop_featurizing
) -> None:
    cfg = _tables(tmp_path)
    keys = [k for k in FORMULAS if k != "Xx2"]
    featurizer = make_featurizer("composition")
    stop_featurizing(4)
    store = FeatureStore(Path(cfg.cache_dir), Path(cfg.source.path), featurizer, None)
    with pytest.raises(KeyboardInterrupt):
        store.features(keys)
    assert len(list(store.parts_path.glob("*.parquet"))) == 3  # three chunks kept

    stop_featurizing(None)
    again = FeatureStore(Path(cfg.cache_dir), Path(cfg.source.path), featurizer, None)
    X = again.features(keys)
    assert again.stats["keys_cached"] == 12 and again.stats["keys_featurized"] == len(keys) - 12
    assert not again.parts_path.exists() and again.features_path.is_file()  # parts joined
    assert np.array_equal(X, featurizer.featurize(keys))


# A job holding 400 MiB of its own on the second node: that node's sampler sees it, the first
# node's does not, and the study's figures (every node watched) include it.
NODE_PEAKS = """
import json, time
import numpy as np
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
from loopback_cluster import loopback_cluster
from s2r_ray.study.resources import MemorySampler, NodeSampler

@ray.remote(num_cpus=1)
def hold(mib):
    block = np.ones(mib << 20, dtype=np.uint8)
    time.sleep(2.0)
    return int(block[-1])

with loopback_cluster(nodes=2, cpus=1), MemorySampler() as memory:
    memory.watch_nodes()
    here = ray.get_runtime_context().get_node_id()
    there = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != here)
    on = lambda node: NodeAffinitySchedulingStrategy(node, soft=False)
    samplers = [ray.remote(num_cpus=0)(NodeSampler).options(scheduling_strategy=on(node)).remote()
                for node in (here, there)]
    ray.get([s.peaks.remote() for s in samplers])  # both started
    ray.get(hold.options(scheduling_strategy=on(there)).remote(400))
    peaks = ray.get([s.peaks.remote() for s in samplers])
    print(json.dumps({"here": peaks[0], "there": peaks[1], "figures": memory.figures()}))
"""


def test_each_node_samples_the_memory_of_its_own_jobs() -> None:
    path = os.pathsep.join([str(REPO), str(REPO / "benchmarks")])
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": path}
    run = subprocess.run(
        [sys.executable, "-c", NODE_PEAKS], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    mib = 1 << 20
    assert out["there"][1] >= 400 * mib  # private memory of the job on the second node
    assert out["here"][1] < 400 * mib  # the first node ran no such job
    assert out["figures"]["worker_peak_private_mib"] >= 400
