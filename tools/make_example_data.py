"""Rebuild the example data in haystack/ and needles/ from a folder of photos.

    python tools/make_example_data.py ../shared/photos

A maintainer's tool, never run by the tests: the example data it wrote is committed.
Each needle copy is a transform of a haystack photo that keeps its 64-bit dHash exactly
(the script checks this), so the README's example output follows from the data alone.
"""
import shutil
import sys
from pathlib import Path

import cv2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import hash_and_search

REPO = Path(__file__).resolve().parent.parent

# haystack path -> (source photo, how the library stores it)
HAYSTACK = {
    "2018/beach/IMG_1021.jpg": ("photo_26.jpg", "original"),
    "2018/beach/IMG_1022.jpg": ("photo_28.jpg", "original"),
    "2018/family/portrait grandpa.jpg": ("photo_24.jpg", "original"),
    "2018/family/portrait admiral.jpg": ("photo_33.jpg", "jpeg 85"),
    "2019/pets/chelsea.jpg": ("photo_32.jpg", "original"),
    "2019/space trip/astronaut.jpg": ("photo_30.jpg", "original"),
    "2019/space trip/launch.jpg": ("photo_41.jpg", "original"),
    "2020/zoo/quokka.jpg": ("photo_04.jpg", "resized 75%"),
    "2020/zoo/coffee break.jpg": ("photo_46.jpg", "original"),
    "scans/letter.jpg": ("photo_22.jpg", "original"),
    "scans/camera man.jpg": ("photo_44.jpg", "original"),
    "scans/stairs.jpg": ("photo_14.jpg", "original"),
}
# needle path -> (haystack path, or a source photo not in the haystack; transform)
NEEDLES = {
    "IMG_0001.jpg": ("2019/pets/chelsea.jpg", "byte copy"),
    "phone-anna/DCIM/IMG_1021.jpg": ("2018/beach/IMG_1021.jpg", "byte copy"),
    "phone-anna/DCIM/IMG_1022.jpg": ("2018/beach/IMG_1022.jpg", "byte copy"),
    "phone-ben/DCIM/IMG_5001.jpg": ("photo_20.jpg", "new"),
    "phone-ben/DCIM/IMG_5002.jpg": ("photo_37.jpg", "new"),
    "sd card/2019 space/astronaut.jpg": ("2019/space trip/astronaut.jpg", "jpeg 70"),
    "sd card/2019 space/launch.jpg": ("2019/space trip/launch.jpg", "jpeg 70"),
    "sd card/2020 zoo/quokka.png": ("2020/zoo/quokka.jpg", "png"),
    "sd card/2020 zoo/coffee break.png": ("2020/zoo/coffee break.jpg", "png"),
    "old scans/album 1/letter.jpg": ("scans/letter.jpg", "resized 50%"),
    "old scans/album 1/camera man.jpg": ("scans/camera man.jpg", "resized 50%"),
    "old scans/album 2/stairs.jpg": ("scans/stairs.jpg", "byte copy"),
    "old scans/album 2/text page.jpg": ("photo_21.jpg", "new"),
    "old scans/album 2/hubble.jpg": ("photo_12.jpg", "new"),
    "camera/2021-05/flower.jpg": ("photo_31.jpg", "new"),
    "camera/2021-05/ladybird.jpg": ("photo_03.jpg", "new"),
    "family/portraits/grandpa.jpg": ("2018/family/portrait grandpa.jpg", "jpeg 70"),
    "family/portraits/admiral.png": ("2018/family/portrait admiral.jpg", "png"),
}


def write(source: Path, target: Path, transform: str) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if transform in ("original", "byte copy", "new"):
        shutil.copyfile(source, target)
        return
    pixels = cv2.imread(str(source))
    if transform.startswith("jpeg"):
        cv2.imwrite(str(target), pixels, [cv2.IMWRITE_JPEG_QUALITY, int(transform.split()[1])])
    elif transform.startswith("resized"):
        scale = int(transform.split()[1].rstrip("%")) / 100
        smaller = cv2.resize(pixels, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(target), smaller, [cv2.IMWRITE_JPEG_QUALITY, 90])
    elif transform == "png":
        cv2.imwrite(str(target), pixels)
    else:
        raise ValueError(transform)


def dhash_of(path: Path) -> int:
    pixels = hash_and_search.decode_image(path.read_bytes())
    return hash_and_search.fingerprint_pixels(pixels, hash_and_search.DEFAULT_HASH_SIZE).hash


def main(photos: Path) -> None:
    for folder in ("haystack", "needles"):
        shutil.rmtree(REPO / folder, ignore_errors=True)
    for rel, (photo, transform) in HAYSTACK.items():
        write(photos / photo, REPO / "haystack" / rel, transform)
    for rel, (origin, transform) in NEEDLES.items():
        source = photos / origin if transform == "new" else REPO / "haystack" / origin
        write(source, REPO / "needles" / rel, transform)
        if transform != "new" and dhash_of(REPO / "needles" / rel) != dhash_of(source):
            sys.exit(f"{rel}: {transform} of {origin} changed its hash; pick another photo or transform")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
