"""Thumbnails and the fine detail: copies shrunk to a small side, and other content at that size.

    python benchmarks/thumbnail_benchmark.py [--photos DIR] [--sides 40 48 ... 144]

The scenes are hard_calibration.py's graphics (each photo as a meme template, and a settings
screen, a slide and a page over it; seeds as its --graphics 1) and the photos' own shots. Each
is shrunk (area averaging, JPEG 90) until its shorter side has the given number of pixels and
confirmed against the original. So is the same template with other content (another caption,
other rows, another page), shrunk alike, when it is within distance 16. Both are confirmed as
hash_and_search does, and again without the fine-detail test (DETAIL_MAX_BLOCKS unlimited), so
that the report says what the test costs and what it still catches at each size.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import hard_calibration as hc
from hard_calibration import hs


def shrink(pixels: np.ndarray, side: int) -> np.ndarray:
    return hc.jpeg(hc.resize(pixels, side / min(pixels.shape[:2])), 90)


def confirmed(pairs: list[tuple[hc.Print, hc.Print]], detail_test: bool) -> np.ndarray:
    if not pairs:
        return np.zeros(0, bool)
    keep = hs.DETAIL_MAX_BLOCKS
    hs.DETAIL_MAX_BLOCKS = keep if detail_test else (hs.DETAIL_SIDE // hs.DETAIL_BLOCK) ** 2  # every block
    try:
        ok, _ = hs.confirm_many([n.signature for n, _ in pairs], [h.signature for _, h in pairs], [0] * len(pairs))
    finally:
        hs.DETAIL_MAX_BLOCKS = keep
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=hc.REPO / "tests" / "photos")
    parser.add_argument("--sides", type=int, nargs="+", default=[40, 48, 56, 64, 72, 80, 88, 96, 112, 144])
    args = parser.parse_args()
    photos = [hs.decode_image(path.read_bytes()) for path in sorted(args.photos.glob("*.jpg"))]
    scenes = [("photo", hc.shot(photo), None) for photo in photos]
    scenes += [(s.kind, s.frame, s.other) for s in hc.graphic_scenes("A", photos, 1)]
    originals = [hc.fingerprint(frame) for _, frame, _ in scenes]
    print(f"{len(scenes)} scenes from {len(photos)} photos in {args.photos}\n")
    print("| shorter side | copies confirmed | lost to the detail test | other content within 16 | "
          "accepted | accepted without the detail test |")
    print("|---:|---:|---|---:|---:|---:|")
    for side in args.sides:
        copies = [(hc.fingerprint(shrink(frame, side)), original) for (_, frame, _), original in zip(scenes, originals)]
        ok, ok_without = confirmed(copies, True), confirmed(copies, False)
        lost = Counter(kind for (kind, _, _), a, b in zip(scenes, ok, ok_without) if b and not a)
        others = [(hc.fingerprint(shrink(hc.jpeg(other()), side)), original)
                  for (_, _, other), original in zip(scenes, originals) if other is not None]
        near = [(n, h) for n, h in others if hc.key_distance(n, h, 0) <= 16]
        print(f"| {side} px | {int(ok.sum())} of {len(ok)} | {', '.join(f'{k} {v}' for k, v in sorted(lost.items())) or '-'} "
              f"| {len(near)} of {len(others)} | {int(confirmed(near, True).sum())} | {int(confirmed(near, False).sum())} |",
              flush=True)


if __name__ == "__main__":
    main()
