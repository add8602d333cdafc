"""Speed of hash_and_search on camera-size photos, against the decode floor and the article's pipeline.

    python benchmarks/benchmark.py [--photos tests/photos] [--count 600] [--workdir /tmp/hs-bench]

Makes distinct 4032 x 3024 JPEGs (quality 92) from the photos by upscaling, cropping and adding
noise, then measures, in one run so that the ratios share the machine's load, each as a
program of its own (start-up included), best of 3 interleaved runs:
- floor: read and decode every file at full resolution in colour, on --jobs threads, nothing else;
- reference: the original article's pipeline, one process: imread, grey, bilinear resize to 9x8;
- the tool, cold (empty cache) and warm (nothing changed), as a user runs it, start-up included,
  on 150 photos and on --count photos, with each run's peak memory (RSS);
- needles that are byte copies of cached haystack photos, against decoding the same files.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "hash_and_search.py"
CAMERA_SIZE = (4032, 3024)
SMALL_SET = 150
REPEATS = 3


def make_camera_photos(photos: list[Path], folder: Path, count: int) -> list[Path]:
    """Distinct camera-size JPEGs in nested folders (made once, kept in the work folder)."""
    def make(i: int) -> Path:
        target = folder / f"{2010 + i // 100}" / f"{i // 25 % 4 + 1:02d}" / f"IMG_{i:04d}.jpg"
        if target.exists():
            return target
        rng = np.random.default_rng(i)
        source = cv2.imread(str(photos[i % len(photos)]), cv2.IMREAD_COLOR)
        h, w = source.shape[:2]
        crop = rng.uniform(0.8, 1.0)
        y, x = int(rng.uniform(0, 1 - crop) * h), int(rng.uniform(0, 1 - crop) * w)
        cropped = source[y:y + int(h * crop), x:x + int(w * crop)]
        big = cv2.resize(cropped, CAMERA_SIZE, interpolation=cv2.INTER_CUBIC).astype(np.int16)
        big += rng.integers(-10, 11, big.shape, dtype=np.int16)  # sensor-like noise: camera-like file sizes
        target.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(target), np.clip(big, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 92])
        return target

    with ThreadPoolExecutor() as pool:
        return list(pool.map(make, range(count)))


def link_subset(files: list[Path], source_root: Path, folder: Path) -> None:
    """The first files again, as hard links: the same bytes under other paths."""
    for path in files:
        target = folder / path.relative_to(source_root)
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(path, target)


# The floor and the article's pipeline run as programs of their own, like the tool, so that
# every measured run pays the same start-up. Each takes its file list on standard input.
DECODE_FLOOR = """
import sys, cv2, numpy as np
from concurrent.futures import ThreadPoolExecutor
def decode(path):
    cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
with ThreadPoolExecutor(int(sys.argv[1])) as pool:
    list(pool.map(decode, sys.stdin.read().splitlines()))
print("{}")
"""
ARTICLE_PIPELINE = """
import sys, cv2
for path in sys.stdin.read().splitlines():
    grey = cv2.cvtColor(cv2.imread(path), cv2.COLOR_BGR2GRAY)
    small = cv2.resize(grey, (9, 8))  # bilinear, the default
    sum(2**i for i, v in enumerate((small[:, 1:] > small[:, :-1]).flatten()) if v)
print("{}")
"""

# Starts a program from a small process and reports its wall time and peak RSS: a child
# forked from this (large) process would carry this process's peak RSS as its own.
MEASURE = """
import json, resource, subprocess, sys, time
files = sys.stdin.read()
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], input=files, stdout=subprocess.PIPE, text=True)
seconds = time.perf_counter() - started
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(json.dumps({"seconds": seconds, "rss": rss, "code": done.returncode, "output": json.loads(done.stdout)}))
"""


def run_program(command: list[str], files: list[Path] = ()) -> tuple[float, float, dict]:
    """Wall time, peak RSS in MiB and the JSON output of one run of a program."""
    measured = json.loads(subprocess.run([sys.executable, "-c", MEASURE, *command], stdout=subprocess.PIPE,
                                         input="\n".join(map(str, files)), text=True, check=True).stdout)
    assert measured["code"] in (0, 1), command
    return measured["seconds"], measured["rss"], measured["output"]


def decode_floor(files: list[Path], jobs: int) -> tuple[float, float, dict]:
    return run_program([sys.executable, "-c", DECODE_FLOOR, str(jobs)], files)


def article_pipeline(files: list[Path]) -> tuple[float, float, dict]:
    return run_program([sys.executable, "-c", ARTICLE_PIPELINE], files)


def run_tool(haystack: Path, needles: Path, cache: Path, jobs: int) -> tuple[float, float, dict]:
    """One run of the tool as a user runs it."""
    return run_program([sys.executable, str(SCRIPT), "-a", str(haystack), "-n", str(needles), "--cache", str(cache),
                        "--jobs", str(jobs), "--json", "--quiet"])


def per_image_costs(path: Path) -> dict[str, float]:
    """Milliseconds for each step on one photo, one thread, best of 5."""
    sys.path.insert(0, str(REPO))
    import hashlib

    import hash_and_search as hs

    data = path.read_bytes()
    pixels = hs.decode_image(data)
    grey = hs.to_grey(pixels)
    side = hs.DEFAULT_HASH_SIZE * (hs.DEFAULT_HASH_SIZE + 1)
    steps = {
        "read": lambda: path.read_bytes(),
        "sha256": lambda: hashlib.sha256(data).digest(),
        "decode": lambda: hs.decode_image(data),
        "grey": lambda: hs.to_grey(pixels),
        f"exact {side}x{side} thumbnail": lambda: hs.area_sums(grey, side, side),
        "all after decode (grey, thumbnail, 8 hashes, signature)": lambda: hs.fingerprint_pixels(pixels, 8),
        "for comparison: cv2 INTER_AREA to 9x8": lambda: cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA),
    }
    costs = {}
    for name, step in steps.items():
        times = []
        for _ in range(5):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        costs[name] = min(times) * 1000
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=REPO / "tests" / "photos")
    parser.add_argument("--count", type=int, default=600)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/hash-and-search-bench"))
    parser.add_argument("--jobs", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    work = args.workdir
    photos = sorted(args.photos.glob("*.jpg"))
    print(f"making {args.count} camera photos from {len(photos)} photos in {work} ...", flush=True)
    big = make_camera_photos(photos, work / "library", args.count)
    small = big[:SMALL_SET]
    link_subset(small, work / "library", work / "library-150")
    empty = work / "empty"
    empty.mkdir(exist_ok=True)
    sizes = [p.stat().st_size / 1e6 for p in big]
    print(f"{len(big)} files, {min(sizes):.1f} to {max(sizes):.1f} MB, {sum(sizes) / len(sizes):.1f} MB on average")
    for cache in work.glob("*.sqlite3*"):
        cache.unlink()
    shutil.rmtree(work / "copies", ignore_errors=True)

    costs = per_image_costs(small[0])
    print("\nper image, one thread (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in costs.items()))

    n = len(small)
    # Best of REPEATS, interleaved: the machine is shared, and the best is the least disturbed.
    floors, references, colds, warms = [], [], [], []
    for _ in range(REPEATS):
        floors.append(decode_floor(small, args.jobs)[:2])
        references.append(article_pipeline(small)[:2])
        (work / "c150.sqlite3").unlink(missing_ok=True)
        colds.append(run_tool(work / "library-150", empty, work / "c150.sqlite3", args.jobs))
        warms.append(run_tool(work / "library-150", empty, work / "c150.sqlite3", args.jobs))
        assert warms[-1][2]["trees"]["haystack"]["decoded"] == 0
    (floor, floor_rss), (reference, reference_rss) = min(floors), min(references)
    cold, cold_rss, cold_doc = min(colds, key=lambda measured: measured[0])
    warm, warm_rss, _ = min(warms, key=lambda measured: measured[0])
    # Byte copies of the (now cached) 150 as needles: recognised by content, not decoded.
    link_free = work / "copies"
    for path in small:
        target = link_free / path.relative_to(work / "library")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    _, _, copies_doc = run_tool(work / "library-150", link_free, work / "c150.sqlite3", args.jobs)
    copies = copies_doc["trees"]["needles"]
    assert copies["byte_identical"] == n, copies
    cold_big, cold_big_rss, _ = run_tool(work / "library", empty, work / "cbig.sqlite3", args.jobs)
    warm_big, warm_big_rss, _ = min((run_tool(work / "library", empty, work / "cbig.sqlite3", args.jobs)
                                     for _ in range(REPEATS)), key=lambda measured: measured[0])

    rows = [
        ("decode floor (read + colour decode only)", n, floor, floor_rss),
        ("article pipeline, 1 process (imread, grey, bilinear 9x8)", n, reference, reference_rss),
        ("hash_and_search, cold (empty cache)", n, cold, cold_rss),
        ("hash_and_search, warm (nothing changed)", n, warm, warm_rss),
        ("hash_and_search, cold (empty cache)", len(big), cold_big, cold_big_rss),
        ("hash_and_search, warm (nothing changed)", len(big), warm_big, warm_big_rss),
    ]
    print(f"\n{args.jobs} jobs; every run is a whole process, start-up included; best of {REPEATS} "
          f"(the {len(big)}-photo cold run: once)\n")
    print("| run | images | seconds | images/s | peak RSS |")
    print("|---|---:|---:|---:|---:|")
    for name, images, seconds, rss in rows:
        memory = "" if rss is None else f"{rss:.0f} MiB"
        print(f"| {name} | {images} | {seconds:.2f} | {images / seconds:.1f} | {memory} |")
    print()
    print(f"cold run / decode floor throughput: {floor / cold:.0%} (target >= 85%)")
    print(f"cold run / article pipeline throughput: {reference / cold:.2f}x (target >= 1.6x)")
    print(f"warm run speed-up, {n} photos: {cold / warm:.0f}x (target >= 15x)")
    print(f"warm run speed-up, {len(big)} photos: {cold_big / warm_big:.0f}x (target >= 50x)")
    decoding = cold_doc["trees"]["haystack"]["seconds"]
    print(f"byte-copy needles: {copies['seconds']:.2f} s for {n}, against {decoding:.2f} s to decode the same files "
          f"in the cold run: {decoding / copies['seconds']:.0f}x faster (target >= 10x)")
    print(f"peak RSS of a cold run: {cold_rss:.0f} MiB for {n} photos, {cold_big_rss:.0f} MiB for {len(big)}")


if __name__ == "__main__":
    main()
