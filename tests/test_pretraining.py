"""Pretraining tasks on a real local Ray: once per (n, r), in slots given back promptly."""

import time

import ray

from s2r_ray import tracking
from s2r_ray.config import build_config
from s2r_ray.data.synthetic import make_synthetic
from s2r_ray.folder import StudyFolder
from s2r_ray.models import make_family
from s2r_ray.pretraining import Pretrainings
from s2r_ray.protocol import Cell, make_plan


def test_slots_come_back_when_the_last_pretraining_ends(ray_session, tmp_path):
    cfg = build_config(
        {
            "name": "pre",
            "sizes": [50, 200],
            "repetitions": 2,
            "data": {"synthetic": {"n_source": 500, "n_target": 80, "n_features": 4}},
            "model": {"hidden": [8]},
            "pretrain": {"max_steps": 200, "patience": 2},
        }
    )
    plan = make_plan(cfg, make_synthetic(cfg.data.synthetic))
    ctx = tracking.start_study(f"sqlite:///{tmp_path / 'm.db'}", "t", "pre", {}, cfg.sizes, {})
    lines: list[str] = []
    folder, family = StudyFolder(tmp_path / "out"), make_family(cfg)
    keys = ["n50-r0", "n50-r1", "n200-r0", "n200-r1"]
    pre = Pretrainings(plan, ray.put(plan), family, cfg, ctx, folder, keys, lines.append)
    assert pre.slots == 1 and len(pre.refs) == 4  # (n, r) pairs, half of the 2 local CPUs
    ray.wait(list(pre.refs.values()), num_returns=4)
    # asking about the first cell alone must notice that all four have ended
    assert pre.ready(Cell(50, 0)) and pre.ready(Cell(0, 1))
    assert sorted(ln.split(":")[0] for ln in lines) == [
        "pretraining n200-r0",
        "pretraining n200-r1",
        "pretraining n50-r0",
        "pretraining n50-r1",
    ]
    # the slot goes back to the trials (placement group removal is asynchronous)
    deadline = time.time() + 20
    while ray.available_resources().get("CPU", 0) < 2 and time.time() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2
    # each network was saved as it ended: a restarted study loads them and runs no task
    assert folder.pretrained_keys() == set(keys)
    again = Pretrainings(plan, ray.put(plan), family, cfg, ctx, folder, keys, lines.append)
    assert again.loaded == keys and not again.refs and again.ready(Cell(200, 1))
    assert folder.load_pretrained("n200-r1").steps > 0
