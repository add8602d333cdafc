"""The hash itself: exact bit patterns on small arrays, the area shrink, low-detail detection."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import hash_and_search as hs
from conftest import PHOTOS, read_photo


def area_average(grey: np.ndarray, width: int, height: int) -> np.ndarray:
    return hs.area_sums(grey, width, height) / grey.size


def hash_of_grey(grey: np.ndarray, hash_size: int = 8) -> int:
    return hs.dhash(hs.area_sums(grey, hash_size + 1, hash_size))


def test_brighter_to_the_right_sets_every_bit() -> None:
    ramp = np.tile(np.arange(9, dtype=np.uint8) * 20, (8, 1))
    assert hash_of_grey(ramp) == 2**64 - 1
    assert hs.format_hash(hash_of_grey(ramp), 8) == "ffffffffffffffff"


def test_darker_to_the_right_sets_no_bit() -> None:
    ramp = np.tile(np.arange(9, 0, -1, dtype=np.uint8) * 20, (8, 1))
    assert hash_of_grey(ramp) == 0
    assert hs.format_hash(0, 8) == "0000000000000000"


@pytest.mark.parametrize("row, column", [(0, 0), (0, 7), (3, 2), (7, 7)])
def test_bit_order_is_row_major_over_the_pairs(row: int, column: int) -> None:
    # Rows fall to the right, except one pair that rises: only its bit is set.
    grey = np.tile(np.arange(9, 0, -1, dtype=np.uint8) * 20, (8, 1))
    grey[row, column + 1] = grey[row, column] + 5
    assert hash_of_grey(grey) == 2 ** (row * 8 + column)


def test_known_pattern_on_a_larger_image_with_fractional_cells() -> None:
    # 8 x 9 cells, 37 x 41 pixels each, plus ragged edges: every cell's mean decides.
    cells = np.array([[(r * 9 + c) * 7 % 256 for c in range(9)] for r in range(8)], dtype=np.uint8)
    grey = cv2.resize(cells, (9 * 41 + 5, 8 * 37 + 3), interpolation=cv2.INTER_NEAREST)
    expected = sum(1 << (r * 8 + c) for r in range(8) for c in range(8) if cells[r, c + 1] > cells[r, c])
    assert hash_of_grey(grey) == expected


def test_hash_size_16_gives_256_bits() -> None:
    ramp = np.tile(np.arange(17, dtype=np.uint8) * 10, (16, 1))
    assert hash_of_grey(ramp, 16) == 2**256 - 1
    assert len(hs.format_hash(1, 16)) == 64


@pytest.mark.parametrize("shape", [(3000, 4000), (643, 960), (37, 41)])
def test_area_average_agrees_with_opencv_when_shrinking(shape: tuple[int, int]) -> None:
    grey = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    # OpenCV's INTER_AREA computes the same means when shrinking, rounded to whole grey levels.
    reference = cv2.resize(grey, (9, 8), interpolation=cv2.INTER_AREA).astype(float)
    assert np.abs(area_average(grey, 9, 8) - reference).max() <= 0.5 + 1e-9


@pytest.mark.parametrize("shape", [(8, 9), (5, 3), (1, 1), (100, 7), (16, 27)])
def test_area_average_is_the_exact_mean_under_each_cell(shape: tuple[int, int]) -> None:
    grey = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    # Repeating each pixel 8 x 9 times makes every cell a whole block of the repeated image.
    repeated = np.repeat(np.repeat(grey.astype(float), 8, axis=0), 9, axis=1)
    blocks = repeated.reshape(8, shape[0], 9, shape[1]).mean(axis=(1, 3))
    assert np.allclose(area_average(grey, 9, 8), blocks, atol=1e-9)


def test_area_average_reads_every_pixel() -> None:
    # A bilinear 9x8 resize samples a few pixels; one bright column between samples shifts an area mean.
    grey = np.zeros((800, 900), dtype=np.uint8)
    before = area_average(grey, 9, 8)
    grey[:, 151] = 255
    assert (area_average(grey, 9, 8) > before).any()


@pytest.mark.parametrize("grey", [
    np.zeros((600, 800), np.uint8),
    np.full((600, 800), 255, np.uint8),
    np.full((600, 800), 97, np.uint8),
    np.clip(np.random.default_rng(1).normal(128, 1, (600, 800)), 0, 255).astype(np.uint8),
], ids=["black", "white", "grey", "faint noise"])
def test_blank_frames_are_low_detail(grey: np.ndarray) -> None:
    assert hs.fingerprint_pixels(grey, 8).low_detail


@pytest.mark.parametrize("name, grey", [
    ("sky darker at the top", np.tile(np.linspace(30, 220, 600)[:, None], (1, 800))),
    ("horizon", np.vstack([np.full((300, 800), 180.0), np.full((300, 800), 90.0)])),
    ("night: a photo at 10% of its levels", cv2.cvtColor(read_photo(0), cv2.COLOR_BGR2GRAY) * 0.1),
    ("fog: a photo at 10% contrast", 128 + (cv2.cvtColor(read_photo(1), cv2.COLOR_BGR2GRAY) - 128.0) * 0.1),
])
def test_pictures_a_person_sees_are_not_low_detail(name: str, grey: np.ndarray) -> None:
    """The old test looked only at left-right steps in absolute grey levels: horizons, night and
    fog photos were refused for every copy of them."""
    assert not hs.fingerprint_pixels(np.rint(grey).astype(np.uint8), 8).low_detail


@pytest.mark.parametrize("index", range(len(PHOTOS)))
def test_photos_are_not_low_detail(index: int) -> None:
    assert not hs.fingerprint_pixels(read_photo(index), 8).low_detail


def test_colour_and_grey_pixels_of_a_grey_photo_hash_alike() -> None:
    grey = cv2.cvtColor(read_photo(1), cv2.COLOR_BGR2GRAY)
    assert hs.fingerprint_pixels(grey, 8) == hs.fingerprint_pixels(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR), 8)


# The hashes of each committed photo (its dHash, and the dHash of its thumbnail less its smooth
# light) as decode_image and fingerprint_pixels gave them when ALGORITHM_VERSION was
# PINNED_FOR_VERSION. The cache keeps hashes by that version, so a change that alters any of
# these must bump it, or cached and fresh hashes would be compared. (Versions 4 to 6 changed only
# the signature: these are the hashes of version 3.)
PINNED_FOR_VERSION = 6
PINNED_HASHES = {
    "photo_04.jpg": ("303c1c0c85470703", "303c1c0c85472777"),
    "photo_14.jpg": ("222ede5ecc6860e7", "222e9e5e4c6870e7"),
    "photo_24.jpg": ("1aa60f4f92c3ced8", "dae68f4dd2c3c6d8"),
    "photo_26.jpg": ("040e1c1c7c7cfdfd", "044e1c1c1c1c0804"),
    "photo_30.jpg": ("65a94cb9b0bdb1bb", "ede94cb9b0bdb1b1"),
    "photo_32.jpg": ("f1e1d295595a282a", "a1e1d295595a282a"),
    "photo_41.jpg": ("8b0909090b030307", "8b89c9e9e9e9f0f0"),
    "photo_46.jpg": ("6cf0d478ccda9fcf", "6df894684c9a978f"),
}


def test_hashes_of_the_committed_photos_are_pinned() -> None:
    prints = {path.name: hs.fingerprint_pixels(hs.decode_image(path.read_bytes()), 8) for path in PHOTOS}
    found = {name: (hs.format_hash(fp.hashes[0], 8), hs.format_hash(fp.flat_hashes[0], 8))
             for name, fp in prints.items()}
    changed = {name: f"{PINNED_HASHES.get(name)} -> {value}" for name, value in found.items()
               if PINNED_HASHES.get(name) != value}
    if hs.ALGORITHM_VERSION == PINNED_FOR_VERSION:
        assert not changed, (f"the hash code changes hashes ({changed}): bump ALGORITHM_VERSION so that cached and "
                             "fresh hashes never mix, then pin the new hashes here")
    else:
        assert False, (f"ALGORITHM_VERSION is {hs.ALGORITHM_VERSION}: pin the hashes it gives ({changed or 'unchanged'})"
                       f" and set PINNED_FOR_VERSION to it")
    assert sorted(found) == sorted(PINNED_HASHES)
