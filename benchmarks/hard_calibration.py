"""Hard calibration of the match confirmation: copies that must match, different shots that must not.

    python benchmarks/hard_calibration.py [--photos DIR] [--out FILE.md]

Scenes: the photos under --photos (default tests/photos) and synthetic images drawn from
seeds: sunsets (smooth gradients), blurred/bokeh photos, wood and tile textures, memes (one
photo template, other captions), app settings screens, slides, pages of text, night photos
darkened to 30%, foggy low-contrast photos and horizon landscapes. Each scene is a canvas; a
"shot" is a frame of it, so a burst neighbour is the same canvas framed a few % away.

Every scene is paired with edited copies of its shot (must match) and with different shots
(must not): camera moved 2-8%, a solid subject of 1.5-5% of the frame moved, another caption,
other rows of the screen, another page, another photo of the same kind. Photos and seeds are
split in two halves: A (even photos, seeds 0..) and B (odd photos, seeds 1000..); --seed-base
draws both afresh. The report gives, per class and per --distance, the share of copies matched
and the different shots accepted, for both halves. Which reports the thresholds were chosen on,
and which was run once after, the README says.
"""
from __future__ import annotations

import argparse
import itertools
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageEnhance, ImageOps

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import hash_and_search as hs  # noqa: E402

DISTANCES = (0, 2, 4, 6, 8, 10, 12, 16)
HASH_SIZE = 8
FRAME = 0.84  # a shot is this share of its canvas: room for the camera to move 8%
SYNTHETIC_PER_KIND = 4  # seeds per synthetic kind and half
SEED_BASE = {"A": 0, "B": 1000}


# ---------------------------------------------------------------------------------------
# Fingerprints, as hash_and_search computes them
# ---------------------------------------------------------------------------------------

Print = hs.Fingerprint


def fingerprint(pixels: np.ndarray) -> Print:
    return hs.fingerprint_pixels(pixels, HASH_SIZE)


# ---------------------------------------------------------------------------------------
# Scenes: canvases from which shots are framed
# ---------------------------------------------------------------------------------------

SYLLABLES = "ka lo mi ne ru ta shi po ven dor al is te ma gra fin sol ber co lu pa tri mon".split()


def words(rng: np.random.Generator, n: int) -> list[str]:
    return ["".join(rng.choice(SYLLABLES, rng.integers(1, 4))) for _ in range(n)]


def text(img, s, org, scale, colour, thickness, font=cv2.FONT_HERSHEY_SIMPLEX):
    cv2.putText(img, s, (int(org[0]), int(org[1])), font, scale, colour, thickness, cv2.LINE_AA)


def fit(photo: np.ndarray, w: int, h: int) -> np.ndarray:
    """The photo cropped to the aspect w:h and resized to w x h."""
    ph, pw = photo.shape[:2]
    if pw / ph > w / h:
        cw = int(ph * w / h)
        photo = photo[:, (pw - cw) // 2:(pw - cw) // 2 + cw]
    else:
        ch = int(pw * h / w)
        photo = photo[(ph - ch) // 2:(ph - ch) // 2 + ch]
    return cv2.resize(photo, (w, h), interpolation=cv2.INTER_AREA)


def smooth_noise(rng, h, w, scale, octaves=3):
    out = np.zeros((h, w), np.float32)
    for o in range(octaves):
        cells = max(2, int(scale * 2 ** o))
        small = rng.standard_normal((cells, max(2, int(cells * w / h)))).astype(np.float32)
        out += cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) / 2 ** o
    return out


def sunset(rng, photo):
    h, w = 720, 960
    horizon = rng.uniform(0.55, 0.75) * h
    y = np.arange(h, dtype=np.float32)[:, None]
    t = np.clip(y / horizon, 0, 1) ** rng.uniform(1.2, 2.5)
    top, low = rng.uniform([60, 20, 10], [140, 60, 60]), rng.uniform([40, 120, 220], [90, 190, 255])
    img = (top * (1 - t[..., None]) + low * t[..., None]) * np.ones((1, w, 1))
    sun = (rng.uniform(0.2, 0.8) * w, horizon - rng.uniform(0.02, 0.12) * h)
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(xx - sun[0], yy - sun[1]) / (0.05 * w)
    img += (np.exp(-d ** 2 / 8) * 70)[..., None] * np.array([0.6, 0.9, 1.0])
    img[d < 1] = (170, 235, 255)
    hills = horizon + np.cumsum(rng.normal(0, 1.5, w)) + 8 * np.sin(np.arange(w) / w * rng.uniform(2, 9))
    img[yy > hills[None, :]] = rng.uniform(5, 30, 3)
    img += rng.normal(0, 1.5, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def bokeh(rng, photo):
    h, w = 720, 960
    img = cv2.GaussianBlur(fit(photo, w, h), (0, 0), w * rng.uniform(0.015, 0.04)).astype(np.float32)
    lights = np.zeros_like(img)
    for _ in range(rng.integers(8, 25)):
        c = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        cv2.circle(lights, c, int(rng.uniform(0.02, 0.06) * w), rng.uniform(40, 160, 3).tolist(), -1, cv2.LINE_AA)
    img += cv2.GaussianBlur(lights, (0, 0), 3)
    return np.clip(img, 0, 255).astype(np.uint8)


def wood(rng, photo):
    h, w = 720, 960
    img = np.zeros((h, w), np.float32)
    x = 0
    while x < w:
        pw = int(rng.uniform(0.08, 0.16) * w)
        xx = np.mgrid[0:h, 0:pw][1].astype(np.float32)
        warp = smooth_noise(rng, h, pw, 3) * rng.uniform(4, 10)
        grain = np.sin((xx + warp) / rng.uniform(2.5, 5) + rng.uniform(0, 6)) * 18
        img[:, x:x + pw] = (rng.uniform(110, 170) + grain + smooth_noise(rng, h, pw, 2) * 6)[:, :w - x]
        img[:, x:x + 2] = 60
        x += pw
    base = np.array(rng.uniform([0.45, 0.65, 0.9], [0.55, 0.75, 1.0]))
    return np.clip(img[..., None] * base, 0, 255).astype(np.uint8)


def tiles(rng, photo):
    h, w = 720, 960
    side = int(rng.uniform(0.07, 0.12) * w)
    grout = rng.uniform(150, 230, 3)
    img = np.empty((h, w, 3), np.float32)
    img[:] = grout
    base = rng.uniform(40, 200, 3)
    for ty in range(0, h, side):
        for tx in range(0, w, side):
            img[ty + 2:ty + side - 2, tx + 2:tx + side - 2] = base + rng.normal(0, 8, 3)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def meme(rng, photo, caption_seed=None):
    h = w = 700
    img = fit(photo, w, h)
    crng = np.random.default_rng(caption_seed) if caption_seed is not None else rng
    for line, y in ((0, 0.11), (1, 0.95)):
        s = " ".join(words(crng, crng.integers(2, 5))).upper()
        scale = min(2.2, 0.9 * w / (len(s) * 20 + 1))
        size = cv2.getTextSize(s, cv2.FONT_HERSHEY_DUPLEX, scale, 5)[0]
        org = ((w - size[0]) / 2, y * h)
        text(img, s, org, scale, (0, 0, 0), 9, cv2.FONT_HERSHEY_DUPLEX)
        text(img, s, org, scale, (255, 255, 255), 3, cv2.FONT_HERSHEY_DUPLEX)
    return img


def settings(rng, photo, rows_seed=None):
    w, h = 720, 1280
    img = np.full((h, w, 3), 245, np.uint8)
    accent = tuple(int(c) for c in rng.uniform(60, 230, 3))
    img[:60] = 230
    img[60:170] = accent
    text(img, " ".join(words(rng, 1)).title(), (40, 135), 1.6, (255, 255, 255), 3)
    rrng = np.random.default_rng(rows_seed) if rows_seed is not None else rng
    y = 200
    while y < h - 100:
        tall = rrng.random() < 0.4
        rh = 150 if tall else 110
        cv2.circle(img, (70, y + rh // 2), 28, tuple(int(c) for c in rrng.uniform(40, 220, 3)), -1, cv2.LINE_AA)
        text(img, " ".join(words(rrng, rrng.integers(1, 4))).title(), (130, y + (60 if tall else 68)), 1.1, (30, 30, 30), 2)
        if tall:
            text(img, " ".join(words(rrng, rrng.integers(2, 6))), (130, y + 105), 0.8, (120, 120, 120), 1)
        on = rrng.random() < 0.5
        cv2.rectangle(img, (600, y + rh // 2 - 18), (670, y + rh // 2 + 18), accent if on else (190, 190, 190), -1)
        cv2.circle(img, (650 if on else 620, y + rh // 2), 16, (255, 255, 255), -1, cv2.LINE_AA)
        cv2.line(img, (130, y + rh), (w, y + rh), (215, 215, 215), 2)
        y += rh
    return img


def slide(rng, photo, page_seed=None):
    w, h = 1280, 720
    bg = rng.uniform(20, 240, 3)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = bg
    ink = (20, 20, 20) if bg.mean() > 128 else (240, 240, 240)
    img[:130] = np.clip(bg * 0.6, 0, 255)
    prng = np.random.default_rng(page_seed) if page_seed is not None else rng
    text(img, " ".join(words(prng, prng.integers(2, 5))).title(), (60, 95), 2.0, (255, 255, 255), 4)
    for i in range(prng.integers(3, 6)):
        y = 210 + i * 100
        cv2.circle(img, (80, y - 12), 8, ink, -1)
        text(img, " ".join(words(prng, prng.integers(3, 8))), (110, y), 1.3, ink, 2)
    return img


def page(rng, photo, page_seed=None):
    w, h = 850, 1100
    img = np.full((h, w, 3), 250, np.uint8)
    prng = np.random.default_rng(page_seed) if page_seed is not None else rng
    y = 90
    while y < h - 80:
        for line in range(prng.integers(2, 9)):
            x = 80 + (30 if line == 0 else 0)
            while True:
                wd = words(prng, 1)[0]
                tw = cv2.getTextSize(wd, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)[0][0]
                if x + tw > w - 80:
                    break
                text(img, wd, (x, y), 0.6, (20, 20, 20), 1)
                x += tw + 9
                if line > 0 and prng.random() < 0.02:
                    break
            y += 26
            if y > h - 80:
                break
        y += 18
    return img


def night(rng, photo):
    return (fit(photo, 960, 720).astype(np.float32) * 0.3).astype(np.uint8)


def fog(rng, photo):
    img = fit(photo, 960, 720).astype(np.float32)
    img = img * rng.uniform(0.15, 0.3) + rng.uniform(150, 210)
    return np.clip(img + rng.normal(0, 1.5, img.shape), 0, 255).astype(np.uint8)


def horizon(rng, photo):
    h, w = 720, 960
    y = np.arange(h, dtype=np.float32)[:, None] * np.ones((1, w))
    x = np.arange(w, dtype=np.float32)[None, :] * np.ones((h, 1))
    sky_end, sea_end = rng.uniform(0.35, 0.5) * h, rng.uniform(0.7, 0.85) * h
    v = np.where(y < sky_end, 200 - 60 * (y / sky_end), 0)
    ridge = sky_end - 0.05 * h + 6 * np.sin(x / w * rng.uniform(1, 4) + rng.uniform(0, 6))
    v = np.where((y >= ridge) & (y < sky_end), 120, v)
    sea = (y >= sky_end) & (y < sea_end)
    ripples = cv2.resize(rng.normal(0, 1, (h // 4, 6)).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    v = np.where(sea, 90 + 20 * (y - sky_end) / (sea_end - sky_end) + 8 * ripples, v)
    v = np.where(y >= sea_end, 170 + 10 * ripples, v)
    tint = rng.uniform([0.8, 0.8, 0.9], [1.0, 1.0, 1.1])
    img = v[..., None] * tint + rng.normal(0, 1.5, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


KINDS: dict[str, Callable] = {
    "sunset": sunset, "bokeh": bokeh, "wood": wood, "tiles": tiles, "meme": meme, "settings": settings,
    "slide": slide, "text page": page, "night": night, "fog": fog, "horizon": horizon,
}
FROM_PHOTO = {"bokeh", "meme", "night", "fog"}  # kinds drawn over one of the photos
GRAPHICS = {"meme": "other caption", "settings": "other rows", "slide": "other page", "text page": "other page"}


def shot(canvas: np.ndarray, dx: float = 0.0, dy: float = 0.0) -> np.ndarray:
    """The frame of the canvas, moved by dx, dy shares of the frame. Graphics are whole."""
    h, w = canvas.shape[:2]
    fh, fw = int(h * FRAME), int(w * FRAME)
    x0 = int(round((w - fw) / 2 + dx * fw))
    y0 = int(round((h - fh) / 2 + dy * fh))
    return canvas[y0:y0 + fh, x0:x0 + fw].copy()


# ---------------------------------------------------------------------------------------
# Edits: copies that must match
# ---------------------------------------------------------------------------------------

def decoded(pixels, extension, *params):
    return hs.decode_image(cv2.imencode(extension, pixels, list(params))[1].tobytes())


def jpeg(p, q=90):
    return decoded(p, ".jpg", cv2.IMWRITE_JPEG_QUALITY, int(q))


def via_pillow(pixels, edit):
    image = Image.fromarray(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB))
    return cv2.cvtColor(np.asarray(edit(image).convert("RGB")), cv2.COLOR_RGB2BGR)


def lut(p, curve):
    return cv2.LUT(p, np.clip(curve(np.arange(256.0)), 0, 255).astype(np.uint8))


def crop_sides(p, left, top, right, bottom):
    h, w = p.shape[:2]
    return p[int(top * h):h - int(bottom * h), int(left * w):w - int(right * w)]


def rotate(p, degrees):
    h, w = p.shape[:2]
    m = cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1.0)
    return cv2.warpAffine(p, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def resize(p, scale):
    return cv2.resize(p, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def tone(rng, p):
    choice = rng.integers(6)
    return [lambda: lut(p, lambda v: v + 20), lambda: lut(p, lambda v: v - 20),
            lambda: via_pillow(p, lambda i: ImageEnhance.Contrast(i).enhance(1.3)),
            lambda: via_pillow(p, lambda i: ImageEnhance.Contrast(i).enhance(0.7)),
            lambda: lut(p, lambda v: 255 * (v / 255) ** 0.7), lambda: lut(p, lambda v: 255 * (v / 255) ** 1.4)][choice]()


def auto_enhance(rng, p):
    return jpeg(via_pillow(p, lambda i: ImageEnhance.Sharpness(ImageEnhance.Color(
        ImageOps.autocontrast(i, cutoff=2)).enhance(1.2)).enhance(1.5)), 90)


def vignette_filter(rng, p):
    h, w = p.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot((xx - w / 2) / (w / 2), (yy - h / 2) / (h / 2)) / np.sqrt(2)
    fall = 1 - rng.uniform(0.3, 0.5) * r ** 2
    warm = lut(p, lambda v: 255 * (v / 255) ** 0.9) * np.array([0.9, 1.0, 1.08])
    return jpeg(np.clip(warm * fall[..., None], 0, 255).astype(np.uint8), 90)


def watermark(rng, p):
    marked, (h, w) = p.copy(), p.shape[:2]
    text(marked, "(c) 2019 " + words(rng, 1)[0], (w * 0.6, h * 0.94), w / 1000, (255, 255, 255), max(1, w // 500))
    return jpeg(marked, 90)


def sticker(rng, p):
    """A solid sticker of 0.3 to 0.8% of the frame in a corner region."""
    marked, (h, w) = p.copy(), p.shape[:2]
    r = int(np.sqrt(rng.uniform(0.003, 0.008) * h * w / np.pi))
    c = (int(rng.choice([0.12, 0.88]) * w), int(rng.choice([0.12, 0.88]) * h))
    cv2.circle(marked, c, r, tuple(int(v) for v in rng.uniform(0, 255, 3)), -1, cv2.LINE_AA)
    return jpeg(marked, 90)


def light_crop(rng, p):
    return jpeg(crop_sides(p, *rng.uniform(0, 0.02, 4)), 90)


def straighten(rng, p):
    angle = rng.uniform(0.3, 1.0) * rng.choice([-1, 1])
    return jpeg(crop_sides(rotate(p, angle), *rng.uniform(0.012, 0.02, 4)), 90)


def messenger(rng, p):
    scale = min(1.0, 640 / max(p.shape[:2])) * rng.uniform(0.7, 1.0)
    return decoded(resize(p, scale), ".jpg", cv2.IMWRITE_JPEG_QUALITY, int(rng.uniform(55, 75)),
                   cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420)


def rescan(rng, p):
    """Print and scan: softer tones with a cast, slight blur, small rotation and crop, paper
    texture and scanner noise, saved as JPEG."""
    h, w = p.shape[:2]
    img = p.astype(np.float32)
    img = 18 + img * rng.uniform(0.75, 0.9) * rng.uniform([0.95, 0.95, 0.95], [1.05, 1.05, 1.05])
    img = cv2.GaussianBlur(img, (0, 0), max(h, w) / rng.uniform(500, 900))
    paper = 1 + 0.03 * smooth_noise(rng, h, w, 6)
    img = img * paper[..., None] + rng.normal(0, 3, img.shape)
    img = rotate(np.clip(img, 0, 255).astype(np.uint8), rng.uniform(-1, 1))
    return jpeg(crop_sides(img, *rng.uniform(0, 0.02, 4)), 85)


def palette(rng, p):
    return via_pillow(p, lambda i: i.convert("P", palette=Image.Palette.ADAPTIVE))


EDITS: dict[str, Callable] = {
    "PNG (lossless)": lambda rng, p: decoded(p, ".png"),
    "JPEG 50-90": lambda rng, p: jpeg(p, rng.uniform(50, 90)),
    "WEBP 75": lambda rng, p: decoded(p, ".webp", cv2.IMWRITE_WEBP_QUALITY, 75),
    "resize 25/50/200%": lambda rng, p: jpeg(resize(p, rng.choice([0.25, 0.5, 2.0])), 90),
    "palette 256": palette,
    "greyscale": lambda rng, p: jpeg(cv2.cvtColor(cv2.cvtColor(p, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR), 90),
    "tone (bright/contrast/gamma)": lambda rng, p: jpeg(tone(rng, p), 90),
    "auto-enhance": auto_enhance,
    "filter + vignette": vignette_filter,
    "watermark": watermark,
    "sticker <= 0.8%": sticker,
    "crop <= 2%/side": light_crop,
    "straighten <= 1°": straighten,
    "messenger copy": messenger,
    "rescan": rescan,
}
TURNS: dict[str, Callable] = {
    "turned 90° (rotations)": lambda rng, p: jpeg(np.ascontiguousarray(np.rot90(p, rng.choice([1, 3]))), 90),
    "mirrored (rotations)": lambda rng, p: jpeg(np.ascontiguousarray(p[:, ::-1]), 90),
}


# ---------------------------------------------------------------------------------------
# Different shots: must not match
# ---------------------------------------------------------------------------------------

BURSTS = (0.02, 0.03, 0.05, 0.08)


def burst(rng, canvas, s):
    angle = rng.uniform(0, 2 * np.pi)
    return jpeg(shot(canvas, s * np.cos(angle), s * np.sin(angle)), 90)


def subject_moved(rng, frame):
    """The frame with one solid subject (1.5 to 5% of the frame) in two places: (a, b)."""
    h, w = frame.shape[:2]
    area = rng.uniform(0.015, 0.05) * h * w
    ax = np.sqrt(area / np.pi * rng.uniform(0.6, 1.6))
    ay = area / np.pi / ax
    while True:
        a = rng.uniform([ax, ay], [w - ax, h - ay])
        b = rng.uniform([ax, ay], [w - ax, h - ay])
        if np.hypot(*((a - b) / (2 * np.array([ax, ay])))) >= 1.0:  # no overlap
            break
    # a subject that stands out where it is: dark on a light place, light on a dark one
    grey = hs.to_grey(frame)
    light = max(grey[int(c[1]), int(c[0])] for c in (a, b)) > 110
    colour = tuple(int(v) for v in (rng.uniform(0, 50, 3) if light else rng.uniform(190, 255, 3)))
    shots = []
    for c in (a, b):
        f = frame.copy()
        cv2.ellipse(f, (int(c[0]), int(c[1])), (int(ax), int(ay)), 0, 0, 360, colour, -1, cv2.LINE_AA)
        shots.append(jpeg(f, 90))
    return shots


# ---------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------

@dataclass
class Pair:
    half: str
    kind: str  # of scene
    name: str  # edit or near-miss class
    must_match: bool
    needle: Print
    haystack: Print
    rotations: bool = False  # compared in all 8 orientations (--rotations)


@dataclass
class Scene:
    kind: str
    seed: int
    canvas: np.ndarray
    frame: np.ndarray
    other: Callable[[], np.ndarray] | None = None  # the same template with other content
    photo: int | None = None  # the photo it was made from: scenes of one photo are not "other shots"


def scenes(half: str, photos: list[np.ndarray]) -> list[Scene]:
    out = [Scene("photo", SEED_BASE[half] + 5000 + i, p, shot(p), photo=i) for i, p in enumerate(photos)]
    for kind_no, (kind, make) in enumerate(KINDS.items()):
        for i in range(SYNTHETIC_PER_KIND):
            seed = SEED_BASE[half] + 100 * kind_no + i
            photo_no = i % len(photos) if kind in FROM_PHOTO else None
            photo = photos[i % len(photos)]
            if kind in GRAPHICS:
                out.append(graphic_scene(kind, seed, photo, photo_no))
            else:
                canvas = make(np.random.default_rng(seed), photo)
                out.append(Scene(kind, seed, canvas, shot(canvas), photo=photo_no))
    return out


def graphic_scene(kind: str, seed: int, photo: np.ndarray, photo_no: int | None) -> Scene:
    """A graphic (whole, never framed) and the same template with other content."""
    make = KINDS[kind]
    keyword = {"meme": "caption_seed", "settings": "rows_seed"}.get(kind, "page_seed")
    canvas = make(np.random.default_rng(seed), photo, **{keyword: seed * 7 + 1})
    return Scene(kind, seed, canvas, canvas,
                 lambda: make(np.random.default_rng(seed), photo, **{keyword: seed * 7 + 2}), photo_no)


def graphic_scenes(half: str, photos: list[np.ndarray], per_photo: int) -> list[Scene]:
    """Graphics only, many of them: each photo `per_photo` times as the template of a meme (and
    the backdrop of a settings screen, a slide, a page), so that the classes "other caption",
    "other rows" and "other page" are counted on more than a few pairs each."""
    return [graphic_scene(kind, SEED_BASE[half] + 50000 + 1000 * kind_no + per_photo * i + j, photo,
                          i if kind in FROM_PHOTO else None)
            for kind_no, kind in enumerate(GRAPHICS) for i, photo in enumerate(photos) for j in range(per_photo)]


def pairs_of(half: str, all_scenes: list[Scene]) -> list[Pair]:
    pairs: list[Pair] = []
    prints = [fingerprint(s.frame) for s in all_scenes]
    for scene, original in zip(all_scenes, prints):
        rng = np.random.default_rng(scene.seed + 7919)
        for name, edit in EDITS.items():
            pairs.append(Pair(half, scene.kind, name, True, fingerprint(edit(rng, scene.frame)), original))
        for name, edit in TURNS.items():
            pairs.append(Pair(half, scene.kind, name, True, fingerprint(edit(rng, scene.frame)), original, True))
        if scene.other is not None:
            pairs.append(Pair(half, scene.kind, GRAPHICS[scene.kind], False, fingerprint(jpeg(scene.other())),
                              original))
            continue
        for s in BURSTS:
            pairs.append(Pair(half, scene.kind, f"burst: camera moved {s:.0%}", False,
                              fingerprint(burst(rng, scene.canvas, s)), original))
        for _ in range(2):
            a, b = subject_moved(rng, scene.frame)
            pairs.append(Pair(half, scene.kind, "subject moved 1.5-5%", False, fingerprint(b), fingerprint(a)))
    for (i, a), (j, b) in itertools.permutations(enumerate(all_scenes), 2):
        if a.photo is not None and a.photo == b.photo:
            continue
        name = "other shot, same kind" if a.kind == b.kind else "other shot, other kind"
        pairs.append(Pair(half, a.kind, name, False, prints[i], prints[j]))
    return pairs


# ---------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------

def key_distance(needle: Print, haystack: Print, k: int) -> int:
    """The nearest of the index keys (dHash, dHash turned 90°, and both of the thumbnail less its
    smooth light) in needle orientation k: the bits apart at which find_candidates finds the pair."""
    return min((a ^ b).bit_count() for a, b in zip(hs.index_keys(needle, k), hs.index_keys(haystack, 0)))


def evaluate(pairs: list[Pair]) -> dict[int, list[tuple[int, bool]]]:
    """Pair index -> [(key distance, confirmed)] for each orientation compared."""
    todo = [(i, k, key_distance(p.needle, p.haystack, k)) for i, p in enumerate(pairs)
            if not (p.needle.low_detail or p.haystack.low_detail) for k in (range(8) if p.rotations else [0])]
    todo = [(i, k, d) for i, k, d in todo if d <= max(DISTANCES)]
    result: dict[int, list[tuple[int, bool]]] = defaultdict(list)
    for start in range(0, len(todo), 2000):
        chunk = todo[start:start + 2000]
        ok, _ = hs.confirm_many([pairs[i].needle.signature for i, _, _ in chunk],
                                [pairs[i].haystack.signature for i, _, _ in chunk], [k for _, k, _ in chunk])
        for (i, k, d), accepted in zip(chunk, ok.tolist()):
            result[i].append((d, accepted))
    return result


def accepted(found: list[tuple[int, bool]], distance: int) -> bool:
    return any(d <= distance and ok for d, ok in found)


def tables(pairs: list[Pair], found, title: str) -> str:
    by_class: dict[tuple[bool, str], list[int]] = defaultdict(list)
    for i, p in enumerate(pairs):
        by_class[(p.must_match, p.name)].append(i)
    head = "| class | pairs | " + " | ".join(f"d={d}" for d in DISTANCES) + " |\n|---|---:|" + "---:|" * len(DISTANCES)
    lines = [f"### {title}\n", "Copies matched (recall):\n", head]
    for (must, name), members in sorted(by_class.items(), key=lambda kv: (not kv[0][0], kv[0][1])):
        if must:
            lines.append(f"| {name} | {len(members)} | " + " | ".join(
                f"{sum(accepted(found[i], d) for i in members) / len(members):.0%}" for d in DISTANCES) + " |")
    lines += ["", "Different shots accepted (count; must be 0):\n", head]
    for (must, name), members in sorted(by_class.items()):
        if not must:
            counts = [sum(accepted(found[i], d) for i in members) for d in DISTANCES]
            lines.append(f"| {name} | {len(members)} | " + " | ".join(map(str, counts)) + " |")
    return "\n".join(lines)


def per_kind(pairs: list[Pair], found, distance: int) -> str:
    lines = [f"\nPer kind of scene at --distance {distance} (copies without rotations):\n",
             "| kind | copies | recall | low detail (of originals) | different shots | accepted | precision |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    kinds = dict.fromkeys(p.kind for p in pairs)
    for kind in kinds:
        pos = [i for i, p in enumerate(pairs) if p.kind == kind and p.must_match and not p.rotations]
        neg = [i for i, p in enumerate(pairs) if p.kind == kind and not p.must_match]
        tp = sum(accepted(found[i], distance) for i in pos)
        fp = sum(accepted(found[i], distance) for i in neg)
        low = sum(pairs[i].haystack.low_detail for i in pos if pairs[i].name == "PNG (lossless)")
        originals = sum(pairs[i].name == "PNG (lossless)" for i in pos)
        precision = f"{tp / (tp + fp):.1%}" if tp + fp else "-"
        lines.append(f"| {kind} | {len(pos)} | {tp / len(pos):.1%} | {low}/{originals} | {len(neg)} | {fp} | {precision} |")
    return "\n".join(lines)


def recommend(pairs: list[Pair], found) -> int:
    """The smallest distance that matches, in every class of copies, as many as distance 16."""
    widest = max(DISTANCES)
    classes = {p.name for p in pairs if p.must_match}
    best = {c: sum(accepted(found[i], widest) for i, p in enumerate(pairs) if p.name == c) for c in classes}
    return next(d for d in DISTANCES if all(
        sum(accepted(found[i], d) for i, p in enumerate(pairs) if p.name == c) >= best[c] for c in classes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=Path, default=REPO / "tests" / "photos")
    parser.add_argument("--out", type=Path, help="write the report here too")
    parser.add_argument("--seed-base", type=int, default=0,
                        help="added to every seed: a fresh draw of scenes, edits and different shots")
    parser.add_argument("--graphics", type=int, metavar="N", default=0,
                        help="graphics only: each photo N times as a meme template, screen, slide and page")
    args = parser.parse_args()
    for half in SEED_BASE:
        SEED_BASE[half] += args.seed_base
    photos = [hs.decode_image(path.read_bytes()) for path in sorted(args.photos.glob("*.jpg"))]
    report = [f"# Hard calibration: {len(photos)} photos from {args.photos}, "
              + (f"graphics only, {args.graphics} of each kind per photo" if args.graphics
                 else f"{SYNTHETIC_PER_KIND} synthetic scenes per kind and half")
              + (f", seeds + {args.seed_base}" if args.seed_base else "") + "\n"]
    chosen = None
    for half, chosen_photos in (("A", photos[0::2]), ("B", photos[1::2])):
        pairs = pairs_of(half, graphic_scenes(half, chosen_photos, args.graphics) if args.graphics
                         else scenes(half, chosen_photos))
        found = evaluate(pairs)
        label = "even photos" if half == "A" else "odd photos"
        text_ = tables(pairs, found, f"Half {half} ({label}): {len(pairs)} pairs")
        chosen = recommend(pairs, found) if half == "A" else chosen
        report += [text_, *(per_kind(pairs, found, d) for d in sorted({chosen, max(DISTANCES)})), ""]
    report.append(f"Recommended --distance (from half A): {chosen}")
    text_ = "\n".join(report)
    print(text_)
    if args.out:
        args.out.write_text(text_ + "\n")


if __name__ == "__main__":
    main()
