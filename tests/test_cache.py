"""The hash cache: second runs decode nothing, changes are seen, damage and kills are survived.
In this process, except kill -9, Ctrl-C and two processes sharing the cache."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import hash_and_search as hs
from conftest import SCRIPT, copy_photo, read_photo, run_trees, statuses, write_image

DECODED, FROM_CACHE, BYTE_COPY = hs.Source.DECODED, hs.Source.FROM_CACHE, hs.Source.BYTE_COPY


def library(trees, count: int = 4) -> None:
    haystack, needles = trees
    for i in range(count):
        copy_photo(i, haystack / "lib" / f"{i}.jpg")
        write_image(needles / "old" / f"{i}.png", cv2.imread(str(haystack / "lib" / f"{i}.jpg")))
    write_image(needles / "old" / "new.jpg", read_photo(6))


def keep_stat(path: Path, data: bytes) -> None:
    """Rewrite a file with other bytes of the same length, and give it back its mtime."""
    info = path.stat()
    assert len(data) == info.st_size
    path.write_bytes(data)
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))


def test_second_run_takes_every_hash_from_the_cache(trees, tmp_path) -> None:
    library(trees)
    (trees[1] / "old" / "broken.jpg").write_bytes(b"not a JPEG, and the cache remembers that")
    cache = tmp_path / "c.sqlite3"
    first = run_trees(*trees, cache=cache)
    assert first.haystack.sources[DECODED] == 4
    # Destroy the images' content but not their size and mtime: only the cache can still know them.
    for path in [*trees[0].rglob("*.jpg"), *trees[1].rglob("*.*")]:
        keep_stat(path, bytes(path.stat().st_size))
    second = run_trees(*trees, cache=cache)
    assert second.haystack.sources[FROM_CACHE] == 4 and second.haystack.sources[DECODED] == 0
    assert second.needles.sources[FROM_CACHE] == 6 and second.needles.sources[DECODED] == 0
    assert second.results == first.results  # statuses, hashes, matches and reasons
    assert second.haystack.fingerprints == first.haystack.fingerprints


def test_default_cache_is_in_the_user_cache_folder(trees, private_cache, cli) -> None:
    library(trees, 1)
    cli("-a", trees[0], "-n", trees[1], "--json")
    assert (private_cache / "hash_and_search" / "fingerprints.sqlite3").is_file()
    again = json.loads(cli("-a", trees[0], "-n", trees[1], "--json").stdout)
    assert again["trees"]["haystack"]["from_cache"] == 1
    assert again["settings"]["cache"] == str(private_cache / "hash_and_search" / "fingerprints.sqlite3")


def test_file_modified_in_place_is_hashed_again(trees, tmp_path) -> None:
    library(trees, 2)
    cache = tmp_path / "c.sqlite3"
    assert statuses(run_trees(*trees, cache=cache))["old/new.jpg"] == "missing"
    # The library gets the new photo under an old name.
    write_image(trees[0] / "lib" / "0.jpg", cv2.imread(str(trees[1] / "old" / "new.jpg")))
    again = run_trees(*trees, cache=cache)
    assert again.haystack.sources[DECODED] == 1 and again.haystack.sources[FROM_CACHE] == 1
    assert statuses(again)["old/new.jpg"] == "matched"
    assert statuses(again)["old/0.png"] == "missing"


def test_other_hash_size_does_not_reuse_records(trees, tmp_path) -> None:
    library(trees, 1)
    cache = tmp_path / "c.sqlite3"
    run_trees(*trees, cache=cache)
    result = run_trees(*trees, cache=cache, hash_size=16)
    assert result.haystack.sources[DECODED] == 1
    assert len(json.loads(hs.render_json(result))["needles"][0]["hash"]) == 64
    assert run_trees(*trees, cache=cache, hash_size=16).haystack.sources[FROM_CACHE] == 1


def test_no_cache_writes_no_cache(trees, private_cache, cli) -> None:
    library(trees, 1)
    assert json.loads(cli("-a", trees[0], "-n", trees[1], "--json", "--no-cache").stdout)["settings"]["cache"] is None
    assert not private_cache.exists()


def test_damaged_cache_file_is_moved_aside_and_rebuilt(trees, tmp_path) -> None:
    library(trees, 2)
    cache = tmp_path / "c.sqlite3"
    expected = run_trees(*trees).results
    cache.write_bytes(b"this is not an SQLite database" * 100)
    warnings: list[str] = []
    result = run_trees(*trees, cache=cache, warnings=warnings)
    assert len(warnings) == 1 and warnings[0].startswith(f"cache {cache} was damaged")
    assert result.results == expected
    assert (tmp_path / "c.sqlite3.corrupt").is_file()
    assert run_trees(*trees, cache=cache).haystack.sources[FROM_CACHE] == 2


def test_unwritable_cache_costs_a_warning_not_the_run(trees, tmp_path) -> None:
    library(trees, 1)
    (tmp_path / "a file").write_text("")
    warnings: list[str] = []
    result = run_trees(*trees, cache=tmp_path / "a file" / "c.sqlite3", warnings=warnings)
    assert result.exit_code == 1  # old/new.jpg is not in the library
    assert len(warnings) == 1 and warnings[0].startswith("cache") and "going on without it" in warnings[0]
    assert "Partly in the haystack (1 folder):\n  old  1 of 2 images matched" in hs.render_text(result)


def test_cache_inside_a_folder_being_read_is_refused(trees) -> None:
    library(trees, 1)
    warnings: list[str] = []
    result = run_trees(*trees, cache=trees[0] / "cache.sqlite3", warnings=warnings)
    assert len(warnings) == 1 and "would be inside --haystack" in warnings[0]
    assert result.cache_path is None
    assert not (trees[0] / "cache.sqlite3").exists()


def test_byte_copies_are_recognised_without_decoding_and_hash_alike(trees, tmp_path) -> None:
    haystack, needles = trees
    for i in range(3):
        copy_photo(i, haystack / f"{i}.jpg")
        copy_photo(i, needles / "copies" / f"copy {i}.jpg")
    result = run_trees(*trees, cache=tmp_path / "c.sqlite3")
    assert result.needles.sources[BYTE_COPY] == 3 and result.needles.sources[DECODED] == 0
    decoded = [hs.fingerprint_pixels(hs.decode_image(path.read_bytes()), 8).hash
               for path in sorted((needles / "copies").iterdir())]  # the same files, decoded
    assert [(n.rel, n.status, n.hash) for n in result.results] == \
        [(f"copies/copy {i}.jpg", "matched", h) for i, h in enumerate(decoded)]


def test_parallel_and_serial_runs_agree(trees) -> None:
    library(trees)
    (trees[1] / "old" / "broken.jpg").write_bytes(b"junk")
    serial = run_trees(*trees, jobs=1)
    parallel = run_trees(*trees, jobs=hs.default_jobs())
    assert serial.results == parallel.results and serial.folders == parallel.folders
    assert serial.haystack.fingerprints == parallel.haystack.fingerprints


def test_prune_forgets_files_that_are_gone(trees, tmp_path) -> None:
    library(trees, 3)
    cache = tmp_path / "c.sqlite3"
    assert run_trees(*trees, cache=cache).pruned is None
    assert cached_rows(cache) == 3 + 4
    (trees[0] / "lib" / "0.jpg").unlink()
    result = run_trees(*trees, cache=cache, prune_cache=True)
    assert result.pruned == 1
    assert "cache: forgot 1 record of files that are gone" in hs.render_summary(result)
    assert cached_rows(cache) == 2 + 4


def test_digests_are_taken_only_when_sizes_meet_and_added_to_cached_records(trees, tmp_path) -> None:
    haystack, needles = trees
    for i in range(3):
        copy_photo(i, haystack / f"{i}.jpg")
    cache = tmp_path / "c.sqlite3"
    run_trees(*trees, cache=cache, warnings=[])  # no needles (a warning): no size meets, no digest is taken
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT count(*) FROM fingerprints WHERE digest != x''").fetchone()[0] == 0
    for i in range(3):
        copy_photo(i, needles / "copies" / f"{i}.jpg")
    result = run_trees(*trees, cache=cache)
    assert result.haystack.sources[FROM_CACHE] == 3 and result.haystack.sources[DECODED] == 0
    assert result.needles.sources[BYTE_COPY] == 3 and result.needles.sources[DECODED] == 0
    assert set(statuses(result).values()) == {"matched"}


def test_records_of_another_algorithm_version_are_ignored_and_pruned(tmp_path, monkeypatch) -> None:
    image = hs.find_files(copy_photo(0, tmp_path / "photos" / "a.jpg").parent).files[0]
    fingerprint = hs.fingerprint_pixels(hs.decode_image(Path(image.path).read_bytes()), 8)
    cache = hs.HashCache(tmp_path / "c.sqlite3", 8, warn=pytest.fail)
    cache.store(image, fingerprint)
    cache.flush()
    assert cache.lookup(image) == fingerprint
    assert cache.lookup(dataclasses.replace(image, mtime_ns=image.mtime_ns + 1)) is None  # the file changed
    monkeypatch.setattr(hs, "ALGORITHM_VERSION", hs.ALGORITHM_VERSION + 1)
    assert cache.lookup(image) is None
    assert cache.prune() == 1 and cached_rows(tmp_path / "c.sqlite3") == 0
    cache.close()


def cached_rows(cache: Path) -> int:
    try:
        with sqlite3.connect(cache, timeout=5) as db:
            return db.execute("SELECT count(*) FROM fingerprints").fetchone()[0]
    except sqlite3.Error:
        return 0


def many_images(folder: Path, count: int) -> list[Path]:
    """count image files that take a few milliseconds each to hash: links to one noisy photo.
    The cache knows a file by its path, so each is hashed and stored on its own."""
    pixels = read_photo(0, max_side=600).astype(int) + np.random.default_rng(0).integers(-8, 9, (1, 1, 1))
    noisy = np.clip(pixels + np.random.default_rng(1).integers(-8, 9, pixels.shape[:2] + (1,)), 0, 255)
    first = write_image(folder / "00" / "0000.jpg", noisy.astype(np.uint8))
    paths = [first]
    for i in range(1, count):
        path = folder / f"{i // 100:02d}" / f"{i:04d}.jpg"
        path.parent.mkdir(exist_ok=True)
        os.link(first, path)
        paths.append(path)
    return paths


def committed_rows(cache: Path) -> int:
    """Records committed to the cache; 0 before the file exists (never creates it)."""
    try:
        with sqlite3.connect(f"file:{cache}?mode=ro", uri=True, timeout=5) as db:
            return db.execute("SELECT count(*) FROM fingerprints").fetchone()[0]
    except sqlite3.Error:
        return 0


def signal_after_first_batch(trees, cache: Path, signum: int) -> subprocess.Popen[str]:
    """Start a run on one thread, and signal it as soon as its first batch of records is committed."""
    process = subprocess.Popen([sys.executable, str(SCRIPT), "-a", trees[0], "-n", trees[1], "--cache", cache,
                                "--jobs", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while committed_rows(cache) == 0 and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signum)
    return process


def keep_only_cached_and(images: list[Path], cache: Path, uncached: int) -> int:
    """Delete the images the cache does not hold but `uncached` of them; return how many it holds."""
    with sqlite3.connect(f"file:{cache}?mode=ro", uri=True) as db:
        held = {os.fsdecode(path) for (path,) in db.execute("SELECT path FROM fingerprints")}
    others = [image for image in images if str(image.absolute()) not in held]
    for image in others[uncached:]:
        image.unlink()
    return len(images) - len(others)


def test_killed_run_leaves_a_usable_cache(trees, tmp_path) -> None:
    images = many_images(trees[0], 1000)
    cache = tmp_path / "c.sqlite3"
    process = signal_after_first_batch(trees, cache, signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    saved = committed_rows(cache)
    assert 0 < saved < len(images), "the run was not killed half-way"
    with sqlite3.connect(cache) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # The next run takes what was saved from the cache and hashes the rest (here 5 files).
    assert keep_only_cached_and(images, cache, 5) == saved
    result = run_trees(*trees, cache=cache, warnings=[])
    assert result.haystack.sources[FROM_CACHE] == saved and result.haystack.sources[DECODED] == 5
    assert result.haystack.hashed == saved + 5
    assert committed_rows(cache) == saved + 5


def test_interrupted_run_exits_130_and_keeps_what_it_hashed(trees, tmp_path) -> None:
    images = many_images(trees[0], 1000)
    cache = tmp_path / "c.sqlite3"
    process = signal_after_first_batch(trees, cache, signal.SIGINT)  # Ctrl-C
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "hash_and_search: interrupted" and "Traceback" not in stderr
    assert stdout == ""
    saved = committed_rows(cache)
    assert 0 < saved < len(images), "the run was not interrupted half-way"
    assert keep_only_cached_and(images, cache, 5) == saved
    assert run_trees(*trees, cache=cache, warnings=[]).haystack.sources[FROM_CACHE] == saved


def test_two_runs_at_once_share_the_cache(trees, tmp_path) -> None:
    many_images(trees[0], 120)
    copy_photo(1, trees[1] / "x.jpg")
    cache = tmp_path / "c.sqlite3"
    command = [sys.executable, str(SCRIPT), "-a", trees[0], "-n", trees[1], "--cache", cache, "--json"]
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [run.communicate(timeout=300) for run in runs]
    for stdout, stderr in outputs:
        assert "warning" not in stderr and "Traceback" not in stderr
        assert json.loads(stdout)["trees"]["haystack"]["hashed"] == 120
    with sqlite3.connect(cache) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert committed_rows(cache) == 121
    assert run_trees(*trees, cache=cache).haystack.sources[FROM_CACHE] == 120
