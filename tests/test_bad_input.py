"""Bad input: each case is hashed or reported with a reason, and the run goes on. In this
process, except what needs another user (permissions) or the exit status of a fatal error."""
from __future__ import annotations

import json
import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

import hash_and_search as hs
from conftest import (by_path, copy_photo, read_photo, run_tool, run_trees, statuses, unprivileged_user_works,
                      write_image)


def reasons(result: hs.RunResult) -> dict[str, tuple[str, str | None]]:
    return {rel: (needle.status.value, needle.reason) for rel, needle in by_path(result).items()}


def run_with_one_good_match(trees) -> hs.RunResult:
    """A haystack photo and its copy among the needles, beside whatever the test added."""
    haystack, needles = trees
    copy_photo(0, haystack / "good.jpg")
    copy_photo(0, needles / "good" / "good.jpg")
    result = run_trees(haystack, needles)
    assert statuses(result)["good/good.jpg"] == "matched"  # the run went on
    return result


def test_corrupt_image_is_reported(trees) -> None:
    data = bytearray(copy_photo(1, trees[1] / "bad" / "corrupt.jpg").read_bytes())
    data[200:] = bytes(len(data) - 200)  # header kept, image data wiped
    (trees[1] / "bad" / "corrupt.jpg").write_bytes(bytes(data))
    status, reason = reasons(run_with_one_good_match(trees))["bad/corrupt.jpg"]
    assert status == "unreadable" and "decode" in reason


def test_truncated_image_is_reported(trees) -> None:
    path = copy_photo(1, trees[1] / "bad" / "truncated.jpg")
    path.write_bytes(path.read_bytes()[:600])
    assert statuses(run_with_one_good_match(trees))["bad/truncated.jpg"] == "unreadable"


def test_zero_byte_image_is_reported(trees) -> None:
    (trees[1] / "bad").mkdir()
    (trees[1] / "bad" / "empty.jpg").write_bytes(b"")
    assert reasons(run_with_one_good_match(trees))["bad/empty.jpg"] == ("unreadable", "empty file (0 bytes)")


def test_text_file_named_jpg_is_reported(trees) -> None:
    (trees[1] / "bad").mkdir()
    (trees[1] / "bad" / "notes.jpg").write_text("shopping list: milk, eggs\n")
    result = run_with_one_good_match(trees)
    assert statuses(result)["bad/notes.jpg"] == "unreadable"
    assert result.exit_code == 1


def test_unreadable_haystack_file_is_reported_and_counted(trees) -> None:
    (trees[0] / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = run_with_one_good_match(trees)
    assert [problem.rel for problem in result.haystack.unreadable] == ["broken.png"]
    assert json.loads(hs.render_json(result))["unreadable"][0]["path"] == "broken.png"
    # Named even without --verbose: an unreadable library file makes its copies look missing.
    assert "1 unreadable" in hs.render_summary(result) and "  unreadable: broken.png: " in hs.render_summary(result)


@pytest.fixture
def shared_trees() -> Iterator[tuple[Path, Path]]:
    """Trees that the unprivileged user can reach (pytest's own temp folder is private to root)."""
    base = Path(os.path.realpath(os.environ.get("TMPDIR", "/tmp"))) / f"hash-and-search-{os.getpid()}"
    for folder in (base / "haystack", base / "needles", base / "cache"):
        folder.mkdir(parents=True, exist_ok=True)
    for folder in (base, base / "haystack", base / "needles", base / "cache"):
        folder.chmod(0o777)
    if not unprivileged_user_works():
        pytest.skip("cannot drop privileges here (needs setpriv and a Python that 'nobody' can run)")
    yield base / "haystack", base / "needles"
    for root, dirs, _ in os.walk(base):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
    shutil.rmtree(base)


def needle_reasons(completed) -> dict[str, tuple[str, str | None]]:
    return {n["path"]: (n["status"], n["reason"]) for n in json.loads(completed.stdout)["needles"]}


def run_unprivileged(trees):
    haystack, needles = trees
    env = {**os.environ, "XDG_CACHE_HOME": str(haystack.parent / "cache")}
    return run_tool("-a", haystack, "-n", needles, "--json", env=env, user=65534 if os.geteuid() == 0 else None)


def world_readable(*paths: Path) -> None:
    for path in paths:
        path.chmod(0o755 if path.is_dir() else 0o644)


def test_file_without_read_permission_is_reported(shared_trees) -> None:
    haystack, needles = shared_trees
    world_readable(copy_photo(0, haystack / "good.jpg"), copy_photo(0, needles / "good.jpg"))
    secret = copy_photo(1, needles / "secret.jpg")
    secret.chmod(0)
    found = needle_reasons(run_unprivileged(shared_trees))
    assert found["secret.jpg"] == ("unreadable", "permission denied")
    assert found["good.jpg"][0] == "matched"


def test_subfolder_without_read_permission_is_reported(shared_trees) -> None:
    haystack, needles = shared_trees
    world_readable(copy_photo(0, haystack / "good.jpg"), copy_photo(0, needles / "ok" / "good.jpg"), needles / "ok")
    copy_photo(1, needles / "locked" / "x.jpg")
    (needles / "locked").chmod(0)
    completed = run_unprivileged(shared_trees)
    found = needle_reasons(completed)
    assert found["locked/"] == ("unreadable", "folder: permission denied")
    assert found["ok/good.jpg"][0] == "matched"
    assert json.loads(completed.stdout)["folders"][0] == {
        "folder": "locked", "verdict": "not_in_haystack", "compared": 1, "matched": 0, "not_compared": 0,
        "by_kind": {"folder": {"unreadable": 1}}}


def test_unreadable_needles_root_is_fatal(shared_trees) -> None:
    shared_trees[1].chmod(0)
    completed = run_unprivileged(shared_trees)
    assert completed.returncode == 2
    assert completed.stderr.strip().endswith("permission denied")
    assert len(completed.stderr.strip().splitlines()) == 1


def test_broken_symlink_is_reported(trees) -> None:
    (trees[1] / "links").mkdir()
    (trees[1] / "links" / "gone.jpg").symlink_to(trees[1] / "nowhere.jpg")
    assert reasons(run_with_one_good_match(trees))["links/gone.jpg"] == ("unreadable", "broken symbolic link")


def test_symlink_loop_is_walked_once(trees) -> None:
    copy_photo(1, trees[1] / "loop" / "x.jpg")
    (trees[1] / "loop" / "again").symlink_to(trees[1] / "loop")
    (trees[1] / "loop" / "up").symlink_to(trees[1])
    assert sorted(statuses(run_with_one_good_match(trees))) == ["good/good.jpg", "loop/x.jpg"]


def test_missing_folder_is_one_line_and_exit_2(trees) -> None:
    completed = run_tool("-a", trees[0], "-n", trees[1] / "no such folder")
    assert completed.returncode == 2
    assert completed.stderr.count("\n") == 1 and "no such folder" in completed.stderr


def test_file_given_as_folder_is_fatal(trees) -> None:
    photo = copy_photo(0, trees[0] / "a.jpg")
    with pytest.raises(hs.FatalError, match="not a folder"):
        run_trees(photo, trees[1])


def test_empty_needles_folder_says_so_and_exits_1(trees, cli) -> None:
    copy_photo(0, trees[0] / "a.jpg")
    (trees[1] / "empty subfolder").mkdir()
    completed = cli("-a", trees[0], "-n", trees[1], "--no-cache")
    assert completed.returncode == 1
    assert completed.stdout == "No photos or videos found in the needles folder.\n"


def test_empty_haystack_leaves_every_needle_missing(trees) -> None:
    copy_photo(0, trees[1] / "old" / "a.jpg")
    result = run_trees(trees[0], trees[1])
    assert result.exit_code == 1
    assert "Not in the haystack (1 folder):\n  old  0 of 1 image matched\n" in hs.render_text(result)


@pytest.mark.parametrize("name", [
    "with space/photo 1.jpg", "back\\slash/a\\b.jpg", "quotes/it's \"here\".jpg",
    "ünïcödé/fête à Zürich.jpg", "日本/写真.jpg",
])
def test_odd_file_names_are_matched(trees, name: str) -> None:
    copy_photo(0, trees[0] / "original.jpg")
    copy_photo(0, trees[1] / name)
    assert reasons(run_trees(trees[0], trees[1])) == {name: ("matched", None)}


def test_file_name_that_is_not_valid_utf8_is_matched(trees) -> None:
    copy_photo(0, trees[0] / "original.jpg")
    folder = os.fsencode(trees[1]) + b"/caf\xe9"
    os.mkdir(folder)
    with open(folder + b"/ph\xf6to.jpg", "wb") as file:
        file.write(copy_photo(0, trees[0] / "copy.jpg").read_bytes())
    result = run_trees(trees[0], trees[1])
    assert statuses(result) == {os.fsdecode(b"caf\xe9/ph\xf6to.jpg"): "matched"}
    assert result.exit_code == 0
    assert "1 folder, 1 image" in hs.render_text(result)


def test_image_with_alpha_channel_is_hashed(trees) -> None:
    copy_photo(0, trees[0] / "a.jpg")
    pixels = cv2.imread(str(trees[0] / "a.jpg"))
    write_image(trees[1] / "alpha.png", np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)]))
    assert statuses(run_trees(trees[0], trees[1]))["alpha.png"] == "matched"


def test_16_bit_image_is_hashed(trees) -> None:
    copy_photo(0, trees[0] / "a.jpg")
    pixels = cv2.imread(str(trees[0] / "a.jpg")).astype(np.uint16) * 257
    write_image(trees[1] / "deep.png", pixels)
    write_image(trees[1] / "deep.tif", pixels)
    found = statuses(run_trees(trees[0], trees[1]))
    assert found["deep.png"] == found["deep.tif"] == "matched"


def test_palette_image_is_hashed(trees) -> None:
    from PIL import Image

    copy_photo(0, trees[1] / "a.jpg")
    Image.open(trees[1] / "a.jpg").convert("P").save(trees[1] / "palette.gif")
    Image.open(trees[1] / "a.jpg").convert("P").save(trees[1] / "palette.png")
    found = statuses(run_trees(trees[0], trees[1]))
    assert found["palette.gif"] == found["palette.png"] == "missing"  # hashed, nothing to match


def png_claiming_size(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def test_image_too_large_for_opencv_is_refused_with_a_message(trees) -> None:
    (trees[1] / "huge").mkdir()
    (trees[1] / "huge" / "panorama.png").write_bytes(png_claiming_size(60000, 60000))
    status, reason = reasons(run_with_one_good_match(trees))["huge/panorama.png"]
    assert status == "unreadable" and "too large" in reason


def test_extensions_are_matched_regardless_of_case_and_webp_gif_are_read(trees) -> None:
    copy_photo(0, trees[0] / "a.jpg")
    copy_photo(0, trees[1] / "IMG_0001.JPG")
    pixels = read_photo(1)  # small: lossless WebP is slow to write
    write_image(trees[0] / "b.png", pixels)
    write_image(trees[1] / "lossless.webp", pixels, cv2.IMWRITE_WEBP_QUALITY, 101)
    (trees[1] / "notes.txt").write_text("not an image: counted, not compared")
    assert reasons(run_trees(trees[0], trees[1])) == {"IMG_0001.JPG": ("matched", None),
                                                       "lossless.webp": ("matched", None),
                                                       "notes.txt": ("not_compared", None)}


def test_damaged_heic_and_raw_files_are_reported_per_folder(trees) -> None:
    copy_photo(0, trees[0] / "a.jpg")
    copy_photo(0, trees[1] / "iphone" / "a.jpg")
    (trees[1] / "iphone" / "IMG_0002.HEIC").write_bytes(b"\0\0\0\x18ftypheic")
    (trees[1] / "iphone" / "IMG_0003.dng").write_bytes(b"II*\0")
    result = run_trees(trees[0], trees[1])
    assert "iphone  1 of 3 images matched (2 photos, 1 RAW file; 2 unreadable)" in hs.render_text(result)
    assert "needles: 1 image hashed, 2 unreadable, in " in hs.render_summary(result)


def snapshot(root: Path) -> dict[str, tuple[int, int, bytes]]:
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            info = os.lstat(path)
            content = Path(path).read_bytes() if os.path.isfile(path) and not os.path.islink(path) else b""
            found[path] = (info.st_mode, info.st_mtime_ns, content)
    return found


def test_nothing_under_the_folders_is_written_moved_or_deleted(trees, tmp_path) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a" / "a.jpg")
    copy_photo(0, needles / "b" / "a.jpg")
    (needles / "b" / "bad.jpg").write_bytes(b"junk")
    write_image(needles / "c" / "new.png", read_photo(2))
    before = snapshot(trees[0]) | snapshot(trees[1])
    for _ in range(2):  # hashing, then from the cache
        result = run_trees(haystack, needles, cache=tmp_path / "c.sqlite3")
        hs.render_text(result, list_missing=True), hs.render_json(result)
    assert result.needles.sources[hs.Source.FROM_CACHE] == 3
    assert snapshot(trees[0]) | snapshot(trees[1]) == before
