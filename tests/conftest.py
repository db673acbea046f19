"""Shared fixtures: one local Ray per session, real data located or skipped, telemetry off."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Every Ray the suite starts, here or in a child process, reports no usage and asks for this
# session's token (its gRPC ports listen beyond loopback); nothing is written to ~/.ray.
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ["RAY_AUTH_MODE"] = "token"
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """$S2R_DATA_DIR, else ../shared/data beside the checkout."""
    path = Path(os.environ.get("S2R_DATA_DIR", REPO.parent / "shared" / "data"))
    return path if (path / "PROVENANCE.md").is_file() else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder; skips without it, fails when S2R_REQUIRE_DATA=1."""
    path = shared_data_dir()
    if path is None:
        reason = "real data not found: set S2R_DATA_DIR or place shared/data beside the repo"
        if os.environ.get("S2R_REQUIRE_DATA") == "1":
            pytest.fail(reason + " (S2R_REQUIRE_DATA=1)")
        pytest.skip(reason)
    os.environ["S2R_DATA_DIR"] = str(path)
    return path


@pytest.fixture
def stop_featurizing(monkeypatch: pytest.MonkeyPatch):
    """Chunks of 4 composition keys; `stop_featurizing(k)` stops the study (KeyboardInterrupt)
    at the k-th chunk, `stop_featurizing(None)` puts the real featurizer back."""
    from s2r_ray.data.featurizers.composition import CompositionFeaturizer

    monkeypatch.setattr(CompositionFeaturizer, "chunk_size", 4)
    real = CompositionFeaturizer.featurize

    def stop_at(k: int | None) -> None:
        calls: list[int] = []

        def dies(self: CompositionFeaturizer, chunk: list[str]):
            calls.append(len(chunk))
            if len(calls) == k:
                raise KeyboardInterrupt  # the study stopped mid-featurization
            return real(self, chunk)

        monkeypatch.setattr(CompositionFeaturizer, "featurize", real if k is None else dies)

    return stop_at


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session: ray.init per test costs seconds and mixes badly."""
    import ray

    from s2r_ray.study.driver import start_local_ray

    start_local_ray(num_cpus=2, log_to_driver=True)
    yield ray
    ray.shutdown()
