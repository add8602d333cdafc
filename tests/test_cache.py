"""The hash cache: second runs decode nothing, changes are seen, damage and kills are survived."""
from __future__ import annotations

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

from conftest import SCRIPT, copy_photo, read_photo, run_tool, write_image


def run_json(trees, *extra: object) -> dict:
    completed = run_tool("-a", trees[0], "-n", trees[1], "--json", *extra)
    assert completed.returncode in (0, 1), completed.stderr
    return json.loads(completed.stdout)


def statuses(document: dict) -> dict[str, tuple[str, str | None]]:
    return {n["path"]: (n["status"], n["hash"]) for n in document["needles"]}


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
    first = run_json(trees, "--cache", cache)
    assert first["trees"]["haystack"]["decoded"] == 4
    # Destroy the images' content but not their size and mtime: only the cache can still know them.
    for path in [*trees[0].rglob("*.jpg"), *trees[1].rglob("*.*")]:
        keep_stat(path, bytes(path.stat().st_size))
    second = run_json(trees, "--cache", cache)
    assert second["trees"]["haystack"]["from_cache"] == 4 and second["trees"]["haystack"]["decoded"] == 0
    assert second["trees"]["needles"]["from_cache"] == 6 and second["trees"]["needles"]["decoded"] == 0
    assert statuses(second) == statuses(first)


def test_default_cache_is_in_the_user_cache_folder(trees, private_cache) -> None:
    library(trees, 1)
    run_json(trees)
    assert (private_cache / "hash_and_search" / "fingerprints.sqlite3").is_file()
    assert run_json(trees)["trees"]["haystack"]["from_cache"] == 1


def test_file_modified_in_place_is_hashed_again(trees, tmp_path) -> None:
    library(trees, 2)
    cache = tmp_path / "c.sqlite3"
    assert statuses(run_json(trees, "--cache", cache))["old/new.jpg"][0] == "missing"
    # The library gets the new photo under an old name.
    write_image(trees[0] / "lib" / "0.jpg", cv2.imread(str(trees[1] / "old" / "new.jpg")))
    again = run_json(trees, "--cache", cache)
    assert again["trees"]["haystack"]["decoded"] == 1 and again["trees"]["haystack"]["from_cache"] == 1
    assert statuses(again)["old/new.jpg"][0] == "matched"
    assert statuses(again)["old/0.png"][0] == "missing"


def test_other_hash_size_does_not_reuse_records(trees, tmp_path) -> None:
    library(trees, 1)
    cache = tmp_path / "c.sqlite3"
    run_json(trees, "--cache", cache)
    document = run_json(trees, "--cache", cache, "--hash-size", "16")
    assert document["trees"]["haystack"]["decoded"] == 1
    assert len(document["needles"][0]["hash"]) == 64


def test_no_cache_writes_no_cache(trees, private_cache) -> None:
    library(trees, 1)
    assert run_json(trees, "--no-cache")["settings"]["cache"] is None
    assert not private_cache.exists()


def test_damaged_cache_file_is_moved_aside_and_rebuilt(trees, tmp_path) -> None:
    library(trees, 2)
    cache = tmp_path / "c.sqlite3"
    expected = statuses(run_json(trees, "--no-cache"))
    cache.write_bytes(b"this is not an SQLite database" * 100)
    completed = run_tool("-a", trees[0], "-n", trees[1], "--json", "--cache", cache)
    assert "warning: cache" in completed.stderr and "damaged" in completed.stderr
    assert statuses(json.loads(completed.stdout)) == expected
    assert (tmp_path / "c.sqlite3.corrupt").is_file()
    assert run_json(trees, "--cache", cache)["trees"]["haystack"]["from_cache"] == 2


def test_unwritable_cache_costs_a_warning_not_the_run(trees, tmp_path) -> None:
    library(trees, 1)
    (tmp_path / "a file").write_text("")
    completed = run_tool("-a", trees[0], "-n", trees[1], "--cache", tmp_path / "a file" / "c.sqlite3")
    assert completed.returncode == 1  # old/new.jpg is not in the library
    assert completed.stderr.count("warning: cache") == 1 and "going on without it" in completed.stderr
    assert "Partly in the haystack (1 folder):\n  old  1 of 2 images matched" in completed.stdout


def test_cache_inside_a_folder_being_read_is_refused(trees) -> None:
    library(trees, 1)
    completed = run_tool("-a", trees[0], "-n", trees[1], "--cache", trees[0] / "cache.sqlite3")
    assert "would be inside --haystack" in completed.stderr
    assert not (trees[0] / "cache.sqlite3").exists()


def test_byte_copies_are_recognised_without_decoding_and_hash_alike(trees, tmp_path) -> None:
    haystack, needles = trees
    for i in range(3):
        copy_photo(i, haystack / f"{i}.jpg")
        copy_photo(i, needles / "copies" / f"copy {i}.jpg")
    document = run_json(trees, "--cache", tmp_path / "c.sqlite3")
    assert document["trees"]["needles"]["byte_identical"] == 3 and document["trees"]["needles"]["decoded"] == 0
    decoded = run_json((needles, needles), "--no-cache")  # the same files, decoded
    assert statuses(document) == {f"copies/copy {i}.jpg": ("matched", h) for i, (_, h) in
                                  enumerate(statuses(decoded).values())}


def test_parallel_and_serial_runs_agree(trees) -> None:
    library(trees)
    (trees[1] / "old" / "broken.jpg").write_bytes(b"junk")
    serial = run_json(trees, "--no-cache", "--jobs", "1")
    parallel = run_json(trees, "--no-cache", "--jobs", "4")
    assert serial["needles"] == parallel["needles"] and serial["folders"] == parallel["folders"]


def many_images(folder: Path, count: int) -> None:
    """Distinct images, big enough that hashing them all takes a few seconds."""
    base = read_photo(0, max_side=1600)
    rng = np.random.default_rng(0)
    for i in range(count):
        noise = rng.integers(-8, 9, base.shape[:2] + (1,))
        write_image(folder / f"{i // 50:02d}" / f"{i:04d}.jpg", np.clip(base + noise, 0, 255).astype(np.uint8))


def cached_rows(cache: Path) -> int:
    try:
        with sqlite3.connect(cache, timeout=5) as db:
            return db.execute("SELECT count(*) FROM fingerprints").fetchone()[0]
    except sqlite3.Error:
        return 0


def test_killed_run_leaves_a_usable_cache(trees, tmp_path) -> None:
    many_images(trees[0], 300)
    cache = tmp_path / "c.sqlite3"
    process = subprocess.Popen([sys.executable, str(SCRIPT), "-a", trees[0], "-n", trees[1], "--cache", cache,
                                "--jobs", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while cached_rows(cache) == 0 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = cached_rows(cache)
    assert 0 < saved < 300, "the run was not killed half-way"
    with sqlite3.connect(cache) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    document = run_json(trees, "--cache", cache)
    assert document["trees"]["haystack"]["from_cache"] >= saved
    assert document["trees"]["haystack"]["hashed"] == 300


def test_interrupted_run_exits_130_and_keeps_what_it_hashed(trees, tmp_path) -> None:
    many_images(trees[0], 300)
    cache = tmp_path / "c.sqlite3"
    process = subprocess.Popen([sys.executable, str(SCRIPT), "-a", trees[0], "-n", trees[1], "--cache", cache,
                                "--jobs", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while cached_rows(cache) == 0 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # Ctrl-C
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 130
    assert stderr.strip().splitlines()[-1] == "hash_and_search: interrupted" and "Traceback" not in stderr
    assert stdout == ""
    saved = cached_rows(cache)
    assert 0 < saved < 300, "the run was not interrupted half-way"
    assert run_json(trees, "--cache", cache)["trees"]["haystack"]["from_cache"] == saved


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
    assert cached_rows(cache) == 121
    assert run_json(trees, "--cache", cache)["trees"]["haystack"]["from_cache"] == 120


def test_prune_forgets_files_that_are_gone(trees, tmp_path) -> None:
    library(trees, 3)
    cache = tmp_path / "c.sqlite3"
    run_json(trees, "--cache", cache)
    assert cached_rows(cache) == 3 + 4
    (trees[0] / "lib" / "0.jpg").unlink()
    completed = run_tool("-a", trees[0], "-n", trees[1], "--cache", cache, "--prune-cache")
    assert "forgot 1 record" in completed.stderr
    assert cached_rows(cache) == 2 + 4


def test_digests_are_taken_only_when_sizes_meet_and_added_to_cached_records(trees, tmp_path) -> None:
    haystack, needles = trees
    for i in range(3):
        copy_photo(i, haystack / f"{i}.jpg")
    cache = tmp_path / "c.sqlite3"
    run_json(trees, "--cache", cache)  # no needles: no size meets, no digest is taken
    with sqlite3.connect(cache) as db:
        assert db.execute("SELECT count(*) FROM fingerprints WHERE digest != x''").fetchone()[0] == 0
    for i in range(3):
        copy_photo(i, needles / "copies" / f"{i}.jpg")
    document = run_json(trees, "--cache", cache)
    assert document["trees"]["haystack"] == {**document["trees"]["haystack"], "from_cache": 3, "decoded": 0}
    assert document["trees"]["needles"] == {**document["trees"]["needles"], "byte_identical": 3, "decoded": 0}
    assert {n["status"] for n in document["needles"]} == {"matched"}
