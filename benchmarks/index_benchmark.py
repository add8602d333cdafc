"""HammingIndex against the numpy brute force, on a million hashes.

    python benchmarks/index_benchmark.py [--size 1000000] [--queries 5000]

The haystack: random 64-bit hashes, plus clusters of near-identical ones (a photo and its
edits). The queries: half near a haystack hash, half random. For each distance it checks that
the index finds exactly what the brute force finds, and prints both times, the build time and
the index's memory.
"""
from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import hash_and_search as hs

CLUSTER_SHARE = 0.2  # of the haystack: members of clusters of near-identical hashes
CLUSTER_SIZE = 20


def flip_bits(rng: np.random.Generator, values: np.ndarray, most: int) -> np.ndarray:
    """Each value with up to `most` random bits flipped."""
    flipped = values.copy()
    for _ in range(most):
        bits = rng.integers(0, 64, len(values)).astype(np.uint64)
        flipped ^= np.where(rng.random(len(values)) < 0.5, np.uint64(1) << bits, np.uint64(0))
    return flipped


def make_hashes(rng: np.random.Generator, size: int) -> np.ndarray:
    clustered = int(size * CLUSTER_SHARE)
    centres = rng.integers(0, 2**64, clustered // CLUSTER_SIZE, dtype=np.uint64, endpoint=False)
    members = flip_bits(rng, np.repeat(centres, CLUSTER_SIZE), 6)
    hashes = np.concatenate([rng.integers(0, 2**64, size - len(members), dtype=np.uint64, endpoint=False), members])
    rng.shuffle(hashes)
    return hashes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=5000)
    parser.add_argument("--distances", type=int, nargs="+", default=[4, 8])
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    hashes = make_hashes(rng, args.size).tolist()
    near = flip_bits(rng, np.array(rng.choice(hashes, args.queries // 2), dtype=np.uint64), 8)
    far = rng.integers(0, 2**64, args.queries - len(near), dtype=np.uint64, endpoint=False)
    queries = np.concatenate([near, far]).tolist()

    print(f"{args.size:,} hashes ({CLUSTER_SHARE:.0%} in clusters of {CLUSTER_SIZE} near-identical), "
          f"{len(queries):,} queries in one batch\n")
    print("| distance | substrings | build | index search | brute force | speed-up | found | index memory |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for distance in args.distances:
        tracemalloc.start()
        started = time.perf_counter()
        index = hs.HammingIndex(hashes)
        index.search(queries[:1], distance)  # builds the substring tables this distance needs
        build = time.perf_counter() - started
        memory = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
        started = time.perf_counter()
        found = index.search(queries, distance)
        search = time.perf_counter() - started
        started = time.perf_counter()
        expected = hs.brute_force_search(hashes, queries, distance)
        brute = time.perf_counter() - started
        assert found == expected, f"the index and the brute force disagree at distance {distance}"
        substrings = len(next(iter(index._tables.values())))
        print(f"| {distance} | {substrings} | {build:.2f} s | {search:.3f} s | {brute:.1f} s | "
              f"{brute / search:.0f}x | {sum(map(len, found)):,} | {memory:.0f} MiB |")


if __name__ == "__main__":
    main()
