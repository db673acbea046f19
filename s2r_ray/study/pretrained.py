"""Where pretrained networks live while a study runs: one interface.

A network is written to the study folder the moment it exists. A study's jobs go through the
reducer, on the driver's node, so the folder need not be shared: nodes may join a cluster at
any time, and even a local Ray advertises the machine's address (Ray 2.60 replaces a loopback
node address with it), so no rule can tell that no other machine will join. Units run without
Ray (a debugger, the tests) read and write the folder itself. Either way a reused trial actor
keeps the last few networks it read: it usually runs several trials of the same cell in a row.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import ray

from s2r_ray.folder import StudyFolder, trial_network_key
from s2r_ray.models.base import Pretrained
from s2r_ray.study.units import KeptNetwork

_KEEP = 4


class PretrainedStore(Protocol):
    def save(self, key: str, pretrained: Pretrained) -> None: ...

    def load(self, key: str) -> Pretrained: ...

    def save_trial(self, key: str, kept: KeptNetwork) -> None:
        """A fine-tuning trial's own network, for its cell's scoring (not cached: read once)."""

    def load_trial(self, key: str) -> KeptNetwork | None:
        """The trial's network; None when it was never kept (scoring then trains it again)."""


class FolderStore:
    """The study folder itself: for units run without Ray, where it is."""

    def __init__(self, path: str):
        self._path = path

    def save(self, key: str, pretrained: Pretrained) -> None:
        StudyFolder(self._path).save_pretrained(key, pretrained)

    def load(self, key: str) -> Pretrained:
        return _cached((self._path, key), lambda: StudyFolder(self._path).load_pretrained(key))

    def save_trial(self, key: str, kept: KeptNetwork) -> None:
        StudyFolder(self._path).save_pretrained(trial_network_key(key), kept)

    def load_trial(self, key: str) -> KeptNetwork | None:
        try:
            return StudyFolder(self._path).load_pretrained(trial_network_key(key))
        except FileNotFoundError:
            return None


class ServedStore:
    """The study folder through the reducer on the driver's node: for jobs anywhere."""

    def __init__(self, reducer: ray.actor.ActorHandle, path: str):
        self._reducer, self._path = reducer, path

    def save(self, key: str, pretrained: Pretrained) -> None:
        ray.get(self._reducer.save_pretrained.remote(key, pretrained))

    def load(self, key: str) -> Pretrained:
        return _cached((self._path, key), lambda: ray.get(self._reducer.pretrained.remote(key)))

    def save_trial(self, key: str, kept: KeptNetwork) -> None:
        ray.get(self._reducer.save_pretrained.remote(trial_network_key(key), kept))

    def load_trial(self, key: str) -> KeptNetwork | None:
        try:
            return ray.get(self._reducer.pretrained.remote(trial_network_key(key)))
        except FileNotFoundError:  # Ray re-raises the actor's error as a subclass of it
            return None


# (the study folder, the key): a worker process may serve several studies, whose keys repeat
_CACHE: dict[tuple[str, str], Pretrained] = {}


def _cached(key: tuple[str, str], read: Callable[[], Pretrained]) -> Pretrained:
    if key not in _CACHE:
        if len(_CACHE) >= _KEEP:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = read()
    return _CACHE[key]
