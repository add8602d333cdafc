"""Calibrate --distance and the confirmation step on copies that must match and near-misses that must not.

    python benchmarks/calibrate.py [--photos tests/photos] > calibration.md

From each photo it makes copies a library may hold (re-encoded, resized, converted, edited)
and near-misses that are not the same picture: overlapping crops of the photo shifted by 5 to
25% (like burst shots taken as the camera moved) and every other photo. Each pair is hashed by
hash_and_search itself. It prints, for --distance 0 to 16, the share of copies matched and the
near-misses accepted, without and with the confirmation of the signatures, and the
similarities that set CONFIRM_MIN_SIMILARITY.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageEnhance

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import hash_and_search as hs  # noqa: E402

DISTANCES = range(17)
CROP = 0.75  # side of each overlapping crop, as a share of the photo's


def decoded(pixels: np.ndarray, extension: str, *params: int) -> np.ndarray:
    return hs.decode_image(cv2.imencode(extension, pixels, list(params))[1].tobytes())


def via_pillow(pixels: np.ndarray, edit: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    image = Image.fromarray(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB))
    return cv2.cvtColor(np.asarray(edit(image).convert("RGB")), cv2.COLOR_RGB2BGR)


def tone(pixels: np.ndarray, curve: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    return cv2.LUT(pixels, np.clip(curve(np.arange(256.0)), 0, 255).astype(np.uint8))


def watermark(pixels: np.ndarray) -> np.ndarray:
    marked, (h, w) = pixels.copy(), pixels.shape[:2]
    cv2.putText(marked, "(c) 2019", (int(w * 0.62), int(h * 0.93)), cv2.FONT_HERSHEY_SIMPLEX, w / 900,
                (255, 255, 255), max(1, w // 400))
    return marked


def resized(scale: float) -> Callable[[np.ndarray], np.ndarray]:
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return lambda p: decoded(cv2.resize(p, None, fx=scale, fy=scale, interpolation=interpolation), ".jpg",
                             cv2.IMWRITE_JPEG_QUALITY, 90)


COPIES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "JPEG quality 90": lambda p: decoded(p, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90),
    "JPEG quality 70": lambda p: decoded(p, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 70),
    "JPEG quality 50": lambda p: decoded(p, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 50),
    "resized 25%": resized(0.25),
    "resized 50%": resized(0.5),
    "resized 200%": resized(2.0),
    "PNG": lambda p: decoded(p, ".png"),
    "WEBP quality 75": lambda p: decoded(p, ".webp", cv2.IMWRITE_WEBP_QUALITY, 75),
    "palette (256 colours)": lambda p: via_pillow(p, lambda i: i.convert("P", palette=Image.Palette.ADAPTIVE)),
    "brightness +20": lambda p: tone(p, lambda v: v + 20),
    "brightness -20": lambda p: tone(p, lambda v: v - 20),
    "contrast x1.3": lambda p: via_pillow(p, lambda i: ImageEnhance.Contrast(i).enhance(1.3)),
    "contrast x0.7": lambda p: via_pillow(p, lambda i: ImageEnhance.Contrast(i).enhance(0.7)),
    "gamma 0.7": lambda p: tone(p, lambda v: 255 * (v / 255) ** 0.7),
    "gamma 1.4": lambda p: tone(p, lambda v: 255 * (v / 255) ** 1.4),
    "blur (Gaussian, sigma 2)": lambda p: cv2.GaussianBlur(p, (0, 0), 2),
    "small watermark": watermark,
    "greyscale": lambda p: cv2.cvtColor(cv2.cvtColor(p, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR),
}
TURNED = {
    "turned 90°": lambda p: np.ascontiguousarray(np.rot90(p)),
    "mirrored": lambda p: np.ascontiguousarray(p[:, ::-1]),
}
SHIFTS = (0.05, 0.10, 0.15, 0.25)


@dataclass
class Pair:
    """Two images' hash distance and signature similarity in each needle orientation."""

    distances: list[int]
    similarities: list[float]

    def accepted(self, distance: int, confirm: bool, orientations: int = 1) -> bool:
        return any(d <= distance and (d == 0 or not confirm or s >= hs.CONFIRM_MIN_SIMILARITY)
                   for d, s in zip(self.distances[:orientations], self.similarities[:orientations]))


def compare(haystack: hs.Fingerprint, needle: hs.Fingerprint) -> Pair:
    return Pair([bin(h ^ haystack.hash).count("1") for h in needle.hashes],
                [hs.signature_similarity(needle.signature, haystack.signature, k)
                 for k in range(len(hs.ORIENTATIONS))])


def fingerprint(pixels: np.ndarray) -> hs.Fingerprint:
    return hs.fingerprint_pixels(pixels, hs.DEFAULT_HASH_SIZE)


def crops(pixels: np.ndarray, shift: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = pixels.shape[:2]
    ch, cw, dy, dx = int(h * CROP), int(w * CROP), int(h * shift), int(w * shift)
    return pixels[:ch, :cw], pixels[dy:dy + ch, dx:dx + cw]


def row(name: str, pairs: list[Pair], confirm: bool, must_match: bool) -> str:
    cells = []
    for distance in DISTANCES:
        accepted = sum(pair.accepted(distance, confirm) for pair in pairs)
        cells.append(f"{accepted / len(pairs):.0%}" if must_match else str(accepted))
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=REPO / "tests" / "photos")
    args = parser.parse_args()
    paths = sorted(args.photos.glob("*.jpg"))
    originals = [hs.decode_image(path.read_bytes()) for path in paths]
    prints = [fingerprint(pixels) for pixels in originals]
    copies = {name: [compare(fp, fingerprint(make(p))) for p, fp in zip(originals, prints)]
              for name, make in {**COPIES, **TURNED}.items()}
    near = {f"crop shifted {shift:.0%}": [compare(*map(fingerprint, crops(p, shift))) for p in originals]
            for shift in SHIFTS}
    near["other photos"] = [compare(prints[a], prints[b]) for a, b in itertools.permutations(range(len(paths)), 2)]

    header = "| --distance | " + " | ".join(map(str, DISTANCES)) + " |\n|---|" + "---:|" * len(DISTANCES)
    print(f"{len(paths)} photos from {args.photos}; {hs.DEFAULT_HASH_SIZE ** 2}-bit hashes; "
          f"confirmation: gradient correlation of {hs.SIGNATURE_SIZE}x{hs.SIGNATURE_SIZE} signatures "
          f">= {hs.CONFIRM_MIN_SIMILARITY}\n")
    for confirm in (False, True):
        print(f"Copies matched (share), {'with' if confirm else 'without'} confirmation:\n\n{header}")
        for name in COPIES:
            print(row(name, copies[name], confirm, must_match=True))
        print(f"\nNear-misses accepted (count of {len(paths)} each; other photos: "
              f"{len(near['other photos'])} pairs), {'with' if confirm else 'without'} confirmation:\n\n{header}")
        for name, pairs in near.items():
            print(row(name, pairs, confirm, must_match=False))
        print()

    # A turned copy is compared in the orientation that undoes the turn: its best one.
    confirmed = [min(max(p.similarities) if name in TURNED else p.similarities[0] for p in pairs)
                 for name, pairs in copies.items()]
    print("Signature similarity of copies, lowest per transform: "
          + ", ".join(f"{name} {low:.3f}" for name, low in zip(copies, confirmed)))
    near_within = [p.similarities[k] for pairs in near.values() for p in pairs
                   for k in range(len(hs.ORIENTATIONS)) if 0 < p.distances[k] <= max(DISTANCES)]
    print(f"Highest similarity of a near-miss within {max(DISTANCES)} bits, any orientation: "
          f"{max(near_within):.3f} (of {len(near_within)})")
    recommended = hs.RECOMMENDED_DISTANCE
    print(f"\nAt --distance {recommended}, with confirmation:")
    for name, pairs in copies.items():
        orientations = len(hs.ORIENTATIONS) if name in TURNED else 1
        matched = sum(p.accepted(recommended, True, orientations) for p in pairs)
        print(f"- {name}{' (with --rotations)' if name in TURNED else ''}: {matched} of {len(pairs)} matched")
    for name, pairs in near.items():
        print(f"- {name}: {sum(p.accepted(recommended, True, len(hs.ORIENTATIONS)) for p in pairs)} accepted"
              f" even with --rotations")


if __name__ == "__main__":
    main()
