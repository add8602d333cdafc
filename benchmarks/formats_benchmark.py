"""Hashing speed of HEIC and camera RAW against JPEG of the same pixel count, in one process.

    python benchmarks/formats_benchmark.py [--photos tests/photos] [--seconds 3] [--threads 1]
                                           [--noise 0] [--decoders PATH]

Makes, at run time, 12-megapixel (4032 x 3024) files from the committed photos: a JPEG (quality
92, as benchmark.py makes), a HEIC (pillow-heif, quality 90), a DNG whose raw data is a Bayer
mosaic of the photo with a full-size JPEG preview (what the tool hashes for a RAW), the same DNG
without a preview (LibRaw renders it), and an AVIF. Then, for each format, reads nothing from
disk: decodes the bytes and hashes the pixels (fingerprint_pixels) again and again for --seconds,
interleaved over 3 rounds, and prints images per second, best round, side by side with JPEG.
--threads N runs N decodes at once on a thread pool, as the tool does (does the decoder let go
of the GIL?). It also times header-only dimension reading, per file, when the decoders have it.

The decoders are the script's own (decode_image(data, extension)); --decoders PATH takes them
from another module instead (a prototype with decode_any(data, extension), image_dimensions).
"""
from __future__ import annotations

import argparse
import importlib.util
import io
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import hash_and_search as hs  # noqa: E402

CAMERA_SIZE = (4032, 3024)  # 12 MP, a phone's or an older camera's
ROUNDS = 3
PHOTOS_USED = 3  # distinct files per format, so that no decoder works on one buffer only
RAW_WHITE_LEVEL = 4095


def camera_photo(path: Path, seed: int, noise: int) -> np.ndarray:
    """A 12 MP photo with uniform noise of +-noise levels. benchmark.py adds 10 for camera-like
    JPEG sizes, but HEVC keeps noise that JPEG drops: at 10, a HEIC q90 is 10 MB, five times a
    phone's; at 0 it is 1.8 MB, a phone's size."""
    rng = np.random.default_rng(seed)
    big = cv2.resize(cv2.imread(str(path), cv2.IMREAD_COLOR), CAMERA_SIZE, interpolation=cv2.INTER_CUBIC)
    noisy = big.astype(np.int16) + rng.integers(-noise, noise + 1, big.shape, dtype=np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray, quality: int = 92) -> bytes:
    return cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


def encode_heic(pixels: np.ndarray) -> bytes:
    import pillow_heif

    buffer = io.BytesIO()
    pillow_heif.from_bytes("BGR", (pixels.shape[1], pixels.shape[0]), pixels.tobytes()).save(
        buffer, format="HEIF", quality=90)
    return buffer.getvalue()


def encode_avif(pixels: np.ndarray) -> bytes:
    return cv2.imencode(".avif", pixels, [cv2.IMWRITE_AVIF_QUALITY, 90])[1].tobytes()


def encode_dng(pixels: np.ndarray, preview: bytes | None) -> bytes:
    """An RGGB mosaic of the photo (sRGB decoded to linear light), 12-bit, uncompressed, and a
    JPEG preview in a second IFD when given (pidng cannot write one itself)."""
    import struct

    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CFAPattern, CalibrationIlluminant, DNGVersion, PhotometricInterpretation

    height, width = pixels.shape[:2]
    rgb = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    mosaic = np.empty((height, width), np.float32)
    mosaic[0::2, 0::2], mosaic[0::2, 1::2] = linear[0::2, 0::2, 0], linear[0::2, 1::2, 1]
    mosaic[1::2, 0::2], mosaic[1::2, 1::2] = linear[1::2, 0::2, 1], linear[1::2, 1::2, 2]
    xyz_to_srgb = (3.2404542, -1.5371385, -0.4985314, -0.9692660, 1.8760108, 0.0415560,
                   0.0556434, -0.2040259, 1.0572252)
    tags = DNGTags()
    for tag, value in (
        (Tag.ImageWidth, width), (Tag.ImageLength, height), (Tag.TileWidth, width), (Tag.TileLength, height),
        (Tag.Orientation, 1), (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 16), (Tag.CFARepeatPatternDim, [2, 2]),
        (Tag.CFAPattern, CFAPattern.RGGB), (Tag.BlackLevel, 0), (Tag.WhiteLevel, RAW_WHITE_LEVEL),
        (Tag.ColorMatrix1, [[Fraction(v).limit_denominator(10000).numerator,
                             Fraction(v).limit_denominator(10000).denominator] for v in xyz_to_srgb]),
        (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65), (Tag.AsShotNeutral, [[1, 1], [1, 1], [1, 1]]),
        (Tag.Make, "hash_and_search"), (Tag.Model, "benchmark"), (Tag.DNGVersion, DNGVersion.V1_4),
    ):
        tags.set(tag, value)
    converter = RAW2DNG()
    converter.options(tags, path="", compress=False)
    dng = bytes(converter.convert(np.rint(mosaic * RAW_WHITE_LEVEL).astype(np.uint16)))
    if preview is None:
        return dng
    # A second IFD: NewSubfileType 1 (a preview), JPEG-compressed, YCbCr, 3 x 8 bits.
    first_ifd = struct.unpack_from("<I", dng, 4)[0]
    next_pointer = first_ifd + 2 + 12 * struct.unpack_from("<H", dng, first_ifd)[0]
    jpeg_at = (len(dng) + 3) & ~3
    ifd_at = (jpeg_at + len(preview) + 3) & ~3
    fields = [(254, 4, 1, 1), (256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, ifd_at + 2 + 12 * 9 + 4),
              (259, 3, 1, 7), (262, 3, 1, 6), (273, 4, 1, jpeg_at), (277, 3, 1, 3), (279, 4, 1, len(preview))]
    ifd = struct.pack("<H", len(fields)) + b"".join(
        struct.pack("<HHI", tag, kind, count)
        + (struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value))
        for tag, kind, count, value in fields) + struct.pack("<I", 0) + struct.pack("<3H", 8, 8, 8)
    body = bytearray(dng)
    struct.pack_into("<I", body, next_pointer, ifd_at)
    body += b"\0" * (jpeg_at - len(body)) + preview
    body += b"\0" * (ifd_at - len(body)) + ifd
    return bytes(body)


def load_decoders(path: str | None):
    """(decode(data, extension), dimensions(data, extension) or None) from the script or a module."""
    if path is None:
        return (lambda data, extension: hs.decode_image(data, extension)), getattr(hs, "image_dimensions", None)
    spec = importlib.util.spec_from_file_location("decoders", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.decode_any, getattr(module, "image_dimensions", None)


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
    parser.add_argument("--decoders", help="a module with decode_any(data, extension) to measure instead")
    args = parser.parse_args()
    decode, dimensions = load_decoders(args.decoders)

    made_at = time.perf_counter()
    sources = sorted(args.photos.glob("*.jpg"))[:PHOTOS_USED]
    photos = [camera_photo(path, seed, args.noise) for seed, path in enumerate(sources)]
    formats = {  # name: (extension, files)
        "JPEG q92": (".jpg", [encode_jpeg(p) for p in photos]),
        "HEIC q90": (".heic", [encode_heic(p) for p in photos]),
        "DNG, full-size JPEG preview": (".dng", [encode_dng(p, encode_jpeg(p, 90)) for p in photos]),
        "DNG, no preview (rendered)": (".dng", [encode_dng(p, None) for p in photos]),
        "AVIF q90": (".avif", [encode_avif(p) for p in photos]),
    }
    print(f"made {len(photos)} photos of {CAMERA_SIZE[0]} x {CAMERA_SIZE[1]} in each format in "
          f"{time.perf_counter() - made_at:.0f} s; decoders: {args.decoders or 'hash_and_search.py'}; "
          f"threads: {args.threads}; noise: +-{args.noise}", flush=True)

    def hash_file(data: bytes, extension: str) -> None:
        hs.fingerprint_pixels(decode(data, extension), hs.DEFAULT_HASH_SIZE)

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

    if dimensions is not None:
        print(f"\n{'header-only dimensions':30} {'ms/file':>8}  (width, height)")
        for name, (extension, files) in formats.items():
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < 0.5:
                size = dimensions(files[count % len(files)], extension)
                count += 1
            print(f"{name:30} {1000 * (time.perf_counter() - started) / count:8.3f}  {size}")


if __name__ == "__main__":
    main()
