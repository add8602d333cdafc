"""Shared helpers: the committed photos, variants made from them, and running the script as a user does."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "hash_and_search.py"
PHOTOS = sorted((REPO / "tests" / "photos").glob("*.jpg"))

sys.path.insert(0, str(REPO))


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


def folders_in_report(stdout: str) -> dict[str, str]:
    """Folder -> the report section it is listed under ('not', 'partly')."""
    section, found = None, {}
    for line in stdout.splitlines():
        if line.startswith("Not in the haystack"):
            section = "not"
        elif line.startswith("Partly in the haystack"):
            section = "partly"
        elif line.startswith("  ") and not line.startswith("      ") and section:
            found[line.strip().rsplit("  ", 1)[0].strip()] = section
    return found


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


def unprivileged_user_works() -> bool:
    """Whether a process dropped to 'nobody' can run the script here (it needs setpriv)."""
    if os.geteuid() != 0:
        return True
    if shutil.which("setpriv") is None:
        return False
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    probes = (drop + ["-c", "import cv2, numpy"], drop + [str(SCRIPT), "--version"])
    return all(subprocess.run(probe, capture_output=True).returncode == 0 for probe in probes)
