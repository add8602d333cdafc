"""Matching speed: a haystack of 20,000 images and 2,000 needles, the index and confirmation only.

    python benchmarks/match_benchmark.py [--haystack 20000] [--needles 2000] [--distances 0 8 16] [--repeat 1]

The fingerprints are made once, before timing, from distinct synthetic scenes (smooth noise of
random scale and colour, some with a few hard edges), so that hashes spread as a library's do;
half the needles are JPEG re-encodes of haystack images (copies to find), half are new scenes.
It then times find_matches, hash_and_search's own index search plus confirmation, in this one
process, and prints the candidate pairs and matches found at each distance; with --repeat N, the
median of N timings (and each), as this shared machine's speed drifts from one second to the next.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import hash_and_search as hs  # noqa: E402


def scene(rng: np.random.Generator) -> np.ndarray:
    """A 96 x 72 picture: smooth noise at a random scale in random colours, maybe with edges."""
    size = int(rng.integers(2, 12))
    field = cv2.resize(rng.normal(0, 1, (size, size + 1, 3)), (96, 72), interpolation=cv2.INTER_CUBIC)
    picture = 128 + field * rng.uniform(20, 60) + rng.normal(0, 3, (72, 96, 3))
    for _ in range(int(rng.integers(0, 4))):
        x, y = int(rng.integers(0, 80)), int(rng.integers(0, 60))
        picture[y:y + int(rng.integers(5, 30)), x:x + int(rng.integers(5, 30))] = rng.uniform(0, 255, 3)
    return np.clip(picture, 0, 255).astype(np.uint8)


def tree(name: str, fingerprints: list[hs.Fingerprint]) -> hs.Tree:
    files = tuple(hs.FoundFile(f"{name}/{i}.jpg", f"{i}.jpg", hs.Kind.PHOTO, 1, 0, (hash(name), i))
                  for i in range(len(fingerprints)))
    return hs.Tree(name, hs.Scan(files, (), ()), tuple(fingerprints), Counter(), 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--haystack", type=int, default=20_000)
    parser.add_argument("--needles", type=int, default=2_000)
    parser.add_argument("--distances", type=int, nargs="+", default=[0, 8, 16])
    parser.add_argument("--repeat", type=int, default=1, help="time each distance this many times")
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    pictures = [scene(rng) for _ in range(args.haystack)]
    haystack = tree("haystack", [hs.fingerprint_pixels(p, 8) for p in pictures])
    copies = [hs.decode_image(cv2.imencode(".jpg", pictures[i], [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
              for i in rng.choice(args.haystack, args.needles // 2, replace=False)]
    news = [scene(rng) for _ in range(args.needles - len(copies))]
    needles = tree("needles", [hs.fingerprint_pixels(p, 8) for p in copies + news])
    print(f"{args.haystack:,} haystack x {args.needles:,} needles ({len(copies):,} re-encoded copies)")
    for distance in args.distances:
        settings = hs.Settings(distance=distance)
        started = time.perf_counter()
        candidates = hs.find_candidates(haystack, needles, settings)
        searched = time.perf_counter()
        timings = []
        for _ in range(args.repeat):
            began = time.perf_counter()
            matches, similar = hs.find_matches(haystack, needles, settings)
            timings.append(time.perf_counter() - began)
        pairs = sum(min(len(found), hs.MAX_CANDIDATES_CONFIRMED) for found in candidates.values())
        each = f" (median of {', '.join(f'{t:.2f}' for t in timings)})" if args.repeat > 1 else ""
        print(f"--distance {distance:2}: {statistics.median(timings):.2f} s{each} for index, search and confirmation "
              f"({searched - started:.2f} s for the search alone); {pairs:,} candidate pairs; "
              f"copies matched {sum(n < len(copies) for n in matches):,} of {len(copies):,}, "
              f"new scenes matched {sum(n >= len(copies) for n in matches):,}, similar {len(similar):,}")


if __name__ == "__main__":
    main()
