"""Shared helpers: the committed photos, variants made from them, the pipeline run in this process
(run_trees, cli) and the script run as a user does (run_tool)."""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "hash_and_search.py"
PHOTOS = sorted((REPO / "tests" / "photos").glob("*.jpg"))

sys.path.insert(0, str(REPO))

import hash_and_search as hs  # found through the path above


def run_trees(haystack: Path, needles: Path, *, warnings: list[str] | None = None,
              **settings: object) -> hs.RunResult:
    """The whole pipeline in this process, as a library user calls it: hs.run with
    Settings(**settings), so no cache unless cache= names one. Warnings are appended to
    `warnings`; without that list, any warning fails the test."""
    collected: list[str] = [] if warnings is None else warnings
    result = hs.run(haystack, needles, hs.Settings(**settings), warn=collected.append)
    if warnings is None:
        assert not collected, f"unexpected warnings: {collected}"
    return result


def by_path(result: hs.RunResult) -> dict[str, hs.NeedleResult]:
    return {needle.rel: needle for needle in result.results}


def statuses(result: hs.RunResult) -> dict[str, str]:
    """Needle path (relative to the needles root) -> its status, as the JSON shows it."""
    return {needle.rel: needle.status.value for needle in result.results}


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., subprocess.CompletedProcess[str]]:
    """The command line in this process: main(argv), with what it printed and returned."""
    def call(*args: object) -> subprocess.CompletedProcess[str]:
        argv = [str(arg) for arg in args]
        returncode = hs.main(argv)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(argv, returncode, out, err)
    return call


def run_tool(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
             user: int | None = None) -> subprocess.CompletedProcess[str]:
    """Run hash_and_search.py in a subprocess; `user` drops to that uid first (needs root)."""
    command = [sys.executable, str(SCRIPT), *map(str, args)]
    if user is not None:
        command = ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", *command]
    completed = subprocess.run(command, capture_output=True, text=True, cwd=cwd, env=env, timeout=600,
                               errors="backslashreplace")
    assert "Traceback" not in completed.stderr, completed.stderr
    return completed


def read_photo(index: int = 0, max_side: int = 400) -> np.ndarray:
    """A committed photo, shrunk so that the many runs of the tests stay quick."""
    pixels = cv2.imread(str(PHOTOS[index]), cv2.IMREAD_COLOR)
    scale = max_side / max(pixels.shape[:2])
    return cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else pixels


def write_image(path: Path, pixels: np.ndarray, *params: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(path.suffix if path.suffix.lower() != ".jpeg" else ".jpg", pixels, list(params))
    assert ok
    path.write_bytes(encoded.tobytes())
    return path


def copy_photo(index: int, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(PHOTOS[index], target)
    return target


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    """An empty haystack and needles folder, and a private cache directory for the run."""
    haystack, needles = tmp_path / "haystack", tmp_path / "needles"
    haystack.mkdir()
    needles.mkdir()
    return haystack, needles


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every run's default cache out of the user's home."""
    cache_home = tmp_path / "cache-home"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    return cache_home


@functools.cache
def unprivileged_user_works() -> bool:
    """Whether a process dropped to 'nobody' can run the script here (it needs setpriv)."""
    if os.geteuid() != 0:
        return True
    if shutil.which("setpriv") is None:
        return False
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    probes = (drop + ["-c", "import cv2, numpy"], drop + [str(SCRIPT), "--version"])
    return all(subprocess.run(probe, capture_output=True).returncode == 0 for probe in probes)
