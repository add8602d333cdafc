"""Issue 9: matches you can trust. Every perceptual match is confirmed, at distance 0 too; a
different shot is reported as similar, never matched; pictures with little left-right
structure are compared, not refused; and a default run says what a wider search would add."""
from __future__ import annotations


import cv2
import numpy as np

import hash_and_search as hs
from conftest import read_photo, run_trees, statuses, write_image


def sunset(width: int = 800, height: int = 600) -> np.ndarray:
    """A smooth gradient brightening to the right: every left-right step is up, the hash all ones."""
    ramp = np.linspace(40, 230, width)[None, :, None] * np.array([0.55, 0.75, 1.0])
    return np.ascontiguousarray(np.broadcast_to(ramp, (height, width, 3))).astype(np.uint8)


def wood(seed: int, width: int = 800, height: int = 600) -> np.ndarray:
    """Vertical grain over a rightward brightening: a texture whose hash is all ones too."""
    rng = np.random.default_rng(seed)
    x = np.arange(width)
    grain = 25 * np.sin(x[None, :] / rng.uniform(3, 9) + rng.normal(0, 0.3, (height, 1)).cumsum(axis=0))
    grey = np.clip(np.linspace(30, 200, width)[None, :] + grain, 0, 255)
    return cv2.cvtColor(grey.astype(np.uint8), cv2.COLOR_GRAY2BGR)


def test_a_degenerate_hash_never_matches_on_the_hash_alone(trees) -> None:
    haystack, needles = trees
    write_image(haystack / "sunset.png", sunset())
    for seed in range(3):
        write_image(needles / "textures" / f"wood {seed}.png", wood(seed))
    assert {hs.format_hash(hs.fingerprint_pixels(wood(seed), 8).hash, 8) for seed in range(3)} == {"f" * 16}
    assert hs.format_hash(hs.fingerprint_pixels(sunset(), 8).hash, 8) == "f" * 16
    for distance in (0, 8):
        result = run_trees(haystack, needles, distance=distance, rotations=True)
        assert set(statuses(result).values()) <= {"missing", "similar"}, distance


def test_a_degenerate_hash_still_matches_its_own_copies(trees) -> None:
    haystack, needles = trees
    write_image(haystack / "sunset.png", sunset())
    write_image(needles / "x" / "sunset.jpg", sunset(), cv2.IMWRITE_JPEG_QUALITY, 90)
    write_image(needles / "x" / "sunset small.png", cv2.resize(sunset(), (400, 300), interpolation=cv2.INTER_AREA))
    assert set(statuses(run_trees(haystack, needles)).values()) == {"matched"}


def horizon(photo: np.ndarray) -> np.ndarray:
    """Sea and sky: bands of colour with a pole, the structure mostly horizontal."""
    h, w = photo.shape[:2]
    scene = np.empty_like(photo)
    scene[: h // 2] = (200, 170, 140)
    scene[h // 2:] = (120, 90, 40)
    scene[h // 2 - 2: h // 2 + 2] = (230, 230, 230)
    scene[h // 5: h // 2, w // 3: w // 3 + 4] = (30, 30, 30)
    return cv2.GaussianBlur(scene, (0, 0), 1.5)


def test_horizons_night_and_fog_photos_match_their_copies_by_default(trees) -> None:
    haystack, needles = trees
    photo = read_photo(0)
    scenes = {"horizon": horizon(photo), "night": (photo * 0.25).astype(np.uint8),
              "fog": (128 + (photo.astype(float) - 128) * 0.2).astype(np.uint8)}
    for name, pixels in scenes.items():
        write_image(haystack / f"{name}.png", pixels)
        write_image(needles / "x" / f"{name} copy.png", pixels[::-1, ::-1][::-1, ::-1].copy())
        write_image(needles / "y" / f"{name}.jpg", pixels, cv2.IMWRITE_JPEG_QUALITY, 92)
    result = run_trees(haystack, needles, distance=hs.RECOMMENDED_DISTANCE)
    assert set(statuses(result).values()) == {"matched"}
    lossless = hs.match_needles(result.haystack, result.needles, hs.Settings())
    assert {needle.status for needle in lossless if needle.folder == "x"} == {"matched"}


def burst(pixels: np.ndarray, shift: float) -> tuple[np.ndarray, np.ndarray]:
    h, w = pixels.shape[:2]
    ch, cw, dy, dx = int(h * 0.84), int(w * 0.84), int(h * shift), int(w * shift)
    return pixels[:ch, :cw], pixels[dy:dy + ch, dx:dx + cw]


def test_a_burst_neighbour_is_similar_never_matched_and_its_folder_never_in(trees) -> None:
    haystack, needles = trees
    first, second = burst(read_photo(1, max_side=800), 0.04)
    write_image(haystack / "burst" / "IMG_1.png", first)
    write_image(needles / "card" / "IMG_2.png", second)
    result = run_trees(haystack, needles, distance=16)
    needle = result.results[0]
    assert needle.status == "similar" and needle.similar.path == "burst/IMG_1.png"
    assert result.folders[0].verdict == hs.Verdict.NOT_IN
    assert "      IMG_2.png  (similar to burst/IMG_1.png" in hs.render_text(result, list_missing=True)


def test_a_default_run_says_what_a_wider_search_would_add(trees) -> None:
    haystack, needles = trees
    gamma = np.clip(255 * (np.arange(256) / 255) ** 0.6, 0, 255).astype(np.uint8)
    for i in range(6):
        write_image(haystack / f"{i}.png", read_photo(i))
        write_image(needles / "edited" / f"{i}.png", cv2.LUT(read_photo(i), gamma))
    write_image(needles / "turned" / "a.png", np.ascontiguousarray(np.rot90(read_photo(0))))
    result = run_trees(haystack, needles)
    missed = [rel for rel, status in statuses(result).items() if rel.startswith("edited/") and status != "matched"]
    wide = run_trees(haystack, needles, distance=8, rotations=True)
    assert missed and statuses(wide) == dict.fromkeys(statuses(result), "matched")
    text = hs.render_text(result)
    assert (f"Hint: {len(missed)} unmatched image{'s' if len(missed) > 1 else ''} "
            f"{'have' if len(missed) > 1 else 'has'} a confirmed copy within distance 8: run with --distance 8") in text
    assert "Hint: 1 unmatched image matches when turned or mirrored: run with --rotations.\n" in text
    assert "Hint" not in hs.render_text(wide)
