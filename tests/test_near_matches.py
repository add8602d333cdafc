"""--distance, the Hamming index, the confirmation of near matches, --rotations."""
from __future__ import annotations

import json

import cv2
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import hash_and_search as hs
from conftest import PHOTOS, by_path, copy_photo, read_photo, run_tool, run_trees, statuses, write_image


@st.composite
def hashes_and_queries(draw):
    """Random hashes with clusters of near-identical ones, and queries near and far from them."""
    bits = draw(st.sampled_from([16, 64, 100]))
    word = st.integers(0, 2**bits - 1)
    centres = draw(st.lists(word, min_size=0, max_size=30))
    flips = st.lists(st.integers(0, bits - 1), max_size=6)
    near = [c ^ sum(1 << b for b in set(draw(flips))) for c in centres for _ in range(draw(st.integers(0, 3)))]
    hashes = draw(st.permutations(centres + near + draw(st.lists(word, max_size=30))))
    queries = [c ^ sum(1 << b for b in set(draw(flips))) for c in draw(st.lists(st.sampled_from(hashes), max_size=10))
               ] if hashes else []
    queries += draw(st.lists(word, max_size=5))
    return bits, hashes, queries, draw(st.integers(0, min(bits, 20)))


@settings(max_examples=300, deadline=None)
@given(hashes_and_queries())
def test_index_finds_exactly_what_brute_force_finds(case) -> None:
    bits, hashes, queries, distance = case
    assert hs.HammingIndex(hashes, bits).search(queries, distance) == \
        hs.brute_force_search(hashes, queries, distance, bits)


def test_index_answers_each_query_in_order_nearest_first() -> None:
    index = hs.HammingIndex([0b1111, 0b0000, 0b0001, 0b1000_0000], bits=8)
    assert index.search([0b0000, 0b1111_0000], 2) == [[(1, 0), (2, 1), (3, 1)], []]
    assert index.search([0b0111], 1) == [[(0, 1)]]
    assert hs.HammingIndex([], bits=64).search([1, 2], 3) == [[], []]


def fingerprint(pixels: np.ndarray) -> hs.Fingerprint:
    return hs.fingerprint_pixels(pixels, hs.DEFAULT_HASH_SIZE)


def test_turned_and_mirrored_hashes_are_those_of_the_turned_pixels() -> None:
    pixels = read_photo(3)
    fp = fingerprint(pixels)
    for k in range(len(hs.ORIENTATIONS)):
        turned = fingerprint(np.ascontiguousarray(hs.orient(pixels, k)))
        assert turned.hash == fp.hashes[k]
        assert turned.flat_hashes[0] == fp.flat_hashes[k]  # taking the smooth light out commutes with turning
        is_copy, similarity = hs.confirm_many([fp.signature], [turned.signature], [k])
        assert is_copy[0] and similarity[0] > 0.999


def test_thumbnail_hash_equals_the_direct_area_hash() -> None:
    for index in range(len(PHOTOS)):
        pixels = read_photo(index)
        assert fingerprint(pixels).hash == hs.dhash(hs.area_sums(hs.to_grey(pixels), 9, 8))


def gamma(pixels: np.ndarray, power: float) -> np.ndarray:
    return cv2.LUT(pixels, np.clip(255 * (np.arange(256) / 255) ** power, 0, 255).astype(np.uint8))


def burst_pair(pixels: np.ndarray, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """Two overlapping crops, as of two shots taken while the camera moved."""
    h, w = pixels.shape[:2]
    ch, cw, dy, dx = int(h * 0.75), int(w * 0.75), int(h * shift), int(w * shift)
    return pixels[:ch, :cw], pixels[dy:dy + ch, dx:dx + cw]


def test_confirmation_tells_edited_copies_from_burst_shots() -> None:
    """A half-size copy: a quarter of these 400-pixel photos would be a thumbnail under 96
    pixels, whose fine detail benchmarks/thumbnail_benchmark.py measures (2.7.1 turns down the
    quarter of photo 6, thin towers at night, 67 pixels high; 2.7.0 did not)."""
    copies, bursts = [], []
    for index in range(len(PHOTOS)):
        pixels = read_photo(index)
        fp = fingerprint(pixels)
        for edited in (gamma(pixels, 0.7), cv2.GaussianBlur(pixels, (0, 0), 2),
                       cv2.resize(pixels, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)):
            copies.append((fingerprint(edited).signature, fp.signature))
        for shift in (0.03, 0.05, 0.10, 0.25):
            first, second = map(fingerprint, burst_pair(pixels, shift))
            bursts.append((second.signature, first.signature))
    for pairs, expected in ((copies, True), (bursts, False)):
        is_copy, _ = hs.confirm_many([n for n, _ in pairs], [h for _, h in pairs], [0] * len(pairs))
        assert list(is_copy) == [expected] * len(pairs)


def orientation(needle: hs.NeedleResult) -> str:
    return hs.ORIENTATIONS[needle.match.orientation]


def test_distance_finds_edited_copies_that_exact_matching_misses(trees) -> None:
    haystack, needles = trees
    for i in range(len(PHOTOS)):
        write_image(haystack / f"{i}.png", read_photo(i))
        write_image(needles / "edited" / f"{i}.png", gamma(read_photo(i), 0.7))
    near = run_trees(haystack, needles, distance=8)
    exact = hs.match_needles(near.haystack, near.needles, hs.Settings(distance=0))
    assert sum(n.status == "matched" for n in exact) < len(PHOTOS)
    assert near.exit_code == 0
    for i, needle in enumerate(sorted(near.results, key=lambda n: int(n.rel[7:-4]))):
        assert needle.match.path == f"{i}.png"
        assert needle.match.distance <= 8 and needle.match.similarity >= hs.SIMILAR_MIN_CORRELATION


def test_burst_shots_are_not_matched_even_at_distance_16(trees) -> None:
    haystack, needles = trees
    for i in range(len(PHOTOS)):
        first, second = burst_pair(read_photo(i, max_side=600), 0.05)
        write_image(haystack / f"{i}.png", first)
        write_image(needles / "burst" / f"{i}.png", second)
    result = run_trees(haystack, needles, distance=16, rotations=True)
    assert set(statuses(result).values()) <= {"missing", "similar"}
    assert {folder.verdict for folder in result.folders} == {hs.Verdict.NOT_IN}
    assert result.exit_code == 1


def test_rotations_match_turned_and_mirrored_copies(trees) -> None:
    haystack, needles = trees
    pixels = read_photo(0)
    write_image(haystack / "upright.jpg", pixels, cv2.IMWRITE_JPEG_QUALITY, 95)
    write_image(needles / "scans" / "sideways.png", np.rot90(pixels))  # turned left
    write_image(needles / "scans" / "flipped.png", pixels[:, ::-1])
    plain = run_trees(haystack, needles, distance=4)
    assert set(statuses(plain).values()) == {"missing"}

    def match(**settings) -> dict[str, hs.NeedleResult]:
        return {n.rel: n for n in hs.match_needles(plain.haystack, plain.needles, hs.Settings(**settings))}
    turned = match(distance=4, rotations=True)
    assert orientation(turned["scans/sideways.png"]) == "turned 90° clockwise"
    assert orientation(turned["scans/flipped.png"]) == "mirrored"
    exact = match(rotations=True)
    assert exact["scans/sideways.png"].status == "matched"  # lossless turns keep the hash exactly


def test_nearest_match_is_reported(trees) -> None:
    haystack, needles = trees
    pixels = read_photo(1)
    edited = gamma(pixels, 0.5)
    assert 0 < bin(fingerprint(edited).hash ^ fingerprint(pixels).hash).count("1") <= 16
    write_image(haystack / "edited.png", edited)
    write_image(haystack / "same.png", pixels)
    write_image(needles / "copy.png", pixels)
    needle = by_path(run_trees(haystack, needles, distance=16))["copy.png"]
    assert needle.match == hs.Match("same.png", hs.Method.BYTE_IDENTICAL, distance=0, orientation=0, similarity=None)
    assert orientation(needle) == "as is"


def test_distance_beyond_the_hash_is_a_usage_error(trees) -> None:
    completed = run_tool("-a", trees[0], "-n", trees[1], "--distance", "65")
    assert completed.returncode == 2 and "--distance must be from 0 to 64" in completed.stderr


def test_distance_and_rotations_are_in_the_json_settings(trees, cli) -> None:
    copy_photo(0, trees[0] / "a.jpg")
    copy_photo(0, trees[1] / "a.jpg")
    completed = cli("-a", trees[0], "-n", trees[1], "--json", "-d", "6", "--rotations")
    assert json.loads(completed.stdout)["settings"] | {"distance": 6, "rotations": True} == \
        json.loads(completed.stdout)["settings"]
