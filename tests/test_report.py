"""Issue 10: the folders named, CSV, every match, the leakage question, copying the missing
files for import."""
from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest

import hash_and_search as hs
from conftest import copy_photo, read_photo, run_tool, write_image


def run(haystack: Path, needles: Path, **settings) -> hs.RunResult:
    return hs.run(haystack, needles, hs.Settings(**settings))


@pytest.fixture
def backup(trees) -> tuple[Path, Path]:
    """A library of two photos; a backup with one folder imported, one partly, one not."""
    haystack, needles = trees
    copy_photo(0, haystack / "lib" / "a.jpg")
    copy_photo(1, haystack / "lib" / "b.jpg")
    copy_photo(0, needles / "done" / "a.jpg")
    write_image(needles / "done" / "b.png", cv2.imread(str(haystack / "lib" / "b.jpg")))
    copy_photo(1, needles / "half" / "b.jpg")
    copy_photo(2, needles / "half" / "c.jpg")
    (needles / "half" / "c.xmp").write_text("<x:xmpmeta/>")
    (needles / "half" / "b.xmp").write_text("<x:xmpmeta/>")
    copy_photo(3, needles / "new" / "d.jpg")
    (needles / "new" / "e.mov").write_bytes(os.urandom(3000))
    return haystack, needles


def test_text_report_names_every_folder_under_its_verdict(backup) -> None:
    text = hs.render_text(run(*backup))
    assert text == ("Not in the haystack (1 folder):\n"
                    "  new   0 of 2 files matched (1 photo, 1 video)\n"
                    "Partly in the haystack (1 folder):\n"
                    "  half  1 of 2 images matched, 2 other files not compared\n"
                    "In the haystack (1 folder):\n"
                    "  done  2 of 2 images matched\n"
                    "In the haystack: 1 folder, 2 images.\n")


def test_list_matched_gives_each_copy_and_how_it_matched(backup) -> None:
    text = hs.render_text(run(*backup), list_matched=True)
    assert "  done  2 of 2 images matched\n      a.jpg  =  lib/a.jpg  (byte-identical)\n" \
           "      b.png  =  lib/b.jpg  (same hash)\n" in text


def test_csv_has_a_header_and_one_row_per_needle_file(backup) -> None:
    rows = list(csv.DictReader(io.StringIO(hs.render_csv(run(*backup)))))
    assert tuple(rows[0]) == hs.CSV_COLUMNS
    by_path = {row["needle"]: row for row in rows}
    assert len(rows) == 8
    assert by_path["done/b.png"] | {} == {
        "needle": "done/b.png", "folder": "done", "kind": "photo", "status": "matched", "match": "lib/b.jpg",
        "method": "same_hash", "distance": "0", "similarity": "1.000", "orientation": "as is", "similar_to": "",
        "reason": ""}
    assert by_path["new/e.mov"]["kind"] == "video" and by_path["new/e.mov"]["status"] == "missing"
    assert by_path["half/c.xmp"]["status"] == "not_compared"


def test_csv_keeps_odd_names_exact(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    name = 'comma, "quote"\nnewline.jpg'
    copy_photo(0, needles / name)
    rows = list(csv.reader(io.StringIO(hs.render_csv(run(haystack, needles)))))
    assert rows[1][0] == name


def test_all_matches_finds_every_copy_in_the_library(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "2019" / "a.jpg")
    copy_photo(0, haystack / "2020" / "a again.jpg")
    write_image(haystack / "exports" / "a.png", read_photo(0, max_side=10_000))
    copy_photo(0, needles / "x" / "a.jpg")
    best = run(haystack, needles).results[0]
    every = run(haystack, needles, all_matches=True).results[0]
    assert len(best.matches) == 1
    assert [(m.path, m.method) for m in every.matches] == [
        ("2019/a.jpg", hs.Method.BYTE_IDENTICAL), ("2020/a again.jpg", hs.Method.BYTE_IDENTICAL),
        ("exports/a.png", hs.Method.SAME_HASH)]
    rows = list(csv.DictReader(io.StringIO(hs.render_csv(run(haystack, needles, all_matches=True)))))
    assert [row["match"] for row in rows] == ["2019/a.jpg", "2020/a again.jpg", "exports/a.png"]


def test_leakage_between_an_imagefolder_train_and_test_set(tmp_path: Path) -> None:
    """A data scientist's question: which test images are in the training set, in any guise?"""
    train, test = tmp_path / "train", tmp_path / "test"
    for i, label in enumerate(("cat", "cat", "dog", "dog", "bird")):
        write_image(train / label / f"{i}.jpg", read_photo(i), cv2.IMWRITE_JPEG_QUALITY, 95)
    leaks = {
        "cat/reencoded.jpg": cv2.imdecode(cv2.imencode(".jpg", read_photo(0), [cv2.IMWRITE_JPEG_QUALITY, 60])[1], 1),
        "cat/224.png": cv2.resize(read_photo(1), (224, 224), interpolation=cv2.INTER_AREA),
        "bird/other class.jpg": read_photo(2),
        "dog/flipped.jpg": np.ascontiguousarray(read_photo(3)[:, ::-1]),
        "dog/brighter.jpg": cv2.convertScaleAbs(read_photo(4), alpha=1.0, beta=20),
    }
    for rel, pixels in leaks.items():
        write_image(test / rel, pixels, cv2.IMWRITE_JPEG_QUALITY, 95)
    for i in (5, 6, 7):
        write_image(test / "cat" / f"clean {i}.jpg", read_photo(i), cv2.IMWRITE_JPEG_QUALITY, 95)
    completed = run_tool("-a", train, "-n", test, "--distance", "8", "--rotations", "--list-matched", "--no-cache")
    listed = {line.split("  =  ")[0].strip() for line in completed.stdout.splitlines() if "  =  " in line}
    assert listed == {Path(rel).name for rel in leaks}
    assert "clean" not in completed.stdout.split("Not in the haystack")[0]
    assert completed.returncode == 1


def tree_state(root: Path) -> dict[str, tuple[int, int, bytes]]:
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns, path.read_bytes())
            for path in sorted(root.rglob("*")) if path.is_file()}


def test_copy_missing_copies_each_unmatched_file_and_its_sidecars(backup, tmp_path: Path) -> None:
    haystack, needles = backup
    before = tree_state(haystack) | {f"needles/{k}": v for k, v in tree_state(needles).items()}
    target = tmp_path / "to import"
    result = run(haystack, needles)
    copies = hs.copy_missing(result, target)
    assert {copied.rel: copied.outcome for copied in copies} == {
        "half/c.jpg": hs.CopyOutcome.COPIED, "half/c.xmp": hs.CopyOutcome.COPIED,
        "new/d.jpg": hs.CopyOutcome.COPIED, "new/e.mov": hs.CopyOutcome.COPIED}
    for rel in ("half/c.jpg", "half/c.xmp", "new/d.jpg", "new/e.mov"):
        assert (target / rel).read_bytes() == (needles / rel).read_bytes()
        assert (target / rel).stat().st_mtime_ns == (needles / rel).stat().st_mtime_ns
    assert not list(target.rglob(".*partial"))
    again = hs.copy_missing(run(haystack, needles), target)
    assert {copied.outcome for copied in again} == {hs.CopyOutcome.ALREADY_THERE}
    assert tree_state(haystack) | {f"needles/{k}": v for k, v in tree_state(needles).items()} == before


def test_copy_missing_never_overwrites_a_different_file(backup, tmp_path: Path) -> None:
    haystack, needles = backup
    target = tmp_path / "out"
    (target / "new").mkdir(parents=True)
    (target / "new" / "d.jpg").write_bytes(b"someone else's file")
    copies = {copied.rel: copied.outcome for copied in hs.copy_missing(run(haystack, needles), target)}
    assert copies["new/d.jpg"] == hs.CopyOutcome.CONFLICT
    assert (target / "new" / "d.jpg").read_bytes() == b"someone else's file"


def test_copy_missing_dry_run_writes_nothing(backup, tmp_path: Path) -> None:
    haystack, needles = backup
    completed = run_tool("-a", haystack, "-n", needles, "--no-cache", "-q", "--copy-missing", tmp_path / "out",
                         "--dry-run")
    assert "Copy missing to " in completed.stdout and "4 would copy" in completed.stdout
    assert "  new/d.jpg: would copy" in completed.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("inside", ["haystack", "needles"])
def test_copy_missing_into_a_read_folder_is_refused_before_anything_runs(backup, inside: str) -> None:
    haystack, needles = backup
    target = {"haystack": haystack, "needles": needles}[inside] / "import"
    completed = run_tool("-a", haystack, "-n", needles, "--no-cache", "--copy-missing", target)
    assert completed.returncode == 2 and f"inside --{inside}" in completed.stderr
    assert completed.stdout == "" and not target.exists()


def test_dry_run_without_copy_missing_is_a_usage_error(backup) -> None:
    assert run_tool("-a", backup[0], "-n", backup[1], "--dry-run").returncode == 2


needs_root = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("mount") is None,
                                reason="mounting a small tmpfs needs root")


@needs_root
@pytest.mark.parametrize("options, problem", [("ro", "read-only file system"), ("size=64k", "no space left on device")])
def test_copy_missing_into_a_read_only_or_full_folder_fails_per_file_with_exit_2(
        backup, tmp_path: Path, options: str, problem: str) -> None:
    haystack, needles = backup
    target = tmp_path / "small"
    target.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)]).returncode:
        pytest.skip("this machine does not allow mounting a tmpfs")
    try:
        completed = run_tool("-a", haystack, "-n", needles, "--no-cache", "-q", "--copy-missing", target)
        assert completed.returncode == 2
        assert f"failed ({problem})" in completed.stdout
        assert not list(target.rglob("*partial"))
    finally:
        subprocess.run(["umount", str(target)], check=True)
