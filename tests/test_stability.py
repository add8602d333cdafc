"""Copies of the same photo get the same hash: re-encoded, resized, converted, rotated by EXIF."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

import hash_and_search as hs
from conftest import PHOTOS


def file_hash(data: bytes) -> int:
    return hs.fingerprint_pixels(hs.decode_image(data), hs.DEFAULT_HASH_SIZE).hash


def encode(pixels: np.ndarray, extension: str, *params: int) -> bytes:
    ok, encoded = cv2.imencode(extension, pixels, list(params))
    assert ok
    return encoded.tobytes()


def originals() -> list[tuple[bytes, np.ndarray]]:
    return [(path.read_bytes(), cv2.imread(str(path), cv2.IMREAD_COLOR)) for path in PHOTOS]


@pytest.mark.parametrize("extension", [".png", ".tif", ".bmp", ".ppm"])
def test_same_pixels_in_a_lossless_container_hash_alike(extension: str) -> None:
    for data, pixels in originals():
        assert file_hash(encode(pixels, extension)) == file_hash(data)


def test_jpeg_and_png_of_the_same_pixels_hash_alike_despite_stored_luma() -> None:
    # The JPEG decoder's own greyscale output is the stored luma, which differs slightly from
    # the grey of the decoded colours; on these colourful images it flips bits now and then.
    for seed in range(300):
        cells = np.random.default_rng(seed).integers(0, 256, (8, 9, 3)).astype(np.uint8)
        jpeg = encode(cv2.resize(cells, (90, 80), interpolation=cv2.INTER_NEAREST), ".jpg",
                      cv2.IMWRITE_JPEG_QUALITY, 90)
        decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert file_hash(jpeg) == file_hash(encode(decoded, ".png")), f"seed {seed}"


def match_rate(transform) -> float:
    pairs = originals()
    return sum(file_hash(transform(pixels)) == file_hash(data) for data, pixels in pairs) / len(pairs)


def test_most_jpeg_reencodes_keep_the_exact_hash() -> None:
    assert match_rate(lambda p: encode(p, ".jpg", cv2.IMWRITE_JPEG_QUALITY, 70)) >= 0.75


def test_most_half_size_copies_keep_the_exact_hash() -> None:
    assert match_rate(lambda p: encode(cv2.resize(p, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA),
                                       ".jpg", cv2.IMWRITE_JPEG_QUALITY, 90)) >= 0.75


def test_most_slightly_blurred_copies_keep_the_exact_hash() -> None:
    assert match_rate(lambda p: encode(cv2.GaussianBlur(p, (5, 5), 0), ".png")) >= 0.75


def test_exif_orientation_is_applied_before_hashing(tmp_path) -> None:
    upright = Image.open(PHOTOS[0])
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # stored turned left
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sideways.save(tmp_path / "tagged.jpg", quality=95, exif=exif.tobytes())
    sideways.save(tmp_path / "untagged.jpg", quality=95)
    upright.save(tmp_path / "upright.jpg", quality=95)
    upright_hash = file_hash((tmp_path / "upright.jpg").read_bytes())
    assert file_hash((tmp_path / "tagged.jpg").read_bytes()) == upright_hash
    assert file_hash((tmp_path / "untagged.jpg").read_bytes()) != upright_hash
