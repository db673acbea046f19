"""Headless Chromium for the tests that check a page as a person sees it: the rendered DOM
(after scripts ran) and a screenshot. Skips, saying why, only where no Chromium is installed.

Each call starts a fresh browser with an empty profile and no network services of its own
(no sync, updates, QUIC or background fetches), so a page that loads anything from outside
shows up as broken, not as a slow test.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def chromium() -> str:
    """The Chromium executable, or skip the test with the reason."""
    for name in NAMES:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no Chromium found (looked for chromium, chromium-browser, google-chrome on PATH); "
        "install it, e.g. apt-get install chromium"
    )


def run(url: str, *args: str, wait_ms: int = 3000, timeout: float = 90) -> str:
    """Open url in a fresh headless Chromium with extra args; stdout. `wait_ms` of virtual
    time lets the page's scripts and image decoding finish before a dump or screenshot. A
    browser that outlives `timeout` is started once more, fresh: on a loaded machine headless
    Chromium now and then never ends its virtual time (a clean-clone CI run at load 12 hung
    180 s on a page that renders in 6); a page that is broken fails both times."""
    for attempt in (1, 2):
        with tempfile.TemporaryDirectory(prefix="s2r-chromium-") as profile:
            cmd = [
                chromium(),
                *FLAGS,
                f"--user-data-dir={profile}",
                f"--virtual-time-budget={wait_ms}",
                *args,
                url,
            ]
            try:
                done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                if attempt == 2:
                    raise
    if done.returncode != 0:
        raise AssertionError(f"chromium exited {done.returncode}: {done.stderr[-2000:]}")
    return done.stdout


def dump_dom(url: str, wait_ms: int = 3000) -> str:
    """The page's DOM as serialised HTML after it loaded and its scripts ran."""
    return run(url, "--dump-dom", wait_ms=wait_ms)


def screenshot(url: str, path: Path, size: tuple[int, int] = (1280, 2400)) -> Path:
    """A PNG of the page's top `size` pixels (width, height) at path."""
    run(url, f"--screenshot={path}", f"--window-size={size[0]},{size[1]}")
    assert path.is_file() and path.stat().st_size > 0, f"no screenshot written to {path}"
    return path
