"""Hostile and broken input (issue 11): memory, files that could block, links out of the tree,
names that would drive a terminal, failing streams, signals, a cache of another layout,
decoder warnings. Made at test time; in this process except what a user sees of the process
(exit status, streams, signals, peak memory)."""
from __future__ import annotations

import csv
import io
import json
import os
import resource
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import (
    PHOTOS,
    SCRIPT,
    by_path,
    copy_photo,
    read_photo,
    run_tool,
    run_trees,
    write_image,
)
from media import make_avif, make_dng, make_heic, make_jxl
from test_cache import committed_rows, many_images, signal_after_first_batch

import hash_and_search as hs


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, idat: bytes) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def uniform_png(width: int, height: int) -> bytes:
    """A real RGB PNG of one colour: 100 megapixels compress to 300 KB, made in about a second."""
    compressor = zlib.compressobj(9)
    row = b"\0" + bytes((90, 120, 200)) * width
    return png(width, height, b"".join([compressor.compress(row) for _ in range(height)] + [compressor.flush()]))


def jpeg12(width: int = 16, height: int = 16) -> bytes:
    """A valid constant-grey 12-bit JPEG (SOF1), made by hand: each block is DC difference 0,
    then EOB, both one-bit Huffman codes '0'."""
    def segment(marker: int, body: bytes) -> bytes:
        return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body

    def one_code_table(table_class_id: int) -> bytes:
        return segment(0xC4, bytes([table_class_id, 1] + [0] * 15 + [0]))

    blocks = -(-width // 8) * -(-height // 8)
    bits = "00" * blocks
    bits += "1" * (-len(bits) % 8)
    scan = bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8)).replace(b"\xff", b"\xff\x00")
    return (b"\xff\xd8" + segment(0xDB, bytes([0] + [1] * 64))
            + segment(0xC1, struct.pack(">BHHB", 12, height, width, 1) + b"\x01\x11\x00")
            + one_code_table(0x00) + one_code_table(0x10) + segment(0xDA, b"\x01\x01\x00\x00\x3f\x00")
            + scan + b"\xff\xd9")


def damaged_jpeg() -> bytes:
    """A photo with a restart marker forged into its entropy-coded data: it still decodes (the
    rest of the image grey), and libjpeg warns 'premature end of data segment'."""
    photo = PHOTOS[3].read_bytes()
    middle = len(photo) // 2
    return photo[:middle] + b"\xff\xd4" + photo[middle + 2:]


def snapshot(*roots: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Every path under the roots with its mode, size, mtime and (up to 64 MiB) digest."""
    import hashlib

    found = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(folder, name)
                info = os.lstat(path)
                small_file = os.path.isfile(path) and not os.path.islink(path) and info.st_size < 2**26
                digest = hashlib.sha256(Path(path).read_bytes()).digest() if small_file else b""
                found[path] = (info.st_mode, info.st_size, info.st_mtime_ns, digest)
    return found


def no_traceback(completed: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in completed.stderr, completed.stderr


# --- memory: header before decoding, one budget, sizes bounded -------------------------------

def test_many_100_megapixel_images_stay_under_1_gib_and_bombs_are_refused_with_numbers(trees) -> None:
    haystack, needles = trees
    big = uniform_png(10000, 10000)  # 6 B/px to decode: 600 MB each, two at once would pass 1 GiB
    for name in ("a/pano1.png", "a/pano2.png", "b/pano3.png"):
        (haystack / name).parent.mkdir(exist_ok=True)
        (haystack / name).write_bytes(big)
    (haystack / "b" / "bomb.png").write_bytes(png(30000, 30000, zlib.compress(b"\0" * 1000)))
    with open(haystack / "b" / "sparse.jpg", "wb") as sparse:
        sparse.truncate(64 * 2**30)  # 64 GiB of nothing: read whole, a MemoryError before
    copy_photo(0, needles / "x.jpg")
    before = snapshot(haystack, needles)
    started = time.perf_counter()
    peak_before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    completed = run_tool("-a", haystack, "-n", needles, "--no-cache", "--jobs", "2", "-v")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB, the largest child so far
    no_traceback(completed)
    assert completed.returncode == 1
    # The budget plus the interpreter and its libraries (75 MiB) and slack: 650 MiB measured;
    # 1020 MiB before the budget, when the two jobs decoded two of them at once.
    limit_kib = (hs.DECODE_BUDGET_BYTES + 128 * 2**20) // 1024
    assert peak_before < limit_kib and peak < limit_kib, f"peak RSS {peak / 1024:.0f} MiB"
    assert ("unreadable: b/bomb.png: image too large: 30000 x 30000 pixels (900 megapixels) needs about "
            "5.0 GiB to decode; the limit is 768.0 MiB") in completed.stderr
    assert "unreadable: b/sparse.jpg: file too large: 64.0 GiB; the limit is 768.0 MiB" in completed.stderr
    assert "haystack: 3 images hashed, 2 unreadable" in completed.stderr
    assert snapshot(haystack, needles) == before
    print(f"peak RSS {peak / 1024:.0f} MiB in {time.perf_counter() - started:.1f} s")


def test_decodes_wait_for_their_share_of_the_budget() -> None:
    budget = hs.DecodeBudget(100)
    active, peak, lock = [0], [0], threading.Lock()

    def decode(need: int) -> None:
        with budget.reserve(need):
            with lock:
                active[0] += need
                peak[0] = max(peak[0], active[0])
            time.sleep(0.02)
            with lock:
                active[0] -= need
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(decode, [60, 60, 60, 30, 10, 60, 100]))
    assert peak[0] <= 100
    with budget.reserve(500):  # more than all of it: waits for all of it, decodes alone
        pass


@pytest.mark.parametrize("extension, make, expected", [
    (".jpg", lambda px: cv2.imencode(".jpg", px)[1].tobytes(), ("JPEG", 8, 0)),
    (".jpg", lambda px: cv2.imencode(".jpg", px, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes(), ("JPEG", 8, 3)),
    (".png", lambda px: cv2.imencode(".png", px)[1].tobytes(), ("PNG", 8, 0)),
    (".tif", lambda px: cv2.imencode(".tif", px)[1].tobytes(), ("TIFF", 8, 0)),
    (".webp", lambda px: cv2.imencode(".webp", px)[1].tobytes(), ("WEBP", 8, 0)),
    (".webp", lambda px: cv2.imencode(".webp", px, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes(), ("WEBP", 8, 0)),
    (".gif", lambda px: cv2.imencode(".gif", px)[1].tobytes(), ("GIF", 8, 0)),
    (".hdr", lambda px: cv2.imencode(".hdr", px.astype(np.float32) / 255)[1].tobytes(), ("HDR", 8, 0)),
    (".pfm", lambda px: cv2.imencode(".pfm", px.astype(np.float32) / 255)[1].tobytes(), ("PFM", 8, 0)),
    (".heic", make_heic, ("HEIF", 8, 0)),
    (".avif", make_avif, ("AVIF", 8, 0)),
    (".jxl", make_jxl, ("JXL", 8, 0)),
    (".jpg", lambda px: jpeg12(48, 32), ("JPEG", 12, 0)),
])
def test_image_header_tells_the_size_before_decoding(extension, make, expected) -> None:
    pixels = np.ascontiguousarray(read_photo(0)[:32, :48])
    header = hs.image_header(io.BytesIO(make(pixels)), extension)
    assert (header.format, header.bits, header.progressive_components) == expected
    assert (header.width, header.height) == (48, 32)


def test_image_header_of_a_raw_file_is_its_sensor_size() -> None:
    header = hs.image_header(io.BytesIO(make_dng(read_photo(0)[:64, :96])), ".dng")
    assert (header.format, header.width, header.height) == ("RAW", 96, 64)


@pytest.mark.parametrize("data", [b"\xff\xd8", b"\xff\xd8\xff\xda\x00\x02", b"not an image at all",
                                  b"#?RADIANCE\n\n-Y x +X 3\n", b"\0" * 5000])
def test_image_header_of_what_it_cannot_tell_is_none(data: bytes) -> None:
    assert hs.image_header(io.BytesIO(data), ".jpg") is None


def test_opencv_pixel_limit_is_set_under_the_name_opencv_reads() -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import os, hash_and_search as hs; hs._cv2();"
            "print(os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'])")
    done = subprocess.run([sys.executable, "-c", code, str(SCRIPT.parent)], capture_output=True, text=True, check=False,
                          env={k: v for k, v in os.environ.items() if k != "OPENCV_IO_MAX_IMAGE_PIXELS"})
    assert int(done.stdout) == hs.OPENCV_MAX_IMAGE_PIXELS == hs.DECODE_BUDGET_BYTES // 6


def test_memory_error_is_that_files_reason(trees, monkeypatch) -> None:
    copy_photo(0, trees[1] / "a.jpg")
    copy_photo(1, trees[1] / "b.jpg")
    real = hs.decode_image

    def short_of_memory(data: bytes, extension: str = ".jpg"):
        if data == PHOTOS[1].read_bytes():
            raise MemoryError
        return real(data, extension)
    monkeypatch.setattr(hs, "decode_image", short_of_memory)
    found = by_path(run_trees(*trees))
    assert (found["b.jpg"].status, found["b.jpg"].reason) == ("unreadable", "not enough memory to read or decode it")
    assert found["a.jpg"].status == "missing"


# --- files that could block ------------------------------------------------------------------

@pytest.mark.parametrize("name", ["swapped.jpg", "swapped.mp4"])
def test_a_fifo_swapped_in_after_the_walk_is_refused_without_blocking(tmp_path, name) -> None:
    path = copy_photo(0, tmp_path / "photos" / name)
    file = hs.find_files(path.parent).files[0]
    path.unlink()
    os.mkfifo(path)  # no writer will ever come: a plain open() would wait forever
    outcome: list[tuple[hs.Fingerprint, hs.Source]] = []
    thread = threading.Thread(target=lambda: outcome.append(hs.fingerprint_file(file, 8, {}, True)), daemon=True)
    thread.start()
    thread.join(5)
    assert outcome, "blocked on the FIFO"
    assert outcome[0][0].reason == "not a regular file" and outcome[0][1] == hs.Source.NOT_READ


# --- the walk stays where the user pointed ---------------------------------------------------

def test_links_out_of_the_folder_are_counted_not_followed(trees, tmp_path) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    copy_photo(0, needles / "2020" / "a.jpg")
    copy_photo(1, tmp_path / "elsewhere" / "b.jpg")
    (needles / "inside").symlink_to(needles / "2020")  # the same folder: walked once
    (needles / "outside").symlink_to(tmp_path / "elsewhere")
    (needles / "needles2").symlink_to(tmp_path / "elsewhere")
    (needles / "proc").symlink_to("/proc")
    result = run_trees(haystack, needles)
    assert sorted(by_path(result)) == ["2020/a.jpg"]
    assert {link.rel: link.reason for link in result.needles.scan.not_followed} == {
        "needles2/": f"symbolic link to {tmp_path}/elsewhere, outside the folder (--follow-links enters it)",
        "outside/": f"symbolic link to {tmp_path}/elsewhere, outside the folder (--follow-links enters it)",
        "proc/": "symbolic link to /proc, a system folder"}
    assert "3 links not followed" in hs.render_summary(result)
    assert "  not followed: proc/: symbolic link to /proc, a system folder" in hs.render_summary(result, verbose=True)
    assert "not followed" not in hs.render_summary(result).split("\n", 2)[2]  # named only with -v
    followed = run_trees(haystack, needles, follow_links=True)
    assert sorted(by_path(followed)) == ["2020/a.jpg", "needles2/b.jpg"]  # once: outside is the same folder
    assert [link.rel for link in followed.needles.scan.not_followed] == ["proc/"]


def test_cache_inside_a_folder_the_walk_reached_through_a_link_is_refused(trees, tmp_path) -> None:
    copy_photo(0, tmp_path / "elsewhere" / "a.jpg")
    (trees[0] / "linked").symlink_to(tmp_path / "elsewhere")
    warnings: list[str] = []
    result = run_trees(*trees, cache=tmp_path / "elsewhere" / "sub" / "c.sqlite3", follow_links=True,
                       warnings=warnings)
    assert result.cache_path is None and len(warnings) == 1 and "would be inside --haystack" in warnings[0]
    assert not (tmp_path / "elsewhere" / "sub").exists()


# --- names shown to a terminal ---------------------------------------------------------------

CONTROL_NAMES = [f"c{code:02x}{chr(code)}.jpg" for code in [*range(1, 0x20), 0x7F] if chr(code) != "/"]
CONTROL_NAMES += ["bidi\u202egpj.exe.jpg", "isolate\u2066x\u2069.jpg", "esc\x1b[2J\x1b]0;t\x07.jpg",
                  "back\\x41slash.jpg", "c1\x85\x9b.jpg"]


def test_names_with_control_characters_are_shown_escaped_and_kept_exact_in_json_and_csv(trees, tmp_path) -> None:
    haystack, needles = trees
    folder = needles / "odd\tfolder\x1b[31m"
    for name in CONTROL_NAMES:
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(b"not an image")
    copy_photo(0, needles / "plain" / "a.jpg")
    result = run_trees(haystack, needles, warnings=[])
    text = hs.render_text(result, list_missing=True) + hs.render_summary(result, verbose=True)
    copies = hs.render_copies(hs.copy_missing(result, tmp_path / "copies", dry_run=True), tmp_path / "copies")
    for line in (text + copies).splitlines():
        assert line.isprintable() and not set(line) & {"\u202e", "\u2066", "\u2069"}, repr(line)
    assert "odd\\tfolder\\e[31m" in text and "c0a\\n.jpg" in text and "bidi\\u202egpj.exe.jpg" in text
    assert "back\\\\x41slash.jpg" in text  # a real backslash doubled: no name forges an escape
    exact = {f"odd\tfolder\x1b[31m/{name}" for name in CONTROL_NAMES}
    assert {needle["path"] for needle in json.loads(hs.render_json(result))["needles"]} >= exact
    assert {row[0] for row in csv.reader(io.StringIO(hs.render_csv(result)))} >= exact


def test_folder_column_is_as_wide_as_the_longest_shown_name(trees) -> None:
    copy_photo(0, trees[1] / "\x01" / "a.jpg")
    copy_photo(1, trees[1] / "abcd" / "b.jpg")
    lines = hs.render_text(run_trees(*trees)).splitlines()
    assert lines[1:3] == ["  \\x01  0 of 1 image matched", "  abcd  0 of 1 image matched"]


def test_warnings_and_errors_are_shown_escaped(trees, cli) -> None:
    completed = cli("-a", trees[0], "-n", trees[1] / "gone\x1b[2J", "--no-cache")
    assert completed.returncode == 2
    assert completed.stderr.endswith("gone\\e[2J: no such folder\n")


# --- closed, broken and full streams; signals --------------------------------------------------

@pytest.fixture
def big_report(trees) -> tuple[Path, Path]:
    """Trees whose JSON report is larger than a pipe holds (400 sidecars), hashing one photo."""
    copy_photo(0, trees[0] / "a.jpg")
    copy_photo(0, trees[1] / "a.jpg")
    for i in range(400):
        (trees[1] / f"IMG_{i:04}.xmp").write_text("<x/>")
    return trees


def shell(command: str, trees: tuple[Path, Path]) -> subprocess.CompletedProcess[str]:
    tool = f"{sys.executable} {SCRIPT} -a {trees[0]} -n {trees[1]} --no-cache --json"
    before = snapshot(*trees)
    completed = subprocess.run(["bash", "-c", command.replace("TOOL", tool)], capture_output=True, text=True, check=False,
                               timeout=60)
    no_traceback(completed)
    assert snapshot(*trees) == before
    return completed


def test_stdout_closed_is_one_line_and_status_2(big_report) -> None:
    completed = shell("TOOL >&-", big_report)
    assert (completed.returncode, completed.stderr) == (
        2, "hash_and_search: error: standard output is closed: nowhere to write the report\n")


def test_stderr_closed_still_writes_the_report(big_report) -> None:
    completed = shell("TOOL 2>&-", big_report)
    assert completed.returncode == 0  # a.jpg matched; the sidecars are not compared
    assert len(json.loads(completed.stdout)["needles"]) == 401


def test_stdout_on_a_full_disk_is_one_line_and_status_2(big_report) -> None:
    completed = shell("TOOL >/dev/full", big_report)
    assert completed.returncode == 2
    assert completed.stderr.splitlines()[-1] == "hash_and_search: error: cannot write the report: no space left on device"


def test_stderr_on_a_full_disk_does_not_end_the_run(big_report) -> None:
    completed = shell("TOOL -v 2>/dev/full", big_report)
    assert completed.returncode == 0 and len(json.loads(completed.stdout)["needles"]) == 401


def test_reader_gone_is_silent_status_141(big_report) -> None:
    completed = shell("set -o pipefail; TOOL -q | head -c1 >/dev/null", big_report)
    assert (completed.returncode, completed.stderr) == (141, "")


def test_empty_folder_argument_is_a_usage_error(trees, cli) -> None:
    with pytest.raises(SystemExit) as exited:
        cli("-a", "", "-n", trees[1])
    assert exited.value.code == 2


def test_sigterm_commits_the_batch_in_hand_and_exits_143(trees, tmp_path) -> None:
    images = many_images(trees[0], 1000)
    cache = tmp_path / "c.sqlite3"
    process = signal_after_first_batch(trees, cache, signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 143
    assert stderr.strip().splitlines()[-1] == "hash_and_search: terminated" and "Traceback" not in stderr
    assert stdout == ""
    assert 0 < committed_rows(cache) < len(images)


# --- the cache ---------------------------------------------------------------------------------

def test_cache_of_the_right_version_but_another_layout_is_rebuilt(trees, tmp_path) -> None:
    copy_photo(0, trees[0] / "a.jpg")
    copy_photo(0, trees[1] / "a.jpg")
    cache = tmp_path / "c.sqlite3"
    with sqlite3.connect(cache) as db:
        db.execute("CREATE TABLE fingerprints (path BLOB, hash_size INTEGER, error TEXT)")
        db.execute(f"PRAGMA user_version = {hs.CACHE_SCHEMA_VERSION}")
    db.close()
    warnings: list[str] = []
    result = run_trees(*trees, cache=cache, warnings=warnings)
    assert result.exit_code == 0
    assert warnings == [(f"cache {cache} was damaged (its table has other columns (path, hash_size, error)); "
                         "moved it to c.sqlite3.corrupt and started a new one")]
    assert run_trees(*trees, cache=cache).haystack.sources[hs.Source.FROM_CACHE] == 1


# --- decoder warnings ----------------------------------------------------------------------------

def test_damaged_image_that_decodes_is_flagged_and_its_warning_attributed(trees, capfd) -> None:
    copy_photo(0, trees[0] / "a.jpg")
    for i in range(6):
        copy_photo(i % len(PHOTOS), trees[1] / f"good{i}.jpg")
    (trees[1] / "damaged.jpg").write_bytes(damaged_jpeg())
    result = run_trees(*trees, jobs=2)
    assert "Corrupt JPEG" not in capfd.readouterr().err  # not on the terminal, unattributed
    assert result.needles.damaged == [("damaged.jpg", "Corrupt JPEG data: premature end of data segment")]
    assert by_path(result)["damaged.jpg"].status == "missing"  # decoded and hashed all the same
    assert json.loads(hs.render_json(result))["damaged"] == [
        {"tree": "needles", "path": "damaged.jpg", "damage": "Corrupt JPEG data: premature end of data segment"}]
    assert "  damaged: damaged.jpg: Corrupt JPEG data" in hs.render_summary(result, verbose=True)
    assert "1 damaged" in hs.render_summary(result)


def test_12_bit_jpeg_is_called_unsupported_not_corrupt(trees) -> None:
    (trees[1] / "deep.jpg").write_bytes(jpeg12())
    write_image(trees[1] / "ok.png", read_photo(0))
    found = by_path(run_trees(*trees))
    assert (found["deep.jpg"].status, found["deep.jpg"].reason) == (
        "unreadable", "unsupported: a 12-bit JPEG, which OpenCV cannot decode")
