"""Issue 8: every file in the backup is compared or visibly counted as not compared: HEIC,
AVIF, JPEG XL and RAW photos decoded, videos and anything else compared byte for byte, a
backup kept inside the library never matched with itself."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

import hash_and_search as hs
import media
from conftest import copy_photo, read_photo, run_tool, write_image

STATUS, VERDICT = hs.NeedleStatus, hs.Verdict


def run(haystack: Path, needles: Path, warnings: list[str] | None = None, **settings) -> hs.RunResult:
    return hs.run(haystack, needles, hs.Settings(**settings), warn=(warnings if warnings is not None else []).append)


def statuses(result: hs.RunResult) -> dict[str, str]:
    return {needle.rel: needle.status for needle in result.results}


def verdicts(result: hs.RunResult) -> dict[str, str]:
    return {folder.folder: folder.verdict for folder in result.folders}


def methods(result: hs.RunResult) -> dict[str, str | None]:
    return {needle.rel: needle.match and needle.match.method for needle in result.results}


def put(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_iphone_backup_against_a_library_of_heic_originals(trees) -> None:
    """HEIC byte copies, a JPEG export of a library HEIC, a Live Photo's video and its sidecar."""
    haystack, needles = trees
    photos = [read_photo(i) for i in range(3)]
    for i, pixels in enumerate(photos):
        put(haystack / "2023" / f"IMG_{i}.HEIC", media.make_heic(pixels))
    live_video = put(haystack / "2023" / "IMG_0.MOV", media.make_video(photos[0], ".mov"))
    put(needles / "iphone" / "IMG_0.HEIC", (haystack / "2023" / "IMG_0.HEIC").read_bytes())
    put(needles / "iphone" / "IMG_0.MOV", live_video.read_bytes())
    put(needles / "iphone" / "IMG_0.AAE", b"<plist/>")
    write_image(needles / "iphone" / "IMG_1.jpg", photos[1], cv2.IMWRITE_JPEG_QUALITY, 95)
    put(needles / "iphone" / "IMG_2.heic", media.make_heic(photos[2], quality=80))
    result = run(haystack, needles)
    assert statuses(result) == {"iphone/IMG_0.AAE": STATUS.NOT_COMPARED, "iphone/IMG_0.HEIC": STATUS.MATCHED,
                                "iphone/IMG_0.MOV": STATUS.MATCHED, "iphone/IMG_1.jpg": STATUS.MATCHED,
                                "iphone/IMG_2.heic": STATUS.MATCHED}
    assert methods(result)["iphone/IMG_0.MOV"] == hs.Method.BYTE_IDENTICAL
    assert methods(result)["iphone/IMG_1.jpg"] == hs.Method.SAME_HASH
    assert verdicts(result) == {"iphone": VERDICT.IN} and result.exit_code == 0


def test_heic_needle_matches_its_jpeg_in_the_library(trees) -> None:
    haystack, needles = trees
    write_image(haystack / "a.jpg", read_photo(0), cv2.IMWRITE_JPEG_QUALITY, 95)
    put(needles / "phone" / "a.heic", media.make_heic(read_photo(0)))
    assert statuses(run(haystack, needles)) == {"phone/a.heic": STATUS.MATCHED}


@pytest.mark.parametrize("orientation", [6, 3, 8])
def test_heic_and_avif_are_turned_as_their_container_says(trees, orientation: int) -> None:
    """The stored pixels lie on their side; irot/imir say how to show them. An EXIF tag that
    disagrees is ignored, as the HEIF standard says."""
    haystack, needles = trees
    upright = read_photo(0)
    stored = np.ascontiguousarray(np.rot90(upright, {6: 1, 3: 2, 8: 3}[orientation]))
    write_image(haystack / "a.jpg", upright, cv2.IMWRITE_JPEG_QUALITY, 95)
    put(needles / "x" / "a.heic", media.make_heic(stored, orientation=orientation))
    put(needles / "x" / "b.heic", media.make_heic(stored, orientation=orientation,
                                                  exif_orientation=8 if orientation != 8 else 6))
    put(needles / "x" / "c.avif", media.make_avif(stored, orientation=orientation))
    assert set(statuses(run(haystack, needles)).values()) == {STATUS.MATCHED}


def test_avif_and_jpeg_xl_photos_are_read(trees) -> None:
    haystack, needles = trees
    write_image(haystack / "a.png", read_photo(0))
    write_image(haystack / "b.png", read_photo(1))
    put(needles / "x" / "a.avif", media.make_avif(read_photo(0)))
    put(needles / "x" / "b.jxl", media.make_jxl(read_photo(1)))
    assert statuses(run(haystack, needles)) == {"x/a.avif": STATUS.MATCHED, "x/b.jxl": STATUS.MATCHED}


@pytest.mark.parametrize("orientation", [1, 6, 3, 8])
def test_raw_needle_matches_the_camera_jpeg_in_the_library(trees, orientation: int) -> None:
    """A RAW+JPEG camera: the JPEG beside the RAW carries an EXIF orientation; the RAW a flip
    flag and an unturned preview. Without a preview LibRaw's rendering is hashed."""
    haystack, needles = trees
    upright = camera_sized(read_photo(2))
    stored = np.ascontiguousarray(np.rot90(upright, {1: 0, 6: 1, 3: 2, 8: 3}[orientation]))
    put(haystack / "camera.jpg", media.encode_jpeg(stored, 95, orientation))
    put(needles / "card" / "with preview.dng", media.make_dng(stored, orientation=orientation,
                                                              preview=media.encode_jpeg(stored, 95)))
    put(needles / "card" / "sensor only.dng", media.make_dng(stored, orientation=orientation))
    result = run(haystack, needles)
    assert statuses(result) == {"card/sensor only.dng": STATUS.MATCHED, "card/with preview.dng": STATUS.MATCHED}
    assert {needle.kind for needle in result.results} == {hs.Kind.RAW}


def camera_sized(pixels: np.ndarray) -> np.ndarray:
    """Long side 1280 (so that a preview is hashed, not rendered), even sides (as a Bayer
    mosaic has them: no row is lost whichever way the camera was held)."""
    scale = 1280 / max(pixels.shape[:2])
    size = (2 * round(pixels.shape[1] * scale / 2), 2 * round(pixels.shape[0] * scale / 2))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_CUBIC)


def test_jpeg_needle_matches_a_raw_in_the_library(trees) -> None:
    haystack, needles = trees
    put(haystack / "2020" / "DSC_1.NEF", media.make_dng(read_photo(3), preview=media.encode_jpeg(read_photo(3))))
    write_image(needles / "export" / "DSC_1.jpg", read_photo(3), cv2.IMWRITE_JPEG_QUALITY, 90)
    assert statuses(run(haystack, needles)) == {"export/DSC_1.jpg": STATUS.MATCHED}


def test_raw_plus_jpeg_folder_copied_byte_for_byte_into_the_library_is_in(trees) -> None:
    haystack, needles = trees
    for i in range(2):
        put(needles / "DCIM" / f"IMG_{i}.CR2", media.make_dng(read_photo(i)))
        write_image(needles / "DCIM" / f"IMG_{i}.JPG", read_photo(i), cv2.IMWRITE_JPEG_QUALITY, 92)
    for file in (needles / "DCIM").iterdir():
        put(haystack / "imported" / file.name, file.read_bytes())
    result = run(haystack, needles)
    assert verdicts(result) == {"DCIM": VERDICT.IN}
    assert set(methods(result).values()) == {hs.Method.BYTE_IDENTICAL}


def test_a_byte_identical_file_matches_whatever_it_holds(trees) -> None:
    haystack, needles = trees
    contents = {"corrupt.jpg": b"\xff\xd8\xff\xe0 not really a jpeg",
                "blank.png": cv2.imencode(".png", np.zeros((64, 64, 3), np.uint8))[1].tobytes(),
                "clip.mts": os.urandom(5000), "damaged.heic": b"\0\0\0\x18ftypheic" + os.urandom(300)}
    for name, data in contents.items():
        put(haystack / "lib" / name, data)
        put(needles / "old" / name, data)
    result = run(haystack, needles)
    assert set(statuses(result).values()) == {STATUS.MATCHED}
    assert set(methods(result).values()) == {hs.Method.BYTE_IDENTICAL}


def test_videos_not_in_the_library_keep_their_folder_out(trees) -> None:
    """Four imported JPEGs and two videos the library does not have: partly in, exit 1."""
    haystack, needles = trees
    for i in range(4):
        copy_photo(i, haystack / f"{i}.jpg")
        copy_photo(i, needles / "trip" / f"{i}.jpg")
    put(needles / "trip" / "a.mp4", media.make_video(read_photo(0), ".mp4"))
    put(needles / "trip" / "b.mov", media.make_video(read_photo(1), ".mov"))
    result = run(haystack, needles)
    assert verdicts(result) == {"trip": VERDICT.PARTLY_IN} and result.exit_code == 1
    assert statuses(result)["trip/a.mp4"] == STATUS.MISSING
    assert "  trip  4 of 6 files matched (4 photos, 2 videos)\n" in hs.render_text(result)


def test_backup_of_videos_only_is_not_in_the_haystack(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    for extension in (".mp4", ".avi", ".mkv"):
        put(needles / "clips" / f"v{extension}", media.make_video(read_photo(1), extension))
    result = run(haystack, needles)
    assert verdicts(result) == {"clips": VERDICT.NOT_IN} and result.exit_code == 1
    assert "  clips  0 of 3 videos matched\n" in hs.render_text(result)


def test_a_video_is_read_only_when_its_size_meets_a_haystack_file(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    put(needles / "v" / "big.mov", b"\0" * 100_000)
    put(needles / "v" / "same size.mov", b"\1" * (haystack / "a.jpg").stat().st_size)
    sources = run(haystack, needles).needles.sources
    assert sources[hs.Source.SIZE_ONLY] == 1 and sources[hs.Source.DIGEST_ONLY] == 1


def test_sidecars_system_and_other_files_are_counted_but_never_change_a_verdict(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    copy_photo(0, needles / "done" / "a.jpg")
    for name in ("a.xmp", "a.json", ".DS_Store", "Thumbs.db", "desktop.ini", "._a.jpg", "notes.txt"):
        put(needles / "done" / name, b"x")
    put(needles / "docs only" / "letter.pdf", b"%PDF")
    result = run(haystack, needles)
    assert verdicts(result) == {"docs only": VERDICT.NOTHING_COMPARED, "done": VERDICT.IN}
    kinds = {needle.rel: needle.kind for needle in result.results}
    assert kinds["done/._a.jpg"] == kinds["done/.DS_Store"] == hs.Kind.SYSTEM
    assert kinds["done/a.xmp"] == hs.Kind.SIDECAR and kinds["done/notes.txt"] == hs.Kind.OTHER
    assert result.folders[1].not_compared == 7 and result.exit_code == 0
    assert "Nothing to compare (1 folder):\n  docs only  1 other file not compared\n" in hs.render_text(result)


def test_backup_staged_inside_the_library_gets_the_verdicts_it_gets_apart(trees, tmp_path: Path) -> None:
    haystack, _ = trees
    copy_photo(0, haystack / "2019" / "a.jpg")
    backup = haystack / "old-backup"
    copy_photo(0, backup / "imported" / "a.jpg")
    copy_photo(1, backup / "new" / "b.jpg")
    copy_photo(0, backup / "half" / "a.jpg")
    copy_photo(2, backup / "half" / "c.jpg")
    warnings: list[str] = []
    inside = run(haystack, backup, warnings)
    apart_haystack = tmp_path / "apart"
    copy_photo(0, apart_haystack / "2019" / "a.jpg")
    apart = run(apart_haystack, backup)
    assert verdicts(inside) == verdicts(apart) == {
        "half": VERDICT.PARTLY_IN, "imported": VERDICT.IN, "new": VERDICT.NOT_IN}
    assert any("inside the haystack" in warning for warning in warnings)


def test_the_same_file_through_a_hard_link_never_matches_itself(trees) -> None:
    haystack, needles = trees
    copy_photo(0, needles / "x" / "a.jpg")
    os.link(needles / "x" / "a.jpg", haystack / "a.jpg")
    assert statuses(run(haystack, needles)) == {"x/a.jpg": STATUS.MISSING}


def test_haystack_and_needles_may_not_be_the_same_folder(trees) -> None:
    haystack, _ = trees
    with pytest.raises(hs.FatalError, match="same folder"):
        run(haystack, haystack)


def test_damaged_heic_truncated_raw_and_empty_video_are_reported_with_a_reason(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    put(needles / "x" / "bad.heic", media.make_heic(read_photo(0))[:2000])
    put(needles / "x" / "bad.dng", media.make_dng(read_photo(0))[:5000])
    put(needles / "x" / "empty.mov", b"")
    reasons = {needle.rel: needle.reason for needle in run(haystack, needles).results}
    assert "libheif" in reasons["x/bad.heic"]
    assert "LibRaw" in reasons["x/bad.dng"]
    assert reasons["x/empty.mov"] == "empty file (0 bytes)"


def test_json_gives_each_needles_kind_and_how_it_matched(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    copy_photo(0, needles / "x" / "copy.jpg")
    write_image(needles / "x" / "a.png", cv2.imread(str(haystack / "a.jpg")))
    put(needles / "x" / "clip.mp4", b"video bytes")
    document = json.loads(hs.render_json(run(haystack, needles)))
    by_path = {needle["path"]: needle for needle in document["needles"]}
    assert by_path["x/copy.jpg"]["match"]["method"] == "byte_identical"
    assert by_path["x/a.png"]["match"]["method"] == "same_hash"
    assert by_path["x/clip.mp4"]["kind"] == "video" and by_path["x/clip.mp4"]["status"] == "missing"
    assert document["folders"][0]["by_kind"] == {"photo": {"matched": 2}, "video": {"missing": 1}}


def test_summary_names_what_the_haystack_could_not_read(trees) -> None:
    haystack, needles = trees
    put(haystack / "broken.jpg", b"not a jpeg")
    copy_photo(0, needles / "x" / "a.jpg")
    summary = hs.render_summary(run(haystack, needles))
    assert "  unreadable: broken.jpg: " in summary


def test_backup_with_no_photo_or_video_exits_1_and_says_so(trees) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    put(needles / "notes.txt", b"hello")
    completed = run_tool("-a", haystack, "-n", needles, "--no-cache")
    assert completed.returncode == 1
    assert completed.stdout == "No photos or videos found in the needles folder (1 other file not compared).\n"


def test_a_heic_named_jpg_is_decoded_by_its_content(trees) -> None:
    haystack, needles = trees
    write_image(haystack / "a.jpg", read_photo(0), cv2.IMWRITE_JPEG_QUALITY, 95)
    put(needles / "export" / "IMG_1.JPG", media.make_heic(read_photo(0)))
    assert statuses(run(haystack, needles)) == {"export/IMG_1.JPG": STATUS.MATCHED}


def test_system_folders_are_counted_never_walked(trees) -> None:
    """A NAS's thumbnails of a photo must never vouch for a backup of it."""
    haystack, needles = trees
    write_image(haystack / "@eaDir" / "a.jpg" / "SYNOPHOTO_THUMB_XL.jpg", read_photo(0))
    copy_photo(0, needles / "x" / "a.jpg")
    copy_photo(1, needles / "x" / ".Trashes" / "b.jpg")
    result = run(haystack, needles)
    assert statuses(result) == {"x/.Trashes/": STATUS.NOT_COMPARED, "x/a.jpg": STATUS.MISSING}


def test_without_the_jpeg_xl_plugin_a_jxl_is_unreadable_with_the_reason(trees, monkeypatch) -> None:
    haystack, needles = trees
    copy_photo(0, haystack / "a.jpg")
    put(needles / "x" / "b.jxl", media.make_jxl(read_photo(1)))
    hs._jxl_decoder.cache_clear()
    monkeypatch.setitem(__import__("sys").modules, "pillow_jxl", None)  # import fails as if not installed
    try:
        reasons = {needle.rel: needle.reason for needle in run(haystack, needles).results}
    finally:
        hs._jxl_decoder.cache_clear()
    assert reasons["x/b.jxl"] == "JPEG XL needs pillow-jxl-plugin, which is not installed"


def test_an_image_too_large_to_decode_still_matches_its_byte_identical_copy(trees) -> None:
    from test_bad_input import png_claiming_size

    haystack, needles = trees
    bomb = png_claiming_size(60000, 60000)
    put(haystack / "scans" / "huge.png", bomb)
    put(needles / "x" / "huge copy.png", bomb)
    put(needles / "x" / "other huge.png", png_claiming_size(50000, 50000))
    result = run(haystack, needles)
    assert methods(result)["x/huge copy.png"] == hs.Method.BYTE_IDENTICAL
    reasons = {needle.rel: needle.reason for needle in result.results}
    assert statuses(result)["x/other huge.png"] == STATUS.UNREADABLE and "too large" in reasons["x/other huge.png"]
