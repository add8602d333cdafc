"""Hashing speed of HEIC, AVIF and camera RAW against JPEG of the same pixel count, in one process.

    python benchmarks/formats_benchmark.py [--photos tests/photos] [--seconds 3] [--threads 1] [--noise 0]

Makes, at run time, 12-megapixel (4032 x 3024) files from the committed photos with the test
suite's makers (tests/media.py): a JPEG (quality 92, as benchmark.py makes), a HEIC (quality 90),
a DNG whose raw data is a Bayer mosaic of the photo with a full-size JPEG preview (what the tool
hashes for a RAW), the same DNG without a preview (LibRaw renders it), and an AVIF. Then, for
each format, reads nothing from disk: decodes the bytes with the tool's decode_image and hashes
the pixels (fingerprint_pixels) again and again for --seconds, interleaved over 3 rounds, and
prints images per second, best round, side by side with JPEG. --threads N runs N decodes at
once on a thread pool, as the tool does (does the decoder let go of the GIL?).
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
import hash_and_search as hs  # noqa: E402
import media  # noqa: E402  the test suite's file makers

CAMERA_SIZE = (4032, 3024)  # 12 MP, a phone's or an older camera's
ROUNDS = 3
PHOTOS_USED = 3  # distinct files per format, so that no decoder works on one buffer only


def camera_photo(path: Path, seed: int, noise: int) -> np.ndarray:
    """A 12 MP photo with uniform noise of +-noise levels. benchmark.py adds 10 for camera-like
    JPEG sizes, but HEVC keeps noise that JPEG drops: at 10, a HEIC q90 is 10 MB, five times a
    phone's; at 0 it is 1.8 MB, a phone's size."""
    rng = np.random.default_rng(seed)
    big = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), CAMERA_SIZE, interpolation=cv2.INTER_CUBIC)
    noisy = big.astype(np.int16) + rng.integers(-noise, noise + 1, big.shape, dtype=np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def images_per_second(work, files: list[bytes], extension: str, seconds: float, threads: int) -> float:
    done, started = 0, time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        while time.perf_counter() - started < seconds:
            list(pool.map(lambda data: work(data, extension), files * threads))
            done += len(files) * threads
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=Path, default=REPO / "tests" / "photos")
    parser.add_argument("--seconds", type=float, default=3.0, help="per format and round (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="decodes at once (default 1)")
    parser.add_argument("--noise", type=int, default=0, help="+- grey levels of noise added (default 0)")
    args = parser.parse_args()

    made_at = time.perf_counter()
    sources = sorted(args.photos.glob("*.jpg"))[:PHOTOS_USED]
    photos = [camera_photo(path, seed, args.noise) for seed, path in enumerate(sources)]
    formats = {  # name: (extension, files)
        "JPEG q92": (".jpg", [media.encode_jpeg(p, 92) for p in photos]),
        "HEIC q90": (".heic", [media.make_heic(p, quality=90) for p in photos]),
        "DNG, full-size JPEG preview": (".dng", [media.make_dng(p, preview=media.encode_jpeg(p, 90)) for p in photos]),
        "DNG, no preview (rendered)": (".dng", [media.make_dng(p) for p in photos]),
        "AVIF q90": (".avif", [media.make_avif(p, quality=90) for p in photos]),
    }
    print(f"made {len(photos)} photos of {CAMERA_SIZE[0]} x {CAMERA_SIZE[1]} in each format in "
          f"{time.perf_counter() - made_at:.0f} s; threads: {args.threads}; noise: +-{args.noise}", flush=True)

    def hash_file(data: bytes, extension: str) -> None:
        hs.fingerprint_pixels(hs.decode_image(data, extension), hs.DEFAULT_HASH_SIZE)

    for extension, files in formats.values():  # warm up: imports, first-call costs
        hash_file(files[0], extension)
    best: dict[str, float] = {}
    for _ in range(ROUNDS):  # interleaved, so that the formats share the machine's moods
        for name, (extension, files) in formats.items():
            rate = images_per_second(hash_file, files, extension, args.seconds, args.threads)
            best[name] = max(best.get(name, 0.0), rate)
    jpeg_rate = best["JPEG q92"]
    print(f"{'format':30} {'MB/file':>8} {'images/s':>9} {'ms/image':>9} {'vs JPEG':>8}")
    for name, (_, files) in formats.items():
        size = sum(map(len, files)) / len(files) / 1e6
        print(f"{name:30} {size:8.1f} {best[name]:9.2f} {1000 / best[name]:9.1f} {best[name] / jpeg_rate:8.2f}")


if __name__ == "__main__":
    main()
