#!/usr/bin/env python3
"""Which folders of an old photo backup are not in my photo library yet?

Every photo and RAW file under the haystack (the library) and under the needles (the backup)
gets a perceptual difference hash (dHash), so that a re-encoded, resized or converted copy still
matches where a checksum of the file would not; every match by hash is confirmed by aligning
small thumbnails, so that a burst neighbour is not taken for a copy. Videos and any other file
match a haystack file with the same bytes; sidecars are counted, never compared. Every needle
folder gets a verdict: not in the haystack, partly, or in it (those may be let go).

    python hash_and_search.py --haystack ~/Pictures --needles /media/old-backup
    python hash_and_search.py -a ~/Pictures -n /media/old-backup --distance 8 --list-missing
    python hash_and_search.py -a ~/Pictures -n /media/old-backup --html report.html --copy-missing ~/to-import

Hashes are cached, so a second run over an unchanged library decodes nothing.
Exit status: 0 every needle photo, RAW file and video matched, 1 some did not (or there was
none), 2 usage error or fatal problem (a folder that does not exist or cannot be read, a report
that cannot be written, a copy that failed), 130 interrupted (Ctrl-C), 141 the reader of the
report went away, 143 terminated (SIGTERM).

The pipeline, one section of this file each, top to bottom:

    find      find_files(root) -> Scan: every file under a folder by Kind, and what could not be read
    decode    decode_image(bytes, extension) -> pixels: OpenCV, pillow-heif, pillow-jxl, rawpy;
              image_header(file) -> ImageHeader: the size a decode will take, before decoding
    hash      fingerprint_pixels(pixels) -> Fingerprint: dHash in 8 orientations, the same of the
              thumbnail less its smooth light, a signature
    cache     HashCache: fingerprints by path, size and mtime, in SQLite
    (all)     fingerprint_all(files) -> fingerprints: every file on a thread pool, within one
              memory budget, through the cache; a Tree per root
    index     HammingIndex: the hashes within a distance of a query, without a full scan
    confirm   confirm_many(needle signatures, haystack signatures): a copy, or another shot?
    match     match_needles(haystack, needles) -> NeedleResult per needle; find_hints; folder_verdicts
    report    render_text, render_summary, render_json, render_csv, render_html: each takes the RunResult
    act       copy_missing(result, folder): the unmatched files, copied for import
    run       run(haystack, needles, Settings()) -> RunResult: the whole pipeline, no printing
    command   main(): arguments in, report and exit status out

Library use: `run`, `Settings`, `RunResult` and the renderers are the stable surface
(`__all__`); everything else may change between versions.
"""
from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import ctypes
import dataclasses
import enum
import errno
import functools
import hashlib
import html
import io
import itertools
import json
import math
import os
import posixpath
import re
import shutil
import signal
import sqlite3
import stat
import struct
import sys
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from concurrent.futures import CancelledError, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import BinaryIO, NoReturn, Protocol, TypeVar

__version__ = "2.7.1"
__all__ = [
    "run", "Settings", "RunResult", "Tree", "NeedleResult", "Match", "FolderVerdict", "Fingerprint",
    "NeedleStatus", "Verdict", "Source", "Kind", "Method", "render_text", "render_summary", "render_json",
    "render_csv", "render_html", "make_thumbnails", "copy_missing", "CopyOutcome", "Copied", "Hint",
    "find_files", "decode_image", "fingerprint_pixels", "match_needles", "folder_verdicts", "format_hash",
    "ORIENTATIONS", "HammingIndex", "brute_force_search", "HashCache", "FatalError", "main",
]

DEFAULT_HASH_SIZE = 8
HASH_SIZE_RANGE = range(2, 33)
EXIT_ALL_MATCHED, EXIT_SOME_UNMATCHED, EXIT_FATAL = 0, 1, 2
# As a shell reports a process ended by the signal: Ctrl-C, SIGPIPE (| head), SIGTERM.
EXIT_INTERRUPTED = 128 + signal.SIGINT
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE
EXIT_TERMINATED = 128 + signal.SIGTERM

# Which files are what, by extension, matched case-insensitively. For photos the decoder is
# then chosen by content (decoder_for), and OpenCV picks its own from the content too.
OPENCV_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .jif .png .bmp .dib .tif .tiff .webp .gif .jp2 .j2k .jpf .jpx"
    " .pbm .pgm .ppm .pnm .pxm .pam .sr .ras .hdr .pic .pfm".split())
HEIF_EXTENSIONS = frozenset(".heic .heif .hif .avif .avci".split())  # .hif: Canon's and Fujifilm's HEIF
JPEG_XL_EXTENSIONS = frozenset({".jxl"})
# Camera RAW: the formats LibRaw 0.22 reads. Content cannot tell them from TIFF (most are TIFF
# inside), so the extension decides.
RAW_EXTENSIONS = frozenset(
    ".dng .cr2 .cr3 .crw .nef .nrw .arw .srf .sr2 .orf .rw2 .raf .pef .ptx .srw .x3f .3fr .fff .erf"
    " .kdc .dcr .mrw .mos .mef .raw .rwl .iiq .cap".split())
# Videos a phone or camera leaves beside its photos: never decoded, compared byte for byte.
VIDEO_EXTENSIONS = frozenset(
    ".mov .mp4 .m4v .3gp .3g2 .avi .mkv .mts .m2ts .m2t .ts .wmv .asf .webm .mpg .mpeg .mpe .m2v"
    " .vob .mod .tod .dv .flv .f4v .ogv .insv .360 .mxf .braw .r3d .crm".split())
# Files that describe a photo rather than hold one: edits, metadata, Live Photo adjustments,
# camera thumbnails, GoPro/DJI low-resolution proxies.
SIDECAR_EXTENSIONS = frozenset(".xmp .aae .json .thm .lrv .pp3 .dop .on1 .cos .arp .exv .ctg".split())
# What file managers, cameras and NAS boxes write on their own, by exact name (any case). A
# system folder is not walked: the JPEG thumbnails in a Synology @eaDir must never stand for
# a photo, nor the photos in a recycle bin for a library's.
SYSTEM_FILE_NAMES = frozenset(name.lower() for name in (
    ".DS_Store", "Thumbs.db", "ehthumbs.db", "ehthumbs_vista.db", "desktop.ini", ".picasa.ini", "Picasa.ini",
    ".nomedia", "ZbThumbnail.info", ".localized", "Icon\r"))
SYSTEM_FOLDER_NAMES = frozenset(name.lower() for name in (
    ".Spotlight-V100", ".Trashes", ".fseventsd", ".TemporaryItems", "@eaDir", ".@__thumb", "#recycle",
    "$RECYCLE.BIN", "System Volume Information", ".thumbnails"))
APPLE_DOUBLE_PREFIX = "._"  # macOS writes ._NAME beside NAME on other disks: resource forks, not images
# Never photos, and walking them never ends or hangs (a FIFO, /proc/kmsg): not entered through a
# symbolic link even with --follow-links.
SYSTEM_ROOTS = ("/proc", "/sys", "/dev")

# The signature kept to confirm a match: an exact area-mean thumbnail at twice the hash's,
# smoothed, shrunk to 36 x 36 and stretched to 0..255 so that night and fog photos keep their
# levels: 1,296 bytes an image.
SIGNATURE_SIDE = 36
# The smoothing, as a Gaussian's sigma in signature pixels. Plain block means alias detail
# finer than two signature pixels (lines of text, tile grout, wood grain) into a moire that a
# 2% crop or a 1° straightening redraws, so the confirmation took such copies for changed
# content. On benchmarks/hard_calibration.py at distance 8 (committed photos, halves A / B),
# crops matched 92 / 85% with block means and 98 / 96% with this, straightenings 83 / 83% and
# 96 / 98%. Chosen there with COMPARE_BLUR from 0.4 to 0.6: at 0.25 crops matched 88-95%, at
# 0.5 watermarks 88-96%, at this 96-97% and 94-96%.
SIGNATURE_SMOOTHING = 0.375
# The signature also keeps the finest detail, to tell text apart: 36 x 36 pixels average a meme's
# caption to the same grey band whatever its words (other captions on one template matched 3 + 5
# of 23 + 23 times in hard_calibration_graphics.md). At DETAIL_SIDE (the fine grid at hash size 8)
# a caption's letters are about 10 pixels high. Kept: which DETAIL_CELLS of the 36 x 36 cells
# (4 x 4 fine pixels each) have the most detail, the fine grid less its Gaussian blur of DETAIL_BLUR
# pixels, and the sign of that detail in each of their pixels: 546 bytes, so 1,842 with the
# thumbnail. Chosen with the confirmation's DETAIL_ limits on 46 meme templates and the committed
# photos' calibration (pickled pairs with their fine grids), on the other captions and copies that
# the thumbnail alone accepts at distance 8: with a blur of 3 pixels all 6 captions were turned
# down and one straightened slide; with 2, five copies of slides (crops, straightenings, a rescan)
# too; with 4, 2 of the 6 captions passed; 256 cells let 1 caption pass and turned down 4 copies.
DETAIL_SIDE = 144
DETAIL_BLUR = 3.0
DETAIL_CELLS = 192
DETAIL_CELL = DETAIL_SIDE // SIGNATURE_SIDE  # fine pixels a side of a signature cell
# Below this spread of the signature's levels (1st to 99th percentile of its cells, in grey
# levels of the decoded image) a frame has nothing a person can see: a uniform colour, a black
# frame. Direction-free, unlike a test of left-right steps that refused horizons. The flattest
# generated scene that shows something (fog at 15% contrast) spreads 22; none of the 96 original
# scenes of benchmarks/hard_calibration.md (night, fog and horizon ones included) fell under it,
# nor any of the 134 made from the 46 photos nothing was tuned on (hard_calibration_46.md).
LOW_DETAIL_MAX_SPREAD = 4.0
# From 8 to 16 the calibration accepts no different shot that 8 does not, but the copies gained
# are few (rescans 44-48% to 52-56% on the committed photos, version 2.7), and matching 20,000 x
# 2,000 takes 1.6 s at 8, 4.5 s at 16 (benchmarks/match_benchmark.py, version 2.7.1).
RECOMMENDED_DISTANCE = 8


class Status(enum.StrEnum):
    """A status whose value is what the JSON shows and whose label is what the text report says."""

    label: str

    def __new__(cls, value: str, label: str) -> Status:
        member = str.__new__(cls, value)
        member._value_, member.label = value, label
        return member


# ---------------------------------------------------------------------------------------
# Find files
# ---------------------------------------------------------------------------------------

class Kind(Status):
    """What a file holds. Photos and RAW files are decoded and hashed, videos only compared
    byte for byte; the rest is counted and listed, never compared."""

    PHOTO = "photo", "photo"
    RAW = "raw", "RAW file"
    VIDEO = "video", "video"
    SIDECAR = "sidecar", "sidecar"
    SYSTEM = "system", "system file"
    OTHER = "other", "other file"
    FOLDER = "folder", "folder"  # only for a folder that could not be read: its files are unknown


COMPARED_KINDS = frozenset({Kind.PHOTO, Kind.RAW, Kind.VIDEO})
HASHED_KINDS = frozenset({Kind.PHOTO, Kind.RAW})


def file_kind(name: str) -> Kind:
    if name.lower() in SYSTEM_FILE_NAMES or name.startswith(APPLE_DOUBLE_PREFIX):  # ._IMG.jpg too
        return Kind.SYSTEM
    extension = os.path.splitext(name)[1].lower()
    if extension in OPENCV_EXTENSIONS or extension in HEIF_EXTENSIONS or extension in JPEG_XL_EXTENSIONS:
        return Kind.PHOTO
    if extension in RAW_EXTENSIONS:
        return Kind.RAW
    if extension in VIDEO_EXTENSIONS:
        return Kind.VIDEO
    if extension in SIDECAR_EXTENSIONS:
        return Kind.SIDECAR
    return Kind.OTHER


@dataclass(frozen=True, slots=True)
class FoundFile:
    """A photo, RAW file or video found under a root folder, with what stat said of it."""

    path: str  # as found: the root joined with the relative path
    rel: str  # relative to the root, with '/' separators
    kind: Kind
    size: int
    mtime_ns: int
    identity: tuple[int, int]  # device and inode: the same file under any path or link


@dataclass(frozen=True, slots=True)
class NotCompared:
    """A file that is counted and listed but never compared: a sidecar, a system file, any other."""

    rel: str
    kind: Kind


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A file or folder that could not be checked, and why."""

    rel: str  # a folder's ends with '/'
    reason: str
    kind: Kind


@dataclass(frozen=True, slots=True)
class NotFollowed:
    """A symbolic link to a folder that the walk did not enter, and why."""

    rel: str  # ends with '/'
    reason: str


@dataclass(frozen=True, slots=True)
class Scan:
    """Everything found under one root folder, each list sorted by relative path."""

    files: tuple[FoundFile, ...]  # photos, RAW files and videos: the files compared
    not_compared: tuple[NotCompared, ...]
    unreadable: tuple[Unreadable, ...]
    not_followed: tuple[NotFollowed, ...] = ()
    walked: frozenset[tuple[int, int]] = frozenset()  # every folder entered, by device and inode


def describe_os_error(err: OSError) -> str:
    return err.strerror.lower() if err.strerror else str(err)


def folder_identity(path: str | os.PathLike[str]) -> tuple[int, int]:
    info = os.stat(path)
    return info.st_dev, info.st_ino


def find_files(root: Path, left_out: Container[tuple[int, int]] = frozenset(),
               on_found: Callable[[int], object] = lambda n: None, follow_links: bool = False) -> Scan:
    """Walk root recursively, never into the same folder twice, nor into a folder in left_out
    (by device and inode, so through any link). A symbolic link to a folder is followed when
    the folder lies inside root, anywhere with follow_links, never into a system root."""
    files: list[FoundFile] = []
    not_compared: list[NotCompared] = []
    unreadable: list[Unreadable] = []
    not_followed: list[NotFollowed] = []
    visited: set[tuple[int, int]] = set()
    real_root = os.path.realpath(root)
    pending = [str(root)]
    while pending:
        folder = pending.pop()
        try:
            identity = folder_identity(folder)
            if identity in visited or identity in left_out:
                continue  # a symlink loop, a second link to a folder already walked, the other root
            visited.add(identity)
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as err:
            unreadable.append(Unreadable(relative_path(folder, root) + "/", f"folder: {describe_os_error(err)}",
                                         Kind.FOLDER))
            continue
        subfolders = []
        for entry in entries:
            if _is_folder(entry):
                why_not = why_not_follow(entry.path, real_root, follow_links) if entry.is_symlink() else None
                if entry.name.lower() in SYSTEM_FOLDER_NAMES:
                    not_compared.append(NotCompared(relative_path(entry.path, root) + "/", Kind.SYSTEM))
                elif why_not:
                    not_followed.append(NotFollowed(relative_path(entry.path, root) + "/", why_not))
                else:
                    subfolders.append(entry.path)
                continue
            kind, rel = file_kind(entry.name), relative_path(entry.path, root)
            if kind not in COMPARED_KINDS:
                not_compared.append(NotCompared(rel, kind))
                continue
            try:
                info = entry.stat()
            except OSError as err:
                reason = "broken symbolic link" if entry.is_symlink() else describe_os_error(err)
                unreadable.append(Unreadable(rel, reason, kind))
                continue
            if not stat.S_ISREG(info.st_mode):
                unreadable.append(Unreadable(rel, "not a regular file", kind))
            else:
                files.append(FoundFile(entry.path, rel, kind, info.st_size, info.st_mtime_ns,
                                       (info.st_dev, info.st_ino)))
                on_found(1)
        pending.extend(reversed(subfolders))
    return Scan(tuple(sorted(files, key=lambda file: file.rel)),
                tuple(sorted(not_compared, key=lambda file: file.rel)),
                tuple(sorted(unreadable, key=lambda problem: problem.rel)),
                tuple(sorted(not_followed, key=lambda link: link.rel)), frozenset(visited))


def why_not_follow(link: str, real_root: str, follow_links: bool) -> str | None:
    """None when the walk may enter the folder a symbolic link points to, else why not: the
    walk stays where the user pointed, unless told to follow links, and out of system roots."""
    real = os.path.realpath(link)
    if is_inside(real, real_root):
        return None
    if any(is_inside(real, system) for system in SYSTEM_ROOTS):
        return f"symbolic link to {real}, a system folder"
    return None if follow_links else f"symbolic link to {real}, outside the folder (--follow-links enters it)"


def is_inside(path: str, folder: str) -> bool:
    """Of two real paths. commonpath, not startswith: /photos2 is not inside /photos."""
    return os.path.commonpath([path, folder]) == folder


def _is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def relative_path(path: str, root: Path) -> str:
    rel = os.path.relpath(path, root)
    return rel if os.sep == "/" else PurePath(rel).as_posix()


# ---------------------------------------------------------------------------------------
# Decode
# ---------------------------------------------------------------------------------------

class UnreadableImage(Exception):
    """A file that cannot be decoded as the image its name or content says; the message says why."""


@functools.cache
def _cv2():
    # Imported on first decode: a run answered wholly from the cache never pays its
    # start-up time (about 0.1 s with numpy).
    # Its own pixel limit, a last resort for what image_header cannot size; the variable it reads
    # (CV_IO_MAX_IMAGE_PIXELS is only the macro's name), once, at its first decode.
    os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(OPENCV_MAX_IMAGE_PIXELS))
    import cv2

    # Its decoders' warnings about damaged files would interleave with the report; the
    # damage is reported per file instead.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    cv2.setNumThreads(1)  # the cores are busy decoding other images: no threads within one
    return cv2


def decode_image(data: bytes, extension: str = ".jpg"):
    """Decode a photo or RAW file's bytes to 8-bit BGR pixels, turned as its format says."""
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
    return decoder_for(extension, data[:SNIFF_BYTES])(data)


# ISO-BMFF (HEIF, AVIF) files start with an ftyp box: size, 'ftyp', major brand, minor version,
# then compatible brands. The brands, not the extension, say which codec is inside.
AVIF_BRANDS = frozenset({b"avif", b"avis"})
HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs", b"mif1", b"msf1"})
# A bare JPEG XL codestream, or the ISO-BMFF container's signature box.
JXL_SIGNATURES = (b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")


def _ftyp_brands(head: bytes) -> frozenset[bytes]:
    if head[4:8] != b"ftyp":
        return frozenset()
    size = int.from_bytes(head[:4], "big")
    box = head[8:min(size, len(head))]
    return frozenset(box[i:i + 4] for i in range(0, len(box) - 3, 4) if i != 4)  # skip minor version


def decoder_for(extension: str, head: bytes) -> Callable[[bytes], object]:
    """The decoder for a file: by extension for RAW, else by the first bytes of its content, so
    that a HEIC named .jpg or a JPEG named .heic (both common after phone exports) still decode.
    Everything not recognised goes to OpenCV, as before, so JPEG, PNG, TIFF and WEBP hash as
    they always did."""
    if extension.lower() in RAW_EXTENSIONS:
        return decode_raw
    brands = _ftyp_brands(head)
    if brands & AVIF_BRANDS:  # checked first: AVIF files also carry the generic mif1 brand
        return decode_avif
    if brands & HEIF_BRANDS:
        return decode_heif
    if head.startswith(JXL_SIGNATURES):
        return decode_jxl
    return decode_with_opencv


# Bytes of the file decoder_for needs: an ftyp box rarely holds more than a dozen brands.
SNIFF_BYTES = 64


def decode_with_opencv(data: bytes):
    """JPEG, PNG, TIFF, WEBP and the other formats OpenCV reads, EXIF orientation applied."""
    cv2, np = _cv2(), _np()
    try:
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error as err:
        raise UnreadableImage(f"OpenCV refused it: {_opencv_reason(err)}") from None
    except MemoryError:
        raise UnreadableImage("not enough memory to decode it") from None
    if pixels is None:
        raise UnreadableImage("not an image OpenCV can decode (corrupt, truncated or another format)")
    return pixels


def apply_orientation(pixels, orientation: int):
    """Turn stored pixels as EXIF/TIFF Orientation `orientation` (1-8) asks a viewer to show them."""
    cv2 = _cv2()
    if orientation == 2:
        return cv2.flip(pixels, 1)
    if orientation == 3:
        return cv2.rotate(pixels, cv2.ROTATE_180)
    if orientation == 4:
        return cv2.flip(pixels, 0)
    if orientation == 5:
        return cv2.transpose(pixels)
    if orientation == 6:
        return cv2.rotate(pixels, cv2.ROTATE_90_CLOCKWISE)
    if orientation == 7:
        return cv2.rotate(cv2.transpose(pixels), cv2.ROTATE_180)
    if orientation == 8:
        return cv2.rotate(pixels, cv2.ROTATE_90_COUNTERCLOCKWISE)
    return pixels


def _swaps_sides(orientation: int) -> bool:
    return orientation in (5, 6, 7, 8)


# LibRaw keeps dcraw's flip code, a bit field (4 transpose, 2 flip rows, 1 flip columns), made
# from the TIFF orientation by dcraw's table "50132467"; this is that table inverted.
ORIENTATION_FOR_LIBRAW_FLIP = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


def _to_bgr(pixels, mode: str):
    """8-bit BGR from pixels in a Pillow-style mode: alpha dropped as OpenCV's IMREAD_COLOR drops
    it (not blended), grey repeated in the three channels."""
    cv2 = _cv2()
    if pixels.ndim == 2:
        return cv2.cvtColor(pixels, cv2.COLOR_GRAY2BGR)
    if mode.startswith("BGR"):
        return pixels[:, :, :3]
    return cv2.cvtColor(pixels[:, :, :3], cv2.COLOR_RGB2BGR)


def decode_heif(data: bytes):
    """HEIC/HEIF by libheif (pillow-heif). libheif applies the container's irot/imir (and clap)
    itself, as the HEIF spec says readers must; the EXIF orientation inside a HEIC repeats them
    for other readers and is left alone here, or the picture would be turned twice. 10- and
    12-bit images come down to 8 bits in libheif."""
    pillow_heif = _pillow_heif()
    try:
        heif = pillow_heif.open_heif(data, convert_hdr_to_8bit=True, bgr_mode=True)
        pixels = _np().asarray(heif)  # the primary image, decoded here
    except (ValueError, RuntimeError, OSError, EOFError, SyntaxError) as err:
        raise UnreadableImage(f"libheif refused it: {_first_line(err)}") from None
    except MemoryError:
        raise UnreadableImage("not enough memory to decode it") from None
    return _to_bgr(pixels, heif.mode)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


EXIF_ORIENTATION = 0x0112


def decode_avif(data: bytes):
    """AVIF by Pillow's libavif: OpenCV 5 decodes AVIF to the same pixels but ignores irot/imir.
    Pillow leaves the pixels as stored and reports irot/imir as the EXIF orientation (overriding
    any EXIF tag in the file, as the HEIF spec wants), which is applied here."""
    Image = _pil()
    try:
        with Image.open(io.BytesIO(data), formats=["AVIF"]) as image:
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            if image.mode not in ("RGB", "L"):
                image = image.convert("RGB")  # alpha dropped, as OpenCV drops it
            pixels = _np().asarray(image)
    except (OSError, ValueError, SyntaxError) as err:  # UnidentifiedImageError is an OSError
        raise UnreadableImage(f"libavif refused it: {_first_line(err)}") from None
    except MemoryError:
        raise UnreadableImage("not enough memory to decode it") from None
    return apply_orientation(_to_bgr(pixels, "RGB"), orientation)


def decode_jxl(data: bytes):
    """JPEG XL by libjxl (pillow-jxl-plugin). A JPEG recompressed into JXL (cjxl's default for
    JPEG input) comes back as the original JPEG's exact bytes, which are decoded as every JPEG
    is, so it hashes exactly like the JPEG. Other JXLs come back as pixels with the codestream's
    orientation applied by libjxl; an Exif box is ignored, as the JXL spec says."""
    np = _np()
    try:
        is_jpeg, info, decoded, _icc, _boxes = _jxl_decoder()(data)
    except (RuntimeError, ValueError, OSError) as err:
        raise UnreadableImage(f"libjxl refused it: {_first_line(err)}") from None
    except MemoryError:
        raise UnreadableImage("not enough memory to decode it") from None
    if is_jpeg:
        return decode_with_opencv(bytes(decoded))
    mode = info.mode
    if mode in ("I;16", "F"):  # high bit depth grey, or float: to 8 bits as OpenCV's converters round
        dtype = np.uint16 if mode == "I;16" else np.float32
        samples = np.frombuffer(decoded, dtype).reshape(info.height, info.width)
        scale = 255 / 65535 if mode == "I;16" else 255
        return _to_bgr(np.clip(np.rint(samples * scale), 0, 255).astype(np.uint8), "L")
    channels = len(mode)  # "L", "LA", "RGB", "RGBA": one letter a channel
    pixels = np.frombuffer(decoded, np.uint8).reshape(info.height, info.width, channels)
    return _to_bgr(pixels[:, :, 0] if mode in ("L", "LA") else pixels, "RGB")


# The least long side of an embedded preview that is hashed instead of rendering the raw data.
# The hash comes from a 72 x 72 area-mean thumbnail: the committed photos re-encoded at 640 px
# and more kept every hash bit, at 160-480 px one bit moved in one photo of eight. 1024 keeps a
# margin and takes Sony's 1616 x 1080 previews, while 160 x 120 thumbnails (letterboxed on
# Canons) fall to the rendering. The preview is the camera's own rendering, so it matches the
# camera's JPEG better than any LibRaw rendering can.
PREVIEW_MIN_LONG_SIDE = 1024


def decode_raw(data: bytes):
    """A camera RAW: its embedded preview when it is large enough, else LibRaw's rendering."""
    rawpy = _rawpy()
    try:
        with rawpy.imread(io.BytesIO(data)) as raw:
            preview = _raw_preview(raw)
            if preview is not None:
                return preview
            # Camera white balance and the sRGB curve without auto-brightening, as the camera's
            # JPEG is made (on mosaics made from the committed photos, this alone kept every
            # hash bit; LibRaw's defaults moved 3 bits in 8 photos). half_size takes each 2x2
            # Bayer cell as one pixel: no demosaicing, 4-7x faster, and the hash needs only
            # 72 x 72 cells. LibRaw applies the raw's orientation (flip) itself.
            rgb = raw.postprocess(use_camera_wb=True, half_size=True, no_auto_bright=True,
                                  gamma=(2.4, 12.92), output_bps=8)
    except rawpy.LibRawError as err:
        raise UnreadableImage(f"LibRaw refused it: {_libraw_reason(err)}") from None
    except MemoryError:
        raise UnreadableImage("not enough memory to decode it") from None
    return _to_bgr(rgb, "RGB")


def _libraw_reason(err: Exception) -> str:
    rawpy = _rawpy()
    if isinstance(err, rawpy.LibRawFileUnsupportedError):
        return "not a RAW format LibRaw knows, or a camera it does not support"
    if isinstance(err, (rawpy.LibRawIOError, rawpy.LibRawDataError)):
        return "corrupt or truncated RAW data"
    message = err.args[0] if err.args else type(err).__name__
    return message.decode(errors="replace") if isinstance(message, bytes) else str(message)  # rawpy gives bytes


def _raw_preview(raw):
    """The embedded preview as 8-bit BGR, turned upright, or None if there is none big enough.

    Cameras store the preview as the sensor saw it, not turned; the raw's tags say how to turn
    it (raw.sizes.flip). LibRaw hands a JPEG preview back with that orientation written into a
    new EXIF block at its start, unless the preview starts with EXIF of its own (Fujifilm,
    Panasonic), whose orientation then stands: so the JPEG's own EXIF orientation is the one to
    apply, and flip only when it has none. A preview already stored upright (portrait while the
    sensor image is landscape, as some compacts write it) is not turned again.
    """
    rawpy = _rawpy()
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    orientation = ORIENTATION_FOR_LIBRAW_FLIP.get(raw.sizes.flip, 1)
    if thumb.format == rawpy.ThumbFormat.JPEG:
        header = image_header(io.BytesIO(thumb.data), ".jpg")
        if header is None:
            return None  # a damaged preview: the raw data may still be whole
        width, height, tagged = header.width, header.height, _exif_orientation(thumb.data)
        orientation = orientation if tagged is None else tagged
    else:  # an uncompressed bitmap preview, RGB
        height, width = thumb.data.shape[:2]
    if max(width, height) < PREVIEW_MIN_LONG_SIDE:
        return None
    if _swaps_sides(orientation) and (width >= height) != (raw.sizes.width >= raw.sizes.height):
        orientation = 1  # already upright
    if thumb.format == rawpy.ThumbFormat.JPEG:
        # OpenCV's JPEG decoder, as for any JPEG, but told to leave the EXIF orientation to us.
        cv2, np = _cv2(), _np()
        pixels = cv2.imdecode(np.frombuffer(thumb.data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
        if pixels is None:
            return None
    else:
        pixels = _to_bgr(thumb.data, "RGB")
    return apply_orientation(pixels, orientation)


def _exif_orientation(jpeg: bytes) -> int | None:
    """A JPEG's EXIF Orientation, if it has the tag."""
    try:
        with _pil().open(io.BytesIO(jpeg), formats=["JPEG"]) as image:
            return image.getexif().get(EXIF_ORIENTATION)
    except (OSError, ValueError, SyntaxError):
        return None


def _opencv_reason(err: Exception) -> str:
    text = str(err).strip().splitlines()[-1]
    if "CV_IO_MAX_IMAGE_PIXELS" in text or "validateInputImageSize" in text:
        return "image too large"
    return text.split(") ", 1)[-1] if ") " in text else text


@functools.cache
def _np():
    import numpy

    return numpy


@functools.cache
def _pillow_heif():
    import pillow_heif

    pillow_heif.options.DECODE_THREADS = 1  # as for OpenCV: the other cores decode other images
    return pillow_heif


@functools.cache
def _pil():
    from PIL import AvifImagePlugin, Image

    AvifImagePlugin.DEFAULT_MAX_THREADS = 1  # as for OpenCV
    # Pillow only reads headers and AVIF here; its decompression-bomb check would make the
    # dimension reader fail on exactly the big images it is asked about. OpenCV, libheif and
    # libavif keep their own limits.
    Image.MAX_IMAGE_PIXELS = None
    return Image


@functools.cache
def _jxl_decoder():
    try:  # optional: its licence is the GPL, unlike the other decoders' (see the README)
        from pillow_jxl import Decoder
    except ImportError:
        raise UnreadableImage("JPEG XL needs pillow-jxl-plugin, which is not installed") from None
    return Decoder(num_threads=0)  # 0: decode on the calling thread only, as for OpenCV


@functools.cache
def _rawpy():
    import rawpy

    return rawpy


# ---------------------------------------------------------------------------------------
# Decode within a memory budget: open without blocking, size from the header, then decode
# ---------------------------------------------------------------------------------------

# Everything the decodes in flight may hold at once, their files' bytes included, shared by
# the threads (DecodeBudget). Peak RSS is about the interpreter with OpenCV, numpy and the
# cache (73 MiB on the sample trees) + this budget + allocator slack: 654 MiB measured for
# --jobs 2 over three 100-megapixel images, a bomb and a 64 GiB sparse file (1020 MiB without
# the budget; tests/test_hostile_input.py), under the 1 GiB promised (README, --help).
DECODE_BUDGET_BYTES = 768 * 2**20

# Peak bytes per pixel of a decode and fingerprint_pixels, above the file's bytes: ru_maxrss
# of one decode of 16- and 100-megapixel images. The decoder's buffer plus the BGR result, 6
# for 8- and 16-bit alike (IMREAD_COLOR strips 16 bits while decoding); hashing stays under
# that peak (its grey copy is 1 byte a pixel).
DECODE_BYTES_PER_PIXEL = {
    "JPEG": 6, "PNG": 6, "TIFF": 6, "WEBP": 6, "BMP": 6, "DIB": 6, "PPM": 6, "PAM": 6, "SUN": 6,
    "GIF": 12,  # 12.03 measured: palette frame, RGBA canvas, BGR result
    "HDR": 16,  # 15.03: float RGB, then 8-bit BGR
    "JPEG2000": 17,  # 16.11: OpenJPEG's int32 planes
    "PFM": 25,  # 24.04: float planes, float BGR, 8-bit BGR
    "HEIF": 7,  # 6.39 by libheif
    "AVIF": 13,  # 12.18 by Pillow's libavif: YUV planes, RGB, BGR
    "JXL": 7,  # 6.22 by libjxl
    "RAW": 6,  # of the sensor's photosites: 4.86 rendered at half size; a preview is a JPEG at most that size
}
# A progressive JPEG keeps every DCT coefficient, 2 bytes per component per pixel, beside a
# 3-byte output buffer: measured 9.03 for 3 components (4:4:4) and 11.02 for CMYK.
PROGRESSIVE_JPEG_OUTPUT_BYTES_PER_PIXEL = 3
COEFFICIENT_BYTES = 2

# What the header cannot tell is left to OpenCV's own check, with the budget's pixels at the
# cheapest rate.
OPENCV_MAX_IMAGE_PIXELS = DECODE_BUDGET_BYTES // min(DECODE_BYTES_PER_PIXEL.values())

# O_NONBLOCK: opening a FIFO swapped in after the walk returns at once instead of waiting for
# a writer; fstat then refuses it. It changes nothing for a regular file.
OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# Bytes of a file's start that image_header reads: every header here but TIFF's (read where
# its offsets point) lies in the first 4 KiB, but a HEIF's meta box, a RAW's maker notes or
# a JPEG XL container's boxes before the codestream can take more.
HEADER_BYTES = 4096
CONTAINER_HEADER_BYTES = 1 << 20


class ImageTooLarge(UnreadableImage):
    """A file or image over the limits: the message gives the numbers."""


def open_regular_file(path: str) -> BinaryIO:
    """The file opened for reading, if it is a regular file: never blocks, whatever the path
    names by now. Raises OSError, or UnreadableImage for anything but a regular file."""
    fd = os.open(path, OPEN_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnreadableImage("not a regular file")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bounded(file: BinaryIO, max_bytes: int) -> bytes:
    """All of an open file, refusing one over max_bytes without reading it, or one that grew
    past it since (the read stops one byte over)."""
    size = os.fstat(file.fileno()).st_size
    if size > max_bytes:
        raise ImageTooLarge(file_too_large_reason(size, max_bytes))
    file.seek(0)
    data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageTooLarge(f"file too large: it grew past {format_bytes(max_bytes)} while read")
    return data


def file_too_large_reason(size: int, limit: int) -> str:
    return f"file too large: {format_bytes(size)}; the limit is {format_bytes(limit)}"


def format_bytes(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} bytes"
    exponent = min(3, int(math.log(n, 1024)))
    return f"{n / 1024 ** exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


@dataclass(frozen=True, slots=True)
class ImageHeader:
    """What an image's header says, before any pixel is decoded: the size as stored."""

    format: str  # a key of DECODE_BYTES_PER_PIXEL, or what Pillow calls it
    width: int
    height: int
    bits: int = 8  # per sample: 12 for a 12-bit JPEG
    progressive_components: int = 0  # of a progressive JPEG, else 0

    def decode_bytes(self) -> int:
        if self.progressive_components:
            per_pixel = max(DECODE_BYTES_PER_PIXEL["JPEG"], PROGRESSIVE_JPEG_OUTPUT_BYTES_PER_PIXEL
                            + COEFFICIENT_BYTES * self.progressive_components)
        else:
            per_pixel = DECODE_BYTES_PER_PIXEL.get(self.format, max(DECODE_BYTES_PER_PIXEL.values()))
        return self.width * self.height * per_pixel


def image_header(file: BinaryIO, extension: str, container_bytes: int = CONTAINER_HEADER_BYTES) -> ImageHeader | None:
    """The header of an open image file, read without decoding it, by the decoder that will
    decode it; None when it cannot tell (OpenCV's own pixel limit then applies). RAW, HEIF,
    AVIF and JPEG XL headers are looked for in the first container_bytes."""
    file.seek(0)
    head = file.read(HEADER_BYTES)
    decoder = decoder_for(extension, head[:SNIFF_BYTES])
    try:
        if decoder in (decode_raw, decode_heif, decode_avif, decode_jxl):
            head += file.read(container_bytes - len(head))
        if decoder is decode_raw:
            with _rawpy().imread(io.BytesIO(head)) as raw:  # opening parses headers only
                return ImageHeader("RAW", raw.sizes.raw_width, raw.sizes.raw_height)
        if decoder in (decode_heif, decode_avif):  # libheif reads AVIF's boxes too
            return ImageHeader("HEIF" if decoder is decode_heif else "AVIF", *_pillow_heif().open_heif(head).size)
        if decoder is decode_jxl:
            size = _jxl_dimensions(head)
            return None if size is None else ImageHeader("JXL", *size)
        if head.startswith(b"\xff\xd8"):
            file.seek(2)
            return _jpeg_frame(file)
        if header := _own_header(head):
            return header
        file.seek(0)
        # Pillow's open reads headers only; TIFF's lie where its offsets say, the others' in the head.
        with _pil().open(file if head[:4] in (b"II*\0", b"MM\0*") else io.BytesIO(head)) as image:
            return ImageHeader(image.format or "", *image.size)
    except Exception:  # any reader's complaint means only that the header cannot tell
        return None


# Start-of-frame markers: every SOFn but DHT (C4), JPG (C8) and DAC (CC).
JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_PROGRESSIVE_SOF = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM and RSTn carry no length


def _jpeg_frame(file: BinaryIO) -> ImageHeader | None:
    """Walk the marker segments from after SOI to the frame header. Pillow refuses 12-bit
    frames outright; this also tells progressive from baseline."""
    while True:
        if file.read(1) != b"\xff":
            return None
        marker = file.read(1)
        while marker == b"\xff":  # fill bytes
            marker = file.read(1)
        if not marker or marker[0] in (0xD9, 0xDA):  # EOI or SOS before any frame
            return None
        if marker[0] in JPEG_STANDALONE:
            continue
        length_bytes = file.read(2)
        if len(length_bytes) < 2 or (length := struct.unpack(">H", length_bytes)[0]) < 2:
            return None
        body = file.read(length - 2)
        if marker[0] in JPEG_SOF:
            if len(body) < 6:
                return None
            bits, height, width, components = struct.unpack(">BHHB", body[:6])
            if not height or not width:  # height 0: given later by a DNL marker
                return None
            progressive = components if marker[0] in JPEG_PROGRESSIVE_SOF else 0
            return ImageHeader("JPEG", width, height, bits, progressive)


def _own_header(head: bytes) -> ImageHeader | None:
    """Radiance HDR, PFM and PAM, whose size Pillow cannot tell, and WebP, whose size Pillow
    tells only from the whole file."""
    try:
        if head.startswith(b"RIFF") and head[8:12] == b"WEBP":
            chunk = head[12:16]
            if chunk == b"VP8X":  # the canvas: 24-bit sizes minus one
                return ImageHeader("WEBP", 1 + int.from_bytes(head[24:27], "little"),
                                   1 + int.from_bytes(head[27:30], "little"))
            if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # lossy: 14-bit sizes after the start code
                width, height = struct.unpack("<HH", head[26:30])
                return ImageHeader("WEBP", width & 0x3FFF, height & 0x3FFF)
            if chunk == b"VP8L" and head[20] == 0x2F:  # lossless: 14-bit sizes minus one
                bits = int.from_bytes(head[21:25], "little")
                return ImageHeader("WEBP", 1 + (bits & 0x3FFF), 1 + (bits >> 14 & 0x3FFF))
        elif head.startswith((b"#?RADIANCE", b"#?RGBE")):
            end = head.index(b"\n\n") + 2  # the variables end with an empty line
            y_axis, height, x_axis, width = head[end:head.index(b"\n", end)].split()
            if y_axis in (b"-Y", b"+Y") and x_axis in (b"+X", b"-X"):
                return ImageHeader("HDR", int(width), int(height))
        elif head[:3] in (b"PF\n", b"Pf\n"):
            width, height = head[3:].split(maxsplit=2)[:2]
            return ImageHeader("PFM", int(width), int(height))
        elif head.startswith(b"P7\n"):
            fields = dict(line.split(maxsplit=1) for line in head[3:head.index(b"ENDHDR")].splitlines()
                          if line.strip() and not line.startswith(b"#"))
            return ImageHeader("PAM", int(fields[b"WIDTH"]), int(fields[b"HEIGHT"]))
    except (ValueError, KeyError, IndexError):
        pass
    return None


# JXL SizeHeader aspect ratios (ratio field 1-7): width = height * numerator // denominator.
JXL_RATIOS = {1: (1, 1), 2: (12, 10), 3: (4, 3), 4: (3, 2), 5: (16, 9), 6: (5, 4), 7: (2, 1)}


def _jxl_codestream(data: bytes) -> bytes | None:
    """The start of the codestream: the file itself, or the jxlc/first jxlp box of the container."""
    if data.startswith(JXL_SIGNATURES[0]):
        return data
    at = 0
    while at + 8 <= len(data):
        size, kind = int.from_bytes(data[at:at + 4], "big"), data[at + 4:at + 8]
        header = 8
        if size == 1:  # a 64-bit size follows the type
            size, header = int.from_bytes(data[at + 8:at + 16], "big"), 16
        body = data[at + header:len(data) if size == 0 else at + size]
        if kind == b"jxlc":
            return body
        if kind == b"jxlp":
            return body[4:]  # a partial codestream's first 4 bytes are its index
        if size == 0 or size < header:
            return None
        at += size
    return None


def _jxl_dimensions(data: bytes) -> tuple[int, int] | None:
    """Width and height as stored, from the SizeHeader (JPEG XL part 1, A.2): the first few
    bytes of the codestream, nothing decoded."""
    stream = _jxl_codestream(data)
    if stream is None or not stream.startswith(JXL_SIGNATURES[0]):
        return None
    bits = int.from_bytes(stream[2:32], "little")  # fields are read from the low bit up
    position = 0

    def read(count: int) -> int:
        nonlocal position
        value = (bits >> position) & ((1 << count) - 1)
        position += count
        return value

    def read_size() -> int:
        return 1 + read((9, 13, 18, 30)[read(2)])

    small = read(1)
    height = 8 * (1 + read(5)) if small else read_size()
    ratio = read(3)
    if ratio:
        numerator, denominator = JXL_RATIOS[ratio]
        return height * numerator // denominator, height
    return 8 * (1 + read(5)) if small else read_size(), height


def decode_need(header: ImageHeader | None, file_size: int, budget: int) -> int:
    """Bytes to reserve for decoding a file: its bytes and the decoder's peak. A header that
    could not be read takes the whole budget, so that the file decodes alone."""
    return budget if header is None else file_size + header.decode_bytes()


def too_large_reason(header: ImageHeader, need: int, budget: int) -> str:
    return (f"image too large: {header.width} x {header.height} pixels ({header.width * header.height / 1e6:.0f}"
            f" megapixels) needs about {format_bytes(need)} to decode; the limit is {format_bytes(budget)}")


def jpeg_precision_reason(header: ImageHeader | None) -> str | None:
    """Why OpenCV returned no pixels for a JPEG that is not damaged: OpenCV 5's JPEG decoder
    reads 8-bit samples only and refuses 12- and 16-bit ones without a message."""
    if header is not None and header.format == "JPEG" and header.bits != 8:
        return f"unsupported: a {header.bits}-bit JPEG, which OpenCV cannot decode"
    return None


# ---------------------------------------------------------------------------------------
# Hash
# ---------------------------------------------------------------------------------------

def to_grey(pixels):
    """Every format's pixels reach grey the same way: from the decoded colours."""
    cv2 = _cv2()
    return pixels if pixels.ndim == 2 else cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)


def area_sums(grey, width: int, height: int):
    """Shrink an 8-bit greyscale image to width x height cells, exactly: each cell holds the
    mean of the pixels under it (partly covered pixels weighted by the share inside) times
    the image's pixel count, an integer.

    cv2.resize(INTER_AREA) computes the same means, rounded, but is only fast when the scale
    factors are whole numbers: for a 4000 x 3000 photo it takes 40 ms, this about 1 ms.
    """
    cv2, np = _cv2(), _np()
    rows, row_parts = _cell_edges(grey.shape[0], height)
    cols, col_parts = _cell_edges(grey.shape[1], width)
    # The one pass over every pixel: sums of the whole rows inside each band of rows.
    whole_rows = np.stack([
        cv2.reduce(grey[start:stop], 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S)[0] if stop > start
        else np.zeros(grey.shape[1], np.int32)
        for start, stop in itertools.pairwise(rows.tolist())])
    # The rows cut by band edges join in after the columns are shrunk, when they are small.
    return _add_cut_parts(_shrink_columns(whole_rows, cols, col_parts),
                          _shrink_columns(grey[rows], cols, col_parts), row_parts)


def _cell_edges(pixels: int, cells: int):
    """Where the edges of `cells` equal cells over `pixels` pixels fall: the pixel each edge
    cuts, and how much of that pixel lies before the edge, in 1/cells of a pixel."""
    np = _np()
    edges = np.arange(cells + 1) * pixels  # in 1/cells of a pixel
    cut = np.minimum(edges // cells, pixels - 1)  # the last edge takes all of the last pixel
    return cut, edges - cut * cells


def _add_cut_parts(whole, cut, parts):
    """Cell sums (times the cell count) from the sums of whole pixels between edges plus the
    parts of the cut pixels inside each cell, along the first axis."""
    return whole * len(whole) + parts[1:, None] * cut[1:] - parts[:-1, None] * cut[:-1]


def _shrink_columns(array, cols, col_parts):
    """Cell sums (times the cell count) over the columns of each row of array."""
    np = _np()
    whole = np.add.reduceat(array, cols, axis=1, dtype=np.int64)[:, :-1]
    whole[:, cols[1:] == cols[:-1]] = 0  # reduceat gives the cut pixel, not 0, for no whole pixel
    return _add_cut_parts(whole.T, array[:, cols].astype(np.int64).T, col_parts).T


def dhash(small) -> int:
    """Bit i (row-major over the pairs) is set when the right pixel of pair i is brighter."""
    np = _np()
    brighter = small[:, 1:] > small[:, :-1]
    return int.from_bytes(np.packbits(brighter, axis=None, bitorder="little").tobytes(), "little")


def signature_cells(means):
    """The fine thumbnail's means, smoothed by SIGNATURE_SMOOTHING, on the signature's 36 x 36
    grid (exact 4 x 4 blocks at hash size 8)."""
    cv2, np = _cv2(), _np()
    sigma = SIGNATURE_SMOOTHING * means.shape[0] / SIGNATURE_SIDE
    smooth = cv2.GaussianBlur(means.astype(np.float32), (0, 0), sigma, borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(smooth, (SIGNATURE_SIDE, SIGNATURE_SIDE), interpolation=cv2.INTER_AREA)


def make_signature(cells, fine) -> bytes:
    """The thumbnail, stretched to 0..255, then detail_signs of the fine grid (detail_grid)."""
    np = _np()
    low, high = float(cells.min()), float(cells.max())
    return np.rint((cells - low) * (255 / max(high - low, 1e-9))).astype(np.uint8).tobytes() + detail_signs(fine)


def detail_signs(means) -> bytes:
    """Which DETAIL_CELLS cells of the signature's grid hold the most fine detail (one bit per
    cell, row by row), then the sign of the detail in each pixel of those cells, cell by cell."""
    cv2, np = _cv2(), _np()
    grid = means.astype(np.float32)
    if grid.shape[0] != DETAIL_SIDE:  # another hash size
        grid = cv2.resize(grid, (DETAIL_SIDE, DETAIL_SIDE),
                          interpolation=cv2.INTER_AREA if grid.shape[0] > DETAIL_SIDE else cv2.INTER_LINEAR)
    detail = grid - cv2.GaussianBlur(grid, (0, 0), DETAIL_BLUR)
    cells = detail.reshape(SIGNATURE_SIDE, DETAIL_CELL, SIGNATURE_SIDE, DETAIL_CELL).swapaxes(1, 2).reshape(
        SIGNATURE_SIDE ** 2, DETAIL_CELL ** 2)
    kept = np.zeros(SIGNATURE_SIDE ** 2, bool)
    kept[np.argsort(np.abs(cells).sum(axis=1), kind="stable")[-DETAIL_CELLS:]] = True
    return np.packbits(kept).tobytes() + np.packbits(cells[kept] > 0).tobytes()


@functools.cache
def _cell_pixels():
    """Each signature cell's pixels on the fine grid (flat positions), cell by cell."""
    np = _np()
    y, x = np.mgrid[0:DETAIL_CELL, 0:DETAIL_CELL]
    row, column = np.divmod(np.arange(SIGNATURE_SIDE ** 2), SIGNATURE_SIDE)
    return (row[:, None] * DETAIL_CELL + y.ravel()) * DETAIL_SIDE + column[:, None] * DETAIL_CELL + x.ravel()


def unpack_detail(signature: bytes):
    """The detail a signature keeps: the flat positions on the fine grid of its kept pixels,
    and the sign of each (+1 or -1)."""
    np = _np()
    bits = np.unpackbits(np.frombuffer(signature, np.uint8, offset=SIGNATURE_SIDE ** 2))
    kept = bits[:SIGNATURE_SIDE ** 2].astype(bool)
    return _cell_pixels()[kept].ravel(), bits[SIGNATURE_SIDE ** 2:][:DETAIL_CELLS * DETAIL_CELL ** 2] * 2.0 - 1


def is_low_detail(cells) -> bool:
    """No visible structure in either direction, whatever the image's brightness: the spread of
    its levels, not the size of its horizontal steps (a night photo or a horizon has small steps
    but a picture a person recognises). Blank frames match each other by hash: no evidence."""
    low, high = _np().percentile(cells, [1, 99])
    return float(high - low) < LOW_DETAIL_MAX_SPREAD


def format_hash(value: int, hash_size: int) -> str:
    return f"{value:0{(hash_size * hash_size + 3) // 4}x}"


# The needle turned by k quarter turns clockwise, after mirroring left-right for k >= 4.
ORIENTATIONS = ("as is", "turned 90° clockwise", "turned 180°", "turned 90° counter-clockwise",
                "mirrored", "mirrored and turned 90° clockwise", "mirrored and turned 180°",
                "mirrored and turned 90° counter-clockwise")


def orient(square, k: int):
    np = _np()
    return np.rot90(square if k < 4 else square[:, ::-1], -(k % 4))


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """What hashing one file gave: its hashes and signature, or why there are none."""

    digest: bytes  # of the file's bytes, when taken (b"" if not): finds byte-for-byte copies
    hashes: tuple[int, ...] = ()  # the dHash of the image in each of the ORIENTATIONS
    low_detail: bool = False
    signature: bytes = b""  # a SIGNATURE_SIDE-square greyscale thumbnail and its fine detail, to confirm matches
    reason: str | None = None  # why the file could not be hashed
    damage: str | None = None  # what the decoder said of a damaged image it still decoded ("": not yet known)
    flat_hashes: tuple[int, ...] = ()  # the dHash, in each orientation, of the thumbnail less its smooth light

    @property
    def hash(self) -> int | None:
        return self.hashes[0] if self.hashes else None


def fingerprint_pixels(pixels, hash_size: int) -> Fingerprint:
    """Hashes in every orientation and the signature, all from one exact grid of means: the
    signature from it whole, the hashes from the thumbnail of its 2 x 2 blocks, whose side,
    hash_size * (hash_size + 1), splits into whole blocks both ways: a block grid of
    hash_size + 1 columns and hash_size rows is the dHash grid, turned or not."""
    grey = to_grey(pixels)
    side = hash_size * (hash_size + 1)
    fine = area_sums(grey, 2 * side, 2 * side)
    thumbnail = block_sums(fine, side, side)
    flat = without_smooth_light(thumbnail.astype(_np().float64))
    hashes, flat_hashes = (tuple(dhash(block_sums(orient(square, k), hash_size + 1, hash_size))
                                 for k in range(len(ORIENTATIONS))) for square in (thumbnail, flat))
    means = fine / (grey.shape[0] * grey.shape[1])
    cells = signature_cells(means)
    return Fingerprint(b"", hashes, is_low_detail(cells), make_signature(cells, detail_grid(grey, means)),
                       flat_hashes=flat_hashes)


def detail_grid(grey, means):
    """The grid the fine detail is taken from: the grid of means, or for an image under
    DETAIL_SIDE pixels on a side, the image enlarged smoothly (bicubic) to DETAIL_SIDE square,
    its longer side first shrunk by area means if it is longer. The means of a small image
    repeat each of its pixels over several cells, and the detail of those steps is not the
    picture's: on benchmarks/thumbnail_benchmark.py, version 2.7.0 confirmed 110, 108, 158, 174,
    210, 187 and 224 of 230 copies at 40 to 88 pixels, this 110 to 229, accepting no other
    content at those sizes either way (bilinear enlarging: fewer copies than bicubic)."""
    cv2, np = _cv2(), _np()
    height, width = grey.shape
    if min(height, width) >= DETAIL_SIDE:
        return means
    shrunk = cv2.resize(grey.astype(np.float32), (min(width, DETAIL_SIDE), min(height, DETAIL_SIDE)),
                        interpolation=cv2.INTER_AREA)
    return cv2.resize(shrunk, (DETAIL_SIDE, DETAIL_SIDE), interpolation=cv2.INTER_CUBIC)


@functools.cache
def smooth_light_basis(side: int):
    """The light that varies smoothly over a square of this side: a constant, tilts along x and
    y, and the quadratics (a vignette's falloff, uneven paper or lighting). Returns the basis
    as columns over the pixels and its pseudo-inverse. The span is the same whichever way the
    square is turned or mirrored, so taking it out commutes with orient()."""
    np = _np()
    y, x = np.mgrid[0:side, 0:side].astype(np.float64)
    u, v = (x - (side - 1) / 2) / (side / 2), (y - (side - 1) / 2) / (side / 2)
    basis = np.stack([a.ravel() for a in (np.ones_like(u), u, v, u * u + v * v, u * u - v * v, u * v)], axis=1)
    return basis, np.linalg.pinv(basis)


def without_smooth_light(squares):
    """Each square (or a stack of them) less its least-squares fit by the smooth light: what a
    vignette, a filter's falloff or uneven lighting leave unchanged."""
    side = squares.shape[-1]
    flat = squares.reshape(-1, side * side)
    basis, inverse = (a.astype(flat.dtype, copy=False) for a in smooth_light_basis(side))  # float32 stacks: twice as fast
    return (flat - (flat @ inverse.T) @ basis.T).reshape(squares.shape)


def block_sums(square, width: int, height: int):
    """Sums over width x height equal blocks of a square whose side both divide."""
    side = square.shape[0]
    return square.reshape(height, side // height, width, side // width).sum(axis=(1, 3))


class Source(Status):
    """Where a fingerprint came from. A file that could not be read is tried again next run."""

    FROM_CACHE = "from_cache", "from cache"
    BYTE_COPY = "byte_identical", "byte-identical"
    DECODED = "decoded", "decoded"
    DIGEST_ONLY = "digest_only", "read for a digest"  # a video whose size meets a file of the other tree
    SIZE_ONLY = "size_only", "size only"  # a video whose size meets none: not read at all
    NOT_READ = "not_read", "not read"


def fingerprint_file(file: FoundFile, hash_size: int, haystack_by_digest: Mapping[bytes, Fingerprint],
                     want_digest: bool, cached: Fingerprint | None = None, *,
                     budget: DecodeBudget | None = None, messages: DecoderMessages | None = None,
                     ) -> tuple[Fingerprint, Source]:
    """Read one file and hash it, unless a haystack file with the same bytes is known; say
    which it did. The digest of the bytes is taken only when wanted (a file of the other
    tree has the same size); a cached fingerprint that lacks it only gets it. A video is
    never decoded: it is read for its digest, or not at all. An image is decoded only once
    its header's size fits the budget, within a reservation of it. A fingerprint whose
    decode drew a decoder message has damage "" (check it alone: DecoderMessages). Never
    raises for a bad file."""
    if file.size == 0:  # two empty files are the same bytes, and hold no photo
        return Fingerprint(b"", reason="empty file (0 bytes)"), Source.NOT_READ
    if file.kind not in HASHED_KINDS and not want_digest:
        return Fingerprint(b""), Source.SIZE_ONLY
    budget = budget or DecodeBudget(DECODE_BUDGET_BYTES)
    messages = messages or DecoderMessages()
    try:
        with open_regular_file(file.path) as stream:
            if file.kind not in HASHED_KINDS or cached is not None:  # in blocks: a video may be larger than the memory
                digest = hashlib.file_digest(stream, "sha256").digest() if want_digest else b""
                if cached is not None:
                    return dataclasses.replace(cached, digest=digest), Source.FROM_CACHE
                return Fingerprint(digest), Source.DIGEST_ONLY
            return _decode_within(stream, os.path.splitext(file.path)[1], hash_size, haystack_by_digest,
                                  want_digest, budget, messages)
    except UnreadableImage as err:  # not a regular file (any more), or too large to read
        return Fingerprint(b"", reason=str(err)), Source.NOT_READ
    except OSError as err:
        return Fingerprint(b"", reason=describe_os_error(err)), Source.NOT_READ
    except MemoryError:  # not kept in the cache: another run may have the memory
        return Fingerprint(b"", reason="not enough memory to read or decode it"), Source.NOT_READ
    except Exception as err:  # one strange file must not end a run over thousands
        return Fingerprint(b"", reason=f"unexpected error while hashing: {err!r}"), Source.DECODED


def _decode_within(stream: BinaryIO, extension: str, hash_size: int, haystack_by_digest: Mapping[bytes, Fingerprint],
                   want_digest: bool, budget: DecodeBudget, messages: DecoderMessages) -> tuple[Fingerprint, Source]:
    """fingerprint_file's work for a photo or RAW file: its header, then its bytes and pixels
    within a reservation of the budget, so that nothing decoded outlives the reservation."""
    def too_large(reason: str) -> tuple[Fingerprint, Source]:
        # Not decoded, but its digest is streamed: a byte-identical copy still matches.
        stream.seek(0)
        digest = hashlib.file_digest(stream, "sha256").digest() if want_digest else b""
        return Fingerprint(digest, reason=reason), Source.DECODED

    header = image_header(stream, extension)
    size = os.fstat(stream.fileno()).st_size
    need = decode_need(header, size, budget.total)
    if header is not None and need > budget.total:
        return too_large(too_large_reason(header, need, budget.total))
    if size > budget.total:
        return too_large(file_too_large_reason(size, budget.total))
    with budget.reserve(need):
        data = read_bounded(stream, budget.total)
        digest = hashlib.sha256(data).digest() if want_digest else b""  # 2 ms for a 12-megapixel JPEG
        if digest in haystack_by_digest:
            return haystack_by_digest[digest], Source.BYTE_COPY
        if header is None:  # the whole budget is held: the whole file may tell what its start did not
            header = image_header(io.BytesIO(data), extension, len(data))
            need = decode_need(header, len(data), budget.total)
            if header is not None and need > budget.total:
                return Fingerprint(digest, reason=too_large_reason(header, need, budget.total)), Source.DECODED
        try:
            fingerprint, suspect = messages.watch(lambda: fingerprint_pixels(decode_image(data, extension), hash_size))
        except UnreadableImage as err:
            return Fingerprint(digest, reason=jpeg_precision_reason(header) or str(err)), Source.DECODED
    return dataclasses.replace(fingerprint, digest=digest, damage="" if suspect else None), Source.DECODED


# ---------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------

# Bump when a change to decoding or hashing changes any value: older records are then ignored.
ALGORITHM_VERSION = 6  # 2: the 36 x 36 stretched signature, low detail by the spread of levels; 3: flat hashes;
# 4: the signature smoothed before it is shrunk (the hashes are those of 3); 5: the signature keeps fine detail;
# 6: the fine detail of an image under DETAIL_SIDE pixels a side comes from it enlarged smoothly (detail_grid)
CACHE_SCHEMA_VERSION = 4  # 2: the column "error" became "reason"; 3: "damage" added; 4: "flat_hashes" added
CACHE_BATCH = 64  # records per transaction: the most that Ctrl-C or kill -9 can lose
CACHE_LOCK_TIMEOUT_S = 30.0  # how long to wait for another run's write to finish
CACHE_FILE_NAME = "fingerprints.sqlite3"
# SQLite's codes for a file that is not a database, or a damaged one: rebuilt, not just skipped.
SQLITE_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}
# The table, written down once: created from this, and checked against it (check_layout).
CACHE_TABLE = """
    CREATE TABLE fingerprints (
        path BLOB NOT NULL, hash_size INTEGER NOT NULL, algorithm INTEGER NOT NULL,
        size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, digest BLOB NOT NULL,
        hashes TEXT, low_detail INTEGER NOT NULL, signature BLOB NOT NULL, reason TEXT,
        damage TEXT, flat_hashes TEXT,
        PRIMARY KEY (path, hash_size)) WITHOUT ROWID"""


def default_cache_path() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("hash_and_search", appauthor=False)) / CACHE_FILE_NAME


def _while_busy(statement: Callable[[], object]) -> None:
    """Run a statement, again while another connection holds the lock it needs. Switching a
    new file to WAL fails at once in that case: SQLite's busy timeout does not wait for it."""
    deadline = time.monotonic() + CACHE_LOCK_TIMEOUT_S
    while True:
        try:
            statement()
            return
        except sqlite3.OperationalError as err:
            if getattr(err, "sqlite_errorname", None) != "SQLITE_BUSY" or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def table_layout(db: sqlite3.Connection, table: str) -> list[tuple[object, ...]]:
    """Each column's position, name, declared type, NOT NULL and primary-key rank."""
    return [(cid, name, kind.upper(), notnull, pk)
            for cid, name, kind, notnull, _default, pk in db.execute(f"PRAGMA table_info({table})")]


class LayoutMismatch(Exception):
    """The table differs from the one this version creates: rebuilt like a damaged file."""


def check_layout(db: sqlite3.Connection, table: str, create_statement: str) -> None:
    """Raise LayoutMismatch unless table is as create_statement makes it (run in memory, so
    that the layout is written down once)."""
    with contextlib.closing(sqlite3.connect(":memory:")) as reference:
        reference.execute(create_statement)
        expected = table_layout(reference, table)
    found = table_layout(db, table)
    if found != expected:
        raise LayoutMismatch(f"its table has other columns ({', '.join(str(column[1]) for column in found) or 'none'})")


class HashCache:
    """Fingerprints of files hashed before, valid while a file keeps its path, size and mtime.

    A problem with the cache file costs one warning and the cache, never the run.
    """

    def __init__(self, path: Path, hash_size: int, warn: Callable[[str], None]):
        self.path, self.hash_size, self.warn = path, hash_size, warn
        self.pending: list[tuple[object, ...]] = []
        self.db: sqlite3.Connection | None = None
        try:
            self.db = self._connect()
        except LayoutMismatch as err:  # of the right version, yet not this table: as damaged
            self._rebuild(err)
        except sqlite3.DatabaseError as err:
            if getattr(err, "sqlite_errorname", None) in SQLITE_DAMAGED:
                self._rebuild(err)
            else:
                self._give_up(err)
        except OSError as err:
            self._give_up(err)

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # IMMEDIATE: a write transaction takes the write lock before it reads, waiting for
        # another run's write; a read first would fail at once if that run wrote meanwhile.
        db = sqlite3.connect(self.path, timeout=CACHE_LOCK_TIMEOUT_S, isolation_level="IMMEDIATE")
        try:
            # WAL: readers never wait for a writer, so two runs can share the file; with
            # synchronous=NORMAL a crash may lose the last commits but never the file.
            _while_busy(lambda: db.execute("PRAGMA journal_mode=WAL"))
            db.execute("PRAGMA synchronous=NORMAL")
            if db.execute("PRAGMA user_version").fetchone()[0] != CACHE_SCHEMA_VERSION:
                db.execute("BEGIN IMMEDIATE")
                if db.execute("PRAGMA user_version").fetchone()[0] != CACHE_SCHEMA_VERSION:  # still, now locked
                    db.execute("DROP TABLE IF EXISTS fingerprints")
                    db.execute(CACHE_TABLE)
                    db.execute(f"PRAGMA user_version = {CACHE_SCHEMA_VERSION}")
                db.commit()
            check_layout(db, "fingerprints", CACHE_TABLE)
        except BaseException:
            db.close()
            raise
        return db

    def _rebuild(self, err: Exception) -> None:
        aside = self.path.with_name(self.path.name + ".corrupt")
        try:
            os.replace(self.path, aside)
            for suffix in ("-wal", "-shm"):  # the damaged file's journal must not meet the new file
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self.db = self._connect()
        except (sqlite3.Error, OSError) as again:
            self._give_up(again)
        else:
            self.warn(f"cache {self.path} was damaged ({err}); moved it to {aside.name} and started a new one")

    def _give_up(self, err: Exception) -> None:
        self.warn(f"cache {self.path} cannot be used ({err}); going on without it")
        if self.db is not None:
            self.db.close()
        self.db, self.pending = None, []

    @staticmethod
    def _key(image: FoundFile) -> bytes:
        return os.fsencode(os.path.abspath(image.path))  # bytes: file names need not be valid text

    def lookup(self, image: FoundFile) -> Fingerprint | None:
        if self.db is None:
            return None
        try:
            row = self.db.execute(
                "SELECT size, mtime_ns, algorithm, digest, hashes, low_detail, signature, reason, damage, flat_hashes"
                " FROM fingerprints"
                " WHERE path = ? AND hash_size = ?", (self._key(image), self.hash_size)).fetchone()
        except sqlite3.Error as err:
            self._give_up(err)
            return None
        if row is None or tuple(row[:3]) != (image.size, image.mtime_ns, ALGORITHM_VERSION):
            return None
        digest, hashes, low_detail, signature, reason, damage, flat_hashes = row[3:]
        return Fingerprint(digest, self._parse(hashes), bool(low_detail), signature, reason, damage,
                           self._parse(flat_hashes))

    @staticmethod
    def _parse(hashes: str | None) -> tuple[int, ...]:
        return tuple(int(h, 16) for h in hashes.split()) if hashes else ()

    def _format(self, hashes: tuple[int, ...]) -> str | None:
        return " ".join(format_hash(h, self.hash_size) for h in hashes) or None

    def store(self, image: FoundFile, fingerprint: Fingerprint) -> None:
        if self.db is None:
            return
        self.pending.append((self._key(image), self.hash_size, ALGORITHM_VERSION, image.size, image.mtime_ns,
                             fingerprint.digest, self._format(fingerprint.hashes), fingerprint.low_detail,
                             fingerprint.signature, fingerprint.reason, fingerprint.damage,
                             self._format(fingerprint.flat_hashes)))
        if len(self.pending) >= CACHE_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.db is None or not self.pending:
            return
        try:
            with self.db:  # one transaction
                self.db.executemany("INSERT OR REPLACE INTO fingerprints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                    self.pending)
            self.pending = []
        except sqlite3.Error as err:
            self._give_up(err)

    def prune(self) -> int:
        """Forget files that are gone, and records of older algorithms. Returns how many."""
        if self.db is None:
            return 0
        try:
            with self.db:
                stale = [(path,) for (path,) in self.db.execute("SELECT DISTINCT path FROM fingerprints")
                         if not os.path.lexists(path)]
                self.db.executemany("DELETE FROM fingerprints WHERE path = ?", stale)
                old = self.db.execute("DELETE FROM fingerprints WHERE algorithm != ?", (ALGORITHM_VERSION,))
                return len(stale) + old.rowcount
        except sqlite3.Error as err:
            self._give_up(err)
            return 0

    def close(self) -> None:
        self.flush()
        if self.db is not None:
            self.db.close()
            self.db = None


# ---------------------------------------------------------------------------------------
# Hash every file: in parallel, cached
# ---------------------------------------------------------------------------------------

class Bar(Protocol):
    def update(self, n: int = 1, /) -> object: ...


# Progress reaches run() as a callable, as fclones passes its log: progress(description, total,
# unit) gives a context manager whose update(n) says n more are done. The default shows nothing.
Progress = Callable[[str, "int | None", str], AbstractContextManager[Bar]]


class _SilentBar:
    def update(self, n: int = 1, /) -> None:
        pass


def no_progress(description: str, total: int | None, unit: str) -> AbstractContextManager[Bar]:
    return nullcontext(_SilentBar())


T = TypeVar("T")


class DecodeBudget:
    """Bytes of decoding memory shared by the threads: a decode waits until its share is
    free, so that several large images decode one after another instead of at once."""

    def __init__(self, total: int):
        self.total = total
        self._free = total
        self._cancelled = False
        self._changed = threading.Condition()

    @contextmanager
    def reserve(self, need: int) -> Iterator[None]:
        """Hold need bytes (at most the whole budget) for the block. Raises CancelledError
        once cancel() was called."""
        need = min(need, self.total)
        with self._changed:
            # Condition.wait is interrupted by signals in the main thread (POSIX), and
            # cancel() wakes the worker threads, whose waits no signal reaches.
            self._changed.wait_for(lambda: self._cancelled or self._free >= need)
            if self._cancelled:
                raise CancelledError
            self._free -= need
        try:
            yield
        finally:
            with self._changed:
                self._free += need
                self._changed.notify_all()

    def cancel(self) -> None:
        """Make every waiting and later reservation raise CancelledError: on Ctrl-C, the
        queued files must not start decoding while the pool shuts down."""
        with self._changed:
            self._cancelled = True
            self._changed.notify_all()


class DecoderMessages:
    """What the C decoders print to stdio's stderr (libjpeg: 'Corrupt JPEG data: premature
    end of data segment'), caught and attributed to the file being decoded.

    OpenCV 5 leaves libjpeg's output_message as is, fprintf(stderr), whatever
    cv2.utils.logging's level. Inside `with`, the C library's `stderr` (the FILE * that
    fprintf reads at each call) points to a pipe: Python's sys.stderr and the progress bars
    keep writing to fd 2 untouched. Threads decode in parallel, so a message cannot be tied
    to a thread: watch() only tells whether any message came while its call ran; check_alone()
    re-runs a suspected decode with no other running and returns the exact text. Without
    glibc the messages pass through, unattributed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._generation = 0  # bumped whenever a drain finds bytes
        self._stderr_var: ctypes.c_void_p | None = None
        self._saved: int | None = None
        self._read_fd = self._write_fd = -1

    def __enter__(self) -> DecoderMessages:
        try:
            libc = ctypes.CDLL(None)
            libc.fdopen.restype, libc.fdopen.argtypes = ctypes.c_void_p, [ctypes.c_int, ctypes.c_char_p]
            libc.setvbuf.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_size_t]
            stderr_var = ctypes.c_void_p.in_dll(libc, "stderr")
        except (OSError, ValueError, AttributeError):
            return self  # not glibc: nothing caught
        # Non-blocking write end: a decoder never waits on a full pipe (64 KiB of messages
        # unread), the excess is dropped. The FILE is never fclose()d, which would close the
        # pipe under a late writer; the fds are closed on exit instead.
        read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        stream = libc.fdopen(write_fd, b"w")
        if not stream:
            os.close(read_fd)
            os.close(write_fd)
            return self
        libc.setvbuf(stream, None, 2, 0)  # _IONBF: each message reaches the pipe at once
        self._read_fd, self._write_fd, self._stderr_var = read_fd, write_fd, stderr_var
        self._saved, stderr_var.value = stderr_var.value, stream
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stderr_var is None:
            return
        self._stderr_var.value = self._saved
        self._stderr_var = None
        os.close(self._write_fd)
        os.close(self._read_fd)

    def _drain(self) -> bytes:
        """Everything in the pipe now; bumps the generation if there was anything. Locked."""
        chunks = []
        while True:
            try:
                chunk = os.read(self._read_fd, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        if chunks:
            self._generation += 1
        return b"".join(chunks)

    def watch(self, call: Callable[[], T]) -> tuple[T, bool]:
        """call's result, and whether any decoder message appeared while it ran (its own or
        another thread's: check_alone tells which). 5 us a call."""
        if self._stderr_var is None:
            return call(), False
        with self._lock:
            self._drain()
            before = self._generation
        result = call()
        with self._lock:
            self._drain()
            return result, self._generation != before

    def check_alone(self, call: Callable[[], object]) -> str:
        """The messages call printed: call it while no other thread decodes."""
        if self._stderr_var is None:
            return ""
        with self._lock:
            self._drain()
            call()
            return self._drain().decode("utf-8", "backslashreplace").strip()


def fingerprint_all(
    files: Sequence[FoundFile],
    hash_size: int,
    jobs: int,
    cache: HashCache | None = None,
    sizes_to_digest: Container[int] = frozenset(),
    haystack_by_digest: Mapping[bytes, Fingerprint] = {},
    on_done: Callable[[int], object] = lambda n: None,
) -> tuple[tuple[Fingerprint, ...], Counter[Source]]:
    """Fingerprints of the files, in order, and how many came from each Source. Files of a
    size in sizes_to_digest get the digest of their bytes. Decodes on `jobs` threads (OpenCV
    releases the GIL meanwhile) within one DecodeBudget; an image whose decode drew a decoder
    message is decoded again alone afterwards, to name its damage."""
    fingerprints: list[Fingerprint | None] = []
    todo: list[tuple[int, Fingerprint | None]] = []  # and what the cache has of it, lacking the digest
    for i, file in enumerate(files):
        hit = cache.lookup(file) if cache else None
        complete = hit is not None and (hit.digest or file.size not in sizes_to_digest)
        fingerprints.append(hit if complete else None)
        if not complete:
            todo.append((i, hit))
    sources = Counter({Source.FROM_CACHE: len(files) - len(todo)})
    on_done(sources[Source.FROM_CACHE])
    budget = DecodeBudget(DECODE_BUDGET_BYTES)
    executor = ThreadPoolExecutor(max_workers=jobs)
    with DecoderMessages() as messages:
        try:
            work = executor.map(lambda item: fingerprint_file(
                files[item[0]], hash_size, haystack_by_digest, files[item[0]].size in sizes_to_digest, item[1],
                budget=budget, messages=messages), todo)
            suspects = []
            for (i, _), (fingerprint, source) in zip(todo, work):
                fingerprints[i] = fingerprint
                sources[source] += 1
                if fingerprint.damage == "":
                    suspects.append(i)
                elif cache and source not in (Source.NOT_READ, Source.SIZE_ONLY):
                    cache.store(files[i], fingerprint)
                on_done(1)
            executor.shutdown(wait=True)
            for i in suspects:
                fingerprints[i] = dataclasses.replace(fingerprints[i], damage=_damage(files[i], messages) or None)
                if cache:
                    cache.store(files[i], fingerprints[i])
        finally:
            # On Ctrl-C or SIGTERM, drop the queued files instead of waiting for them, and keep what is done.
            budget.cancel()
            executor.shutdown(wait=True, cancel_futures=True)
            if cache:
                cache.flush()
    return tuple(fingerprints), sources


def _damage(file: FoundFile, messages: DecoderMessages) -> str:
    """What the decoder says of a file when it decodes it alone: the file decoded while some
    decoder complained, perhaps of another file."""
    try:
        with open_regular_file(file.path) as stream:
            data = read_bounded(stream, DECODE_BUDGET_BYTES)
    except (OSError, UnreadableImage):
        return ""
    return messages.check_alone(lambda: _decode_quietly(data, os.path.splitext(file.path)[1]))


def _decode_quietly(data: bytes, extension: str) -> None:
    with contextlib.suppress(UnreadableImage, MemoryError):
        decode_image(data, extension)


@dataclass(frozen=True, slots=True)
class Tree:
    """One folder tree found and hashed: the haystack or the needles."""

    name: str
    scan: Scan
    fingerprints: tuple[Fingerprint, ...]  # one for each of scan.files, in order
    sources: Counter[Source]  # how many fingerprints came from where (0 for the others)
    seconds: float  # finding and hashing

    @property
    def hashed(self) -> int:
        return sum(bool(fingerprint.hashes) for fingerprint in self.fingerprints)

    @property
    def unreadable(self) -> list[Unreadable]:
        """What the walk could not read and the files that could not be hashed."""
        failed = [Unreadable(file.rel, fingerprint.reason, file.kind)
                  for file, fingerprint in zip(self.scan.files, self.fingerprints) if fingerprint.reason is not None]
        return sorted([*self.scan.unreadable, *failed], key=lambda problem: problem.rel)

    @property
    def damaged(self) -> list[tuple[str, str]]:
        """Images that decoded although damaged, with what the decoder said: (rel, damage)."""
        return [(file.rel, fingerprint.damage)
                for file, fingerprint in zip(self.scan.files, self.fingerprints) if fingerprint.damage]


# ---------------------------------------------------------------------------------------
# Index and match
# ---------------------------------------------------------------------------------------

# Each substring has a direct table of its buckets, of 2**length slots: substrings are kept
# short enough for at most this many slots per hash, and at most 2**22 slots (32 MiB).
MAX_TABLE_SLOTS_PER_HASH = 8
MAX_TABLE_BITS = 22
# Bucket probes per batch of queries: bounds the memory of a search at a wide distance.
PROBES_PER_BATCH = 2_000_000


def hash_words(values: Sequence[int], bits: int):
    """Hashes as an (n, words) array of uint64, the least significant word first."""
    np = _np()
    words = -(-bits // 64)
    if words == 1:
        return np.fromiter(values, dtype=np.uint64, count=len(values)).reshape(-1, 1)
    low = (1 << 64) - 1
    return np.array([[(v >> (64 * w)) & low for w in range(words)] for v in values],
                    dtype=np.uint64).reshape(-1, words)


def brute_force_search(hashes: Sequence[int], queries: Sequence[int], max_distance: int,
                       bits: int = 64) -> list[list[tuple[int, int]]]:
    """Every query against every hash: the reference HammingIndex is tested against."""
    np = _np()
    table, found = hash_words(hashes, bits), []
    for query in hash_words(queries, bits):
        distances = np.bitwise_count(table ^ query).sum(axis=1)
        positions = np.flatnonzero(distances <= max_distance)
        nearest_first = positions[np.lexsort((positions, distances[positions]))]
        found.append([(int(p), int(distances[p])) for p in nearest_first])
    return found


class HammingIndex:
    """The hashes within a Hamming distance of each query, found without comparing the query
    with every hash: multi-index hashing (Norouzi, Punjani and Fleet, CVPR 2012).

    The bits are cut into m substrings, each with a table of the hashes by its value. By the
    pigeonhole principle, two hashes that differ in at most d bits differ in at most d // m
    bits of some substring, so probing every table with the query's substring and its
    variants within d // m bits finds every answer; only those candidates are compared in
    full. m is chosen per search for the fewest probes plus candidates expected.

        index = HammingIndex(hashes)
        index.search(queries, 4)  # for each query: [(position in hashes, distance), ...]
    """

    def __init__(self, hashes: Sequence[int], bits: int = 64):
        self.bits = bits
        self.words = hash_words(hashes, bits)
        self._tables: dict[int, list[_SubstringTable]] = {}

    def __len__(self) -> int:
        return len(self.words)

    def search(self, queries: Sequence[int], max_distance: int) -> list[list[tuple[int, int]]]:
        """For each query in order, its (position, distance) pairs within max_distance, nearest
        first, then by position."""
        queries = hash_words(queries, self.bits)
        if not len(self.words):
            return [[] for _ in range(len(queries))]
        count = self._substring_count(max_distance)
        tables = self._tables.get(count) or self._tables.setdefault(count, self._build(count))
        radius = max_distance // count
        flips = [_flip_masks(table.length, radius) for table in tables]
        batch = max(1, PROBES_PER_BATCH // sum(len(f) for f in flips))
        found: list[list[tuple[int, int]]] = []
        for first in range(0, len(queries), batch):
            found += self._search_batch(queries[first:first + batch], max_distance, tables, flips)
        return found

    def _search_batch(self, queries, max_distance, tables, flips) -> list[list[tuple[int, int]]]:
        np = _np()
        query_ids, positions = [], []
        for table, flip in zip(tables, flips):
            probes = (_substring(queries, table.start, table.length)[:, None] ^ flip).ravel()
            lows, highs = table.bounds(probes)
            counts = highs - lows
            total = int(counts.sum())
            # Expand each probe's bucket [low, high) into its members, vectorised.
            offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
            positions.append(table.order[np.repeat(lows, counts) + offsets])
            query_ids.append(np.repeat(np.repeat(np.arange(len(queries)), len(flip)), counts))
        q, p = np.concatenate(query_ids), np.concatenate(positions)
        d = np.bitwise_count(self.words[p] ^ queries[q]).sum(axis=1)
        within = d <= max_distance
        q, p, d = q[within], p[within], d[within]
        order = np.lexsort((p, d, q))
        q, p, d = q[order], p[order], d[order]
        first_time = np.ones(len(q), dtype=bool)  # a pair can be found through several substrings
        first_time[1:] = (q[1:] != q[:-1]) | (p[1:] != p[:-1])
        q, pairs = q[first_time], list(zip(p[first_time].tolist(), d[first_time].tolist()))
        bounds = np.searchsorted(q, np.arange(len(queries) + 1)).tolist()
        return [pairs[a:b] for a, b in itertools.pairwise(bounds)]

    def _substring_count(self, max_distance: int) -> int:
        """The m with the fewest bucket probes plus expected candidates per query, among those
        whose substrings are short enough for their tables."""
        longest = min(MAX_TABLE_BITS, (MAX_TABLE_SLOTS_PER_HASH * len(self.words)).bit_length() - 1)

        def cost(m: int) -> float:
            length = -(-self.bits // m)
            probes = sum(math.comb(length, flips) for flips in range(min(max_distance // m, length) + 1))
            return m * probes * (1 + len(self.words) / 2 ** (self.bits // m))
        return min(range(-(-self.bits // max(1, longest)), self.bits + 1), key=cost)

    def _build(self, count: int) -> list[_SubstringTable]:
        lengths = [self.bits // count + (i < self.bits % count) for i in range(count)]
        starts = [sum(lengths[:i]) for i in range(count)]
        return [_SubstringTable.build(_substring(self.words, start, length), start, length)
                for start, length in zip(starts, lengths)]


@dataclass
class _SubstringTable:
    """The hashes ordered by one substring's value, with where each value's bucket starts."""

    start: int
    length: int
    order: object  # positions of the hashes, by substring value
    offsets: object  # bucket v is order[offsets[v]:offsets[v + 1]]

    @classmethod
    def build(cls, keys, start: int, length: int) -> _SubstringTable:
        np = _np()
        offsets = np.zeros(2**length + 1, dtype=np.int64)
        np.cumsum(np.bincount(keys.astype(np.int64), minlength=2**length), out=offsets[1:])
        return cls(start, length, np.argsort(keys, kind="stable"), offsets)

    def bounds(self, probes):
        slots = probes.astype(self.offsets.dtype)
        return self.offsets[slots], self.offsets[slots + 1]


def _substring(words, start: int, length: int):
    """Bits start .. start + length - 1 of each hash, as uint64."""
    np = _np()
    word, offset = divmod(start, 64)
    keys = words[:, word] >> np.uint64(offset)
    if offset + length > 64:
        keys = keys | (words[:, word + 1] << np.uint64(64 - offset))
    return keys & np.uint64((1 << length) - 1)


@functools.cache
def _flip_masks(length: int, radius: int):
    """Every value of `length` bits with at most `radius` bits set."""
    np = _np()
    return np.array([sum(1 << bit for bit in bits) for flips in range(radius + 1)
                     for bits in itertools.combinations(range(length), flips)], dtype=np.uint64)


# ---------------------------------------------------------------------------------------
# Confirm: is the needle a copy of the haystack image, or another shot of the same scene?
# ---------------------------------------------------------------------------------------

# Blur before comparing, in signature pixels: what the signature's smoothing leaves of detail
# finer than its pixels still shifts between copies framed a little differently. Chosen with
# SIGNATURE_SMOOTHING on the committed photos' calibration at distance 8: 0.4 matched 96% of
# crops and straightenings, 0.45 97%; 0.5 accepted a third other caption of 8 there.
COMPARE_BLUR = 0.45
# Gauss-Newton steps of the alignment: shifts up to 3 px (8% of the frame) converge in 5, and
# the robust steps after ROBUST_FROM_STEP need a few more.
ALIGN_STEPS = 8
# The first steps fit every pixel; from this one on, pixels that the fit leaves far off (more
# than TUKEY_SPREADS robust spreads of the residual) weigh nothing, so that a sticker, a
# watermark or a moved subject does not drag the alignment: without it 11 of 96 sticker
# copies of the committed photos' calibration failed the fit's limits, with it none.
ROBUST_FROM_STEP = 2
TUKEY_SPREADS = 4.0
# A light pull of scale and rotation towards none (as a weight in the normal equations): a
# picture with no structure along one direction (a horizon's width, a wood plank's length)
# leaves that direction's scale free to wander, and the fit's limits then turn down a copy, or
# pass a different picture by chance. On the calibration at distance 8 (committed photos / the
# 46): without it auto-enhance matched 80 / 87% and rescans 44 / 51%, with 300 85 / 90% and
# 45 / 54%; 3,000 turns crops into shifts that overshoot (crops 79 / 84% instead of 89 / 92%).
SCALE_PRIOR = 300.0
# How far, as a share of the side, the two frames may fail to nest inside each other: a crop
# of up to 2% a side or a 1° straightening nests (at most 0.4%), a camera moved 2% does not
# (it overshoots by 2%; 0.86% at the least when the scene barely changes along the move, on the
# tuning half, with 2.0's alignment). Vignettes and rescans fit less well (up to 0.93%): the
# few that overshoot more than this are given up, as a burst shot taken for a copy would lose
# a photo.
MAX_OVERSHOOT = 0.008
MAX_SCALE_CHANGE = 0.05  # crops of up to 2% a side change the scale by at most 4%
MAX_ROTATION = 0.035  # radians: 2°, room for a 1° straightening or rescan
MIN_OVERLAP = 0.85  # share of the haystack signature the aligned needle covers
# Two measures of changed content, on the residual once the fitted tone and smooth light are
# taken out. First, spread-out change: a pixel has changed when it differs from its
# neighbourhood's residual by more than this many standard deviations of the haystack and by
# more than half the largest change ...
CHANGE_MIN_DEVIATIONS = 0.75
# ... and a copy has at most this share of such pixels. Stickers (up to 0.8% of the frame)
# reach 0.69%, moved subjects 1.16% at the least (both halves of tests/photos). Watermarks on a
# slide reach 0.93%, but 0.95% let 3 more of 184 dark subjects moved on the 46 photos through.
MAX_CHANGED_SHARE = 0.007
# Second, blobs: each region that stands out (by BLOB_SEED deviations and BLOB_SEED_SPREADS
# robust spreads of the residual) is measured at half its own peak, so that its area is the
# area that changed, whatever its contrast. A residual that a shift of SHIFT_TOLERANCE pixels
# explains (the resampling of a crop at sharp edges) is no change, nor is the softening that the
# alignment's own bilinear sampling gives the needle between pixels (_sampling_blur). That
# second excuse, at distance 8 on the calibration's committed photos, the 46, the draw of seed
# 70000 and 46 meme templates: crops 97, 96, 94, 96% -> 97, 96, 96, 98%, straightening 98, 98,
# 93, 93% -> 98, 98, 94, 96%, rescans of memes 91 -> 93%, no different shot more. Excusing it in
# the changed share too let one more dark subject of 184 moved on the 46 photos through.
BLOB_SEED = 0.5
BLOB_SEED_SPREADS = 6.0
SHIFT_TOLERANCE = 0.3
# A copy's blobs cover at most this share of the frame: on the committed photos' calibration
# (both halves, re-measured for 2.4) stickers of up to 0.8% measure 0.77% at the most,
# watermarks 0.93%; a subject of 1.5% moved, seen in one place or two, 1.70% and more. On the 46
# photos and the seed-70000 draw moved subjects reach down to 1.54% and 1.31%; the one under
# this limit changed 1.31% of its pixels, which the changed share above turns down.
MAX_BLOB_SHARE = 0.014
# Last, the fine detail (DETAIL_SIDE): other captions on one template leave the thumbnail alike,
# but not the signs of their letters' detail. A DETAIL_BLOCK-square block of the fine grid is
# judged where both signatures keep at least DETAIL_MIN_KEPT of its pixels at every one of
# DETAIL_SHIFTS (a crop resamples letters a few pixels high), and fails where the signs agree (as a
# mean of +1 and -1) by less than DETAIL_MIN_AGREEMENT at all of them; a copy has at most
# DETAIL_MAX_BLOCKS failing blocks. Each haystack pixel takes the sign of the nearest needle pixel:
# a bilinear mix of +1 and -1 is near 0 wherever the alignment samples between two pixels, which
# pulled copies that needed a fraction of a pixel's shift towards no agreement (on four of the sets
# below, copies sampled 0.1 to 0.2 of the way between pixels, as f (1 - f) over x and y: 1st
# percentile of the mean agreement 0.83 mixed, 0.93 nearest), and the half-pixel shifts bring a
# crop's own fractional offset within a quarter pixel. Judging a block wherever one shift keeps
# enough (not every shift) lets noise decide: it turned down 665 instead of 58 of 18,323 copies in
# version 2.6. Chosen on the pickled pairs of eleven sets (the committed photos, the 46 and their
# graphics at seeds 0, 90000, 100000 and 130000, and memes of the 46): of the 23,456 copies within
# distance 8 and the 45 different pictures within 16 that pass the thumbnail's tests, version 2.6
# (mixed signs, whole-pixel shifts, 2 blocks under 0.5) turned down 75 and accepted 11 (captions,
# slides, a settings screen, a sunset, two horizons); nearest signs with whole-pixel shifts and 1
# block under 0.55, 143 and 3; with half-pixel shifts too, 78 and 3: the two horizons (no text to
# tell) and a caption whose differing words lie outside the kept detail; the copies lost are crops
# and straightenings most, and 9 of 1,454 stickers (2.6: none). At 0.5 and 1 block, 27 and 9; at
# 0.54, 67 and 4; at 0.6, 186 and 3, and 2 instead of 5 of the 48 slides of tests/test_trust.py,
# but also a 67-pixel resize of a committed photo and a crop of its thin towers. Tiny needles pay
# most: a shorter side under 96 pixels keeps too little of the fine grid
# (benchmarks/thumbnail_benchmark.md). A copy turned down is reported as similar; a caption or
# slide taken for a copy loses it.
DETAIL_BLOCK = 16
DETAIL_MIN_KEPT = 0.15
DETAIL_MIN_AGREEMENT = 0.55
DETAIL_MAX_BLOCKS = 1
DETAIL_SHIFTS = ((0, 0), *((y, x) for y in (-1, -0.5, 0, 0.5, 1)  # none first
                           for x in (-1, -0.5, 0, 0.5, 1) if y or x))
# Auto-contrast clips the darkest and lightest few percent of the pixels (PIL's cutoff of 2%),
# which no gain and offset fits: where the needle lies within this share of its range of its
# own darkest (lightest) level and the fitted tone lies beyond that level, the difference is
# what clipping leaves, not content. On the calibration at distance 8 (committed photos, A / B;
# the 46): auto-enhance 85 / 85% and 93 / 88% without, 92 / 85% and 94 / 90% with 0.1. Excusing
# any residual of the clipped sign near the extremes (not only a tone beyond them) let one more
# dark subject of 184 moved onto a dark place through.
CLIP_MARGIN = 0.1
# The typical residual (its robust spread, blind to a sticker) of a copy is small next to the
# haystack image's own detail (what its smooth light leaves, in standard deviations): at most
# 0.47 of it over the copies of both calibration sets, whose images all have 0.22 or more. An
# image that is only smooth light (a sunset ramp, 0.005) is thus matched only by one that is
# too: ramps with a plank texture over them leave 0.06 to 0.11 unexplained.
MAX_UNEXPLAINED = 0.5
UNEXPLAINED_FLOOR = 0.02
# Aligned correlation above which a needle that is no copy is reported as similar: another
# shot of the same scene (bursts: 0.9 and more; unrelated photos within distance 16: below 0.7).
SIMILAR_MIN_CORRELATION = 0.8

# A candidate pair whose signatures, blurred and standardised but not aligned, correlate less
# than this is no copy, and is not aligned at all: the alignment costs about a millisecond a
# pair, this test microseconds. On the tuning half of benchmarks/hard_calibration.py the copies
# 2.0's alignment accepted correlate 0.76 and more (1st percentile 0.90) ...
PREFILTER_MIN_CORRELATION = 0.7
# ... but a strong vignette can leave a copy at -0.45: with their smooth light taken out, the
# signatures of the vignette copies that correlate less than the above correlate 0.970 and
# more (both calibration sets). Smooth fields of other scenes often reach 0.7 that way, so
# this second way in is narrower: at 0.7 it let 1,644 more pairs of the matching benchmark in.
PREFILTER_MIN_FLAT_CORRELATION = 0.9
# Both correlations are taken on signatures blurred by this much, more than for the comparison:
# unaligned, the finer detail that COMPARE_BLUR keeps decorrelates a burst neighbour 4% away
# (0.67 instead of 0.74), which would then be neither aligned nor reported as similar.
PREFILTER_BLUR = 0.7
# A sticker on a foggy or night photo, which has little contrast of its own, dominates the
# standard deviation and so the correlation: 4 of 134 sticker copies of the 46 photos fell
# under the first threshold. A third way in takes the same correlation of the signatures with
# their levels clipped at this many standard deviations.
PREFILTER_CLIP = 2.5

# A pair's alignment stops when its step moves no pixel by more than this (copies take 2 or 3).
ALIGN_CONVERGED = 0.01

_CENTRE = (SIGNATURE_SIDE - 1) / 2


@functools.cache
def _grid():
    """Each signature pixel's x and y, and its offsets u and v from the centre."""
    np = _np()
    y, x = np.mgrid[0:SIGNATURE_SIDE, 0:SIGNATURE_SIDE].astype(np.float32)
    return x, y, x - _CENTRE, y - _CENTRE


def _stack(signatures, orientations):
    np = _np()
    return np.stack([orient(np.frombuffer(s, np.uint8, SIGNATURE_SIDE ** 2).reshape(SIGNATURE_SIDE, SIGNATURE_SIDE), k)
                     for s, k in zip(signatures, orientations)]).astype(np.float32)


def _each_image(x, reach: int, image_filter):
    """A 2-D OpenCV filter that reaches `reach` pixels, applied to each image of a stack with
    its edges replicated: the images, each padded, are filtered as one tall image, so that the
    loops run in OpenCV (4 to 5 times as fast as in numpy for a chunk of 200 signatures)."""
    np = _np()
    count, height, width = x.shape
    tall = np.pad(x, ((0, 0), (reach, reach), (reach, reach)), mode="edge")
    filtered = image_filter(tall.reshape(count * (height + 2 * reach), width + 2 * reach))
    return filtered.reshape(tall.shape)[:, reach:-reach, reach:-reach]


def _blur(x, sigma: float):
    np, cv2 = _np(), _cv2()
    r = int(np.ceil(2.5 * sigma))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2).astype(np.float32)
    k /= k.sum()
    return _each_image(x, r, lambda tall: cv2.sepFilter2D(tall, -1, k, k))


def _standardise(x):
    np = _np()
    x = x - x.mean(axis=(1, 2), keepdims=True)
    return x / np.maximum(x.std(axis=(1, 2), keepdims=True), 1e-6)


def _sample(images, X, Y):
    """Bilinear samples of each image at (X, Y), and whether each point lies on the image."""
    np = _np()
    side = SIGNATURE_SIDE
    inside = (X >= -0.5) & (X <= side - 0.5) & (Y >= -0.5) & (Y <= side - 0.5)
    X, Y = np.clip(X, 0, side - 1.001), np.clip(Y, 0, side - 1.001)
    x0, y0 = np.floor(X), np.floor(Y)
    fx, fy = X - x0, Y - y0  # float32, as X is (less an int32 they were float64, and so was the whole alignment)
    x0, y0 = x0.astype(np.int32), y0.astype(np.int32)
    flat = images.ravel()  # one index into the whole stack: twice as fast as take_along_axis
    i00 = y0 * side + x0 + (np.arange(len(images), dtype=np.int32) * side * side)[:, None, None]
    v00, v01, v10, v11 = flat[i00], flat[i00 + 1], flat[i00 + side], flat[i00 + side + 1]
    top, bottom = v00 + (v01 - v00) * fx, v10 + (v11 - v10) * fx
    return top + (bottom - top) * fy, inside


def _box(x, r: int):
    """Means over (2r+1)-square windows, edges replicated."""
    return _each_image(x, r, lambda tall: _cv2().blur(tall, (2 * r + 1, 2 * r + 1)))


GEOMETRY = 5  # the first parameters: shift x and y, scale x and y, rotation


def _tone_terms(H):
    """What the needle's tone may be, as a sum of these times the tone parameters: a gain and
    an offset, and a vignette's falloff, of the light and of the gain. No tilts of the light:
    with them, unrelated smooth colour fields fit one another (8 of 9,558 candidate pairs in
    benchmarks/match_benchmark.py, with tilts of 0.4 to 1.8; copies need 0.1 at the most)."""
    np = _np()
    _, _, u, v = _grid()
    r2 = (u * u + v * v) / (SIGNATURE_SIDE / 2) ** 2
    ones = np.ones_like(H)
    return [H, ones, H * r2, r2 * ones]


def align(N, H):
    """Fit N(warp(p)) ~ tone(H), warp = shift, scale per axis, rotation about the centre, tone =
    _tone_terms weighted: Gauss-Newton with the mean of both images' gradients (ESM), all pairs
    at once, each until its step is below ALIGN_CONVERGED; robust (Tukey) from ROBUST_FROM_STEP.
    Returns the parameters (dx, dy, sx, sy, angle, then the tone's), N warped onto H, where the
    warped N lies on the needle's frame, and the fitted tone of H."""
    np = _np()
    count, side = len(N), SIGNATURE_SIDE
    _, _, u, v = _grid()
    terms = np.stack(_tone_terms(H), axis=1)  # pair, term, y, x
    size = GEOMETRY + terms.shape[1]
    params = np.zeros((count, size), np.float32)
    params[:, GEOMETRY] = 1  # the gain
    prior = np.zeros(size, np.float32)
    prior[2:GEOMETRY] = SCALE_PRIOR
    gHy, gHx = np.gradient(H, axis=(1, 2))
    active = np.arange(count)
    for step_number in range(ALIGN_STEPS):
        p, t = params[active], terms[active]
        Nw, inside = _warp(N[active], p)
        gNy, gNx = np.gradient(Nw, axis=(1, 2))
        gx, gy = (gNx + gHx[active]) / 2, (gNy + gHy[active]) / 2
        J = np.concatenate([np.stack([gx, gy, gx * u, gy * v, gy * u - gx * v], axis=1), -t], axis=1)
        J = J.reshape(len(active), size, -1)
        error = Nw - np.einsum("pt,ptyx->pyx", p[:, GEOMETRY:], t)
        weight = inside.astype(np.float32)
        if step_number >= ROBUST_FROM_STEP:
            spread = np.median(np.abs(error * inside).reshape(len(active), -1), axis=1) * 1.4826 + 0.02
            z = error / (TUKEY_SPREADS * spread[:, None, None])
            weight *= np.where(np.abs(z) < 1, (1 - z * z) ** 2, 0)
        Jw = J * weight.reshape(len(active), 1, -1)
        A = Jw @ J.transpose(0, 2, 1)
        A += np.eye(size, dtype=np.float32) * (1e-6 * A.trace(axis1=1, axis2=2)[:, None, None] + 1e-6)
        A += np.diag(prior)
        step = np.linalg.solve(A, -(Jw @ error.reshape(len(active), -1, 1)) - (prior * p)[..., None])[..., 0]
        params[active] += step
        # Shift in pixels; scale and rotation as the pixels they move at the frame's edge.
        moved = np.maximum(np.abs(step[:, :2]).max(axis=1), np.abs(step[:, 2:GEOMETRY]).max(axis=1) * side / 2)
        going = moved > ALIGN_CONVERGED
        if step_number >= ROBUST_FROM_STEP:  # a pair this far from any copy will not come back: stop it
            going &= ~_hopeless(params[active])
        active = active[going]
        if not len(active):
            break
    Nw, inside = _warp(N, params)
    return params, Nw, inside, np.einsum("pt,ptyx->pyx", params[:, GEOMETRY:], terms)


def _hopeless(params):
    """Pairs whose alignment is so far past a copy's limits (twice the scale or rotation, three
    times the overshoot) that the remaining steps cannot bring it back: no need to take them."""
    np = _np()
    return ((np.abs(params[:, 2:4]) > 2 * MAX_SCALE_CHANGE).any(axis=1) | (np.abs(params[:, 4]) > 2 * MAX_ROTATION)
            | (_overshoot(params) > 3 * MAX_OVERSHOOT))


def _warp(N, params):
    return _sample(N, *_sample_points(params))


def _sample_points(params):
    """Where each pixel of the haystack's frame samples the needle, in needle pixels."""
    x, y, u, v = _grid()
    return _warped(x, y, u, v, *(params[:, i, None, None] for i in range(GEOMETRY)))


def _warped(x, y, u, v, dx, dy, sx, sy, angle):
    """Where the point (x, y) of the haystack's frame, (u, v) from its centre, lies in the
    needle's: the alignment's shift, scale and rotation, in signature pixels."""
    return x + dx + sx * u - angle * v, y + dy + sy * v + angle * u


def _sampling_blur(params, H):
    """What bilinear sampling adds to the warped needle, predicted from H and the fitted gain: a
    sample a share f between two pixels is their mix, which blurs by f (1 - f) pixels squared
    along that axis, adding half that times the second difference (to second order)."""
    np = _np()
    X, Y = (np.clip(a, 0, SIGNATURE_SIDE - 1.001) for a in _sample_points(params))  # as _sample does
    share_x, share_y = X - np.floor(X), Y - np.floor(Y)
    p = np.pad(H, ((0, 0), (1, 1), (1, 1)), mode="edge")
    across, down = p[:, 1:-1, :-2] + p[:, 1:-1, 2:] - 2 * H, p[:, :-2, 1:-1] + p[:, 2:, 1:-1] - 2 * H
    blur = share_x * (1 - share_x) * across + share_y * (1 - share_y) * down
    return params[:, GEOMETRY, None, None] * blur / 2


def _overshoot(params):
    """How far (share of the side) the needle's frame and the haystack's fail to nest one in
    the other, along x and y combined: 0 for a copy or a crop, the move for a burst neighbour."""
    np = _np()
    side, total = SIGNATURE_SIDE, 0
    for shift, scale in ((params[:, 0], params[:, 2]), (params[:, 1], params[:, 3])):
        low = _CENTRE + (-0.5 - _CENTRE - shift) / (1 + scale)  # the needle's edges, in
        high = _CENTRE + (side - 0.5 - _CENTRE - shift) / (1 + scale)  # haystack pixels
        needle_out = np.maximum(np.maximum(-0.5 - low, high - (side - 0.5)), 0)
        haystack_out = np.maximum(np.maximum(low + 0.5, (side - 0.5) - high), 0)
        total = total + (np.minimum(needle_out, haystack_out) / side) ** 2
    return np.sqrt(total)


def confirm_many(needles: Sequence[bytes], haystacks: Sequence[bytes], orientations: Sequence[int]):
    """For each pair (needle signature turned by its orientation, haystack signature): is the
    needle a copy, and the correlation of the aligned signatures (for "similar").

    A copy aligns with the haystack image by at most a light crop, scale or straightening,
    its frame nests inside the other's (a burst neighbour's overshoots by the camera's move),
    and once its tone and smooth light (a vignette, uneven paper) are fitted, almost none of
    its pixels changed: a sticker or a watermark may, a moved subject, another caption, other
    rows of a screen change more."""
    np = _np()
    stacks = _stack(needles, orientations), _stack(haystacks, [0] * len(haystacks))
    is_copy, similarity = np.zeros(len(needles), bool), np.zeros(len(needles))
    coarse_n, coarse_h = (_standardise(_blur(x, PREFILTER_BLUR)) for x in stacks)
    flat_n, flat_h = (_standardise(without_smooth_light(x)) for x in (coarse_n, coarse_h))
    clip_n, clip_h = (_standardise(np.clip(x, -PREFILTER_CLIP, PREFILTER_CLIP)) for x in (coarse_n, coarse_h))
    worth = (((coarse_n * coarse_h).mean(axis=(1, 2)) >= PREFILTER_MIN_CORRELATION)
             | ((clip_n * clip_h).mean(axis=(1, 2)) >= PREFILTER_MIN_CORRELATION)
             | ((flat_n * flat_h).mean(axis=(1, 2)) >= PREFILTER_MIN_FLAT_CORRELATION))
    if worth.any():
        N, H = (_standardise(_blur(x[worth], COMPARE_BLUR)) for x in stacks)
        is_copy[worth], similarity[worth], params = _confirm_aligned(N, H)
        for i, fitted in zip(np.flatnonzero(worth), params):  # the slowest test: only for what passed the others
            if is_copy[i]:
                is_copy[i] = _detail_agrees(needles[i], haystacks[i], orientations[i], fitted)
    return is_copy, similarity


def _confirm_aligned(N, H):
    np = _np()
    params, Nw, inside, tone = align(N, H)
    shares = inside.mean(axis=(1, 2))
    residual = _residual(Nw, tone, inside)
    spread = _median_inside(np.abs(residual), inside) * 1.4826
    detail = np.sqrt((without_smooth_light(H) ** 2).mean(axis=(1, 2)))
    fitted = ((np.abs(params[:, 2:4]) <= MAX_SCALE_CHANGE).all(axis=1) & (np.abs(params[:, 4]) <= MAX_ROTATION)
              & (params[:, GEOMETRY] > 0) & (shares >= MIN_OVERLAP))
    is_copy = (fitted & (_overshoot(params) <= MAX_OVERSHOOT)
               & (spread <= MAX_UNEXPLAINED * detail + UNEXPLAINED_FLOOR)
               & (_changed_share(residual, inside) <= MAX_CHANGED_SHARE))
    if is_copy.any():  # the blob test is the slowest: only for what passed the others
        is_copy[is_copy] = _blob_share(residual[is_copy], inside[is_copy], H[is_copy], params[is_copy],
                                       spread[is_copy]) <= MAX_BLOB_SHARE
    n, h = np.where(inside, Nw, 0), np.where(inside, H, 0)
    n = n - n.sum(axis=(1, 2), keepdims=True) / inside.sum(axis=(1, 2), keepdims=True).clip(1)
    h = h - h.sum(axis=(1, 2), keepdims=True) / inside.sum(axis=(1, 2), keepdims=True).clip(1)
    n, h = n * inside, h * inside
    similarity = (n * h).sum(axis=(1, 2)) / np.sqrt((n * n).sum(axis=(1, 2)) * (h * h).sum(axis=(1, 2)) + 1e-9)
    return is_copy, np.where(fitted, similarity, 0.0), params


def _residual(Nw, tone, inside):
    """What the fitted tone leaves of the aligned needle on its frame, less what clipping the
    needle's darkest and lightest levels explains (CLIP_MARGIN)."""
    np = _np()
    top = np.where(inside, Nw, Nw.min(axis=(1, 2), keepdims=True)).max(axis=(1, 2), keepdims=True)
    bottom = np.where(inside, Nw, Nw.max(axis=(1, 2), keepdims=True)).min(axis=(1, 2), keepdims=True)
    margin = CLIP_MARGIN * (top - bottom)
    clipped = ((Nw >= top - margin) & (tone > top)) | ((Nw <= bottom + margin) & (tone < bottom))
    return np.where(inside & ~clipped, Nw - tone, 0)


def _median_inside(x, inside):
    """Each image's median over its pixels inside; the same values as np.nanmedian with the
    others NaN, which loops in Python over the images (a tenth of the confirmation's time)."""
    np = _np()
    ranked = np.sort(np.where(inside, x, np.inf).reshape(len(x), -1), axis=1)
    count, rows = inside.reshape(len(x), -1).sum(axis=1), np.arange(len(x))
    return (ranked[rows, (count - 1) // 2] + ranked[rows, count // 2]) / 2


def _changed_share(residual, inside):
    """Share of pixels whose residual stands out from their neighbourhood's (smooth changes
    are not content) by CHANGE_MIN_DEVIATIONS and by half the largest such change."""
    np = _np()
    weight = _box(_box(inside.astype(np.float32), 3), 3)
    change = np.abs(residual - _box(_box(residual, 3), 3) / np.maximum(weight, 1e-3)) * inside
    largest = change.max(axis=(1, 2), keepdims=True)
    return (change > np.maximum(CHANGE_MIN_DEVIATIONS, largest / 2)).mean(axis=(1, 2))


def _blob_share(residual, inside, H, params, spread):
    """Share of the frame in changed blobs, each measured at half its own peak, on the residual
    less what a shift of SHIFT_TOLERANCE pixels in any direction, or the sampling's own blur,
    would explain."""
    np, cv2 = _np(), _cv2()
    seeds = np.maximum(BLOB_SEED, BLOB_SEED_SPREADS * spread)
    gHy, gHx = np.gradient(H, axis=(1, 2))
    tolerant = np.abs(residual - _sampling_blur(params, H))
    for dx, dy in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)):
        moved = params[:, GEOMETRY, None, None] * SHIFT_TOLERANCE * (dx * gHx + dy * gHy)
        tolerant = np.minimum(tolerant, np.abs(residual - moved))
    tolerant *= inside
    shares = np.zeros(len(residual))
    for i, (change, seed) in enumerate(zip(tolerant, seeds)):
        if not (change > seed).any():
            continue
        _, labels = cv2.connectedComponents((change > seed / 2).astype(np.uint8), connectivity=8)
        blob_pixels = 0
        for label in np.unique(labels[change > seed]):
            blob = change[labels == label]
            blob_pixels += int((blob >= blob.max() / 2).sum())
        shares[i] = blob_pixels / max(int(inside[i].sum()), 1)
    return shares


def _detail_agrees(needle: bytes, haystack: bytes, orientation: int, params) -> bool:
    """Whether at most DETAIL_MAX_BLOCKS blocks of the fine grid hold detail of both signatures
    whose signs differ, the needle turned and warped onto the haystack by the fitted params,
    each haystack pixel taking the sign of the nearest needle pixel (DETAIL_MIN_AGREEMENT says
    why not a mix). Sampled at the haystack's kept pixels only (a seventh of the grid)."""
    np, cv2 = _np(), _cv2()
    where, wanted = unpack_detail(haystack)
    ys, xs = np.divmod(where, DETAIL_SIDE)
    per_side = DETAIL_SIDE // DETAIL_BLOCK
    block = (ys // DETAIL_BLOCK) * per_side + xs // DETAIL_BLOCK
    where, signs = unpack_detail(needle)
    mine = np.zeros((DETAIL_SIDE * DETAIL_SIDE, 2), np.float32)  # the signs, and where they were kept
    mine[where] = np.stack([signs, np.ones_like(signs)], axis=1)
    mine = np.ascontiguousarray(orient(mine.reshape(DETAIL_SIDE, DETAIL_SIDE, 2), orientation))
    centre = (DETAIL_CELL - 1) / 2
    best = np.full(per_side ** 2, -np.inf)
    for shift_y, shift_x in DETAIL_SHIFTS:
        x, y = (xs - shift_x - centre) / DETAIL_CELL, (ys - shift_y - centre) / DETAIL_CELL  # in signature pixels
        X, Y = ((a * DETAIL_CELL + centre).astype(np.float32)
                for a in _warped(x, y, x - _CENTRE, y - _CENTRE, *(float(p) for p in params[:GEOMETRY])))
        sign, kept = cv2.remap(mine, X[:, None], Y[:, None], cv2.INTER_NEAREST,
                               borderMode=cv2.BORDER_CONSTANT)[:, 0].T
        both = kept > 0  # 0 or 1: the nearest needle pixel was kept or not
        agree = np.bincount(block, np.where(both, wanted * sign, 0), per_side ** 2)
        count = np.bincount(block, both, per_side ** 2)
        best = np.maximum(best, np.where(count >= DETAIL_MIN_KEPT * DETAIL_BLOCK ** 2,
                                         agree / np.maximum(count, 1), np.inf))
        if (best < DETAIL_MIN_AGREEMENT).sum() <= DETAIL_MAX_BLOCKS:  # the other shifts can only agree more
            return True
    return False


class NeedleStatus(Status):
    MATCHED = "matched", "matched"
    MISSING = "missing", "not found"
    SIMILAR = "similar", "similar"  # near-identical to a haystack image, but not confirmed as a copy: not matched
    LOW_DETAIL = "low_detail", "low detail"
    UNREADABLE = "unreadable", "unreadable"
    NOT_COMPARED = "not_compared", "not compared"  # sidecars, system files, any other file


class Method(Status):
    """How a needle matched."""

    BYTE_IDENTICAL = "byte_identical", "byte-identical"
    SAME_HASH = "same_hash", "same hash"
    WITHIN_DISTANCE = "within_distance", "within distance"


@dataclass(frozen=True, slots=True)
class Match:
    path: str  # the haystack file, relative to the haystack
    method: Method
    distance: int = 0
    orientation: int = 0  # index into ORIENTATIONS: how the needle was turned to match
    similarity: float | None = None  # of the signatures, for a match within a distance


@dataclass(frozen=True, slots=True)
class NeedleResult:
    rel: str
    kind: Kind
    status: NeedleStatus
    hash: int | None = None
    matches: tuple[Match, ...] = ()  # best first; every copy only when Settings.all_matches
    reason: str | None = None
    similar: Match | None = None  # for SIMILAR: the haystack image it resembles

    @property
    def folder(self) -> str:
        return posixpath.dirname(self.rel) or "."

    @property
    def match(self) -> Match | None:
        return self.matches[0] if self.matches else None


def find_byte_copies(haystack: Tree, needles: Tree) -> dict[int, list[Match]]:
    """Needle position -> the haystack files with the same bytes, whatever they hold. The same
    file (same device and inode, through any path or link) is not a copy of itself."""
    by_digest: dict[bytes, list[int]] = defaultdict(list)
    for i, fingerprint in enumerate(haystack.fingerprints):
        if fingerprint.digest:
            by_digest[fingerprint.digest].append(i)
    found = {}
    for n, (file, fingerprint) in enumerate(zip(needles.scan.files, needles.fingerprints)):
        copies = [Match(haystack.scan.files[i].rel, Method.BYTE_IDENTICAL)
                  for i in by_digest.get(fingerprint.digest, ()) if haystack.scan.files[i].identity != file.identity]
        if fingerprint.digest and copies:
            found[n] = copies
    return found


def index_keys(fingerprint: Fingerprint, orientation: int) -> tuple[int, ...]:
    """The keys of an image turned by `orientation`: its dHash, and the dHash of it turned a
    further 90 degrees clockwise, whose bits compare vertical neighbours; then the same two of
    its thumbnail less its smooth light. The second finds the copies of a horizon or a page of
    text, whose left-right steps are too small to be stable; the flat ones the copies under a
    vignette or a filter's falloff, whose plain hashes differ by 11 bits at the median."""
    quarter = (orientation // 4) * 4 + (orientation + 1) % 4
    return tuple(hashes[k] for hashes in (fingerprint.hashes, fingerprint.flat_hashes) for k in (orientation, quarter))


def find_candidates(haystack: Tree, needles: Tree, settings: Settings,
                    only: Container[int] | None = None) -> dict[int, list[tuple[int, int, int]]]:
    """Needle position -> (bits apart, orientation, haystack position) of every haystack image
    one of whose keys is within the distance of the needle's same key in one of the orientations
    tried, nearest first, as is before turned; for the needles in `only`, if given. Low-detail
    images have none; a file is never a candidate for itself."""
    hay, needle_prints = haystack.fingerprints, needles.fingerprints
    usable = [i for i, fingerprint in enumerate(hay) if fingerprint.hashes and not fingerprint.low_detail]
    hay_keys = [index_keys(hay[i], 0) for i in usable]
    orientations = range(len(ORIENTATIONS) if settings.rotations else 1)
    queries = [(n, k) for n, fingerprint in enumerate(needle_prints)
               if fingerprint.hashes and not fingerprint.low_detail and (only is None or n in only)
               for k in orientations]
    query_keys = [index_keys(needle_prints[n], k) for n, k in queries]
    found_by_key = []  # for each key: for each query, [(haystack position, bits apart)]
    for key in range(len(hay_keys[0]) if hay_keys else 0):  # a needle's key against the haystack's same key
        needle_keys = [keys[key] for keys in query_keys]
        if settings.distance == 0:  # a dictionary: no index to build, no numpy to import on a cached run
            with_key: dict[int, list[int]] = defaultdict(list)
            for i, keys in zip(usable, hay_keys):
                with_key[keys[key]].append(i)
            found_by_key.append([[(i, 0) for i in with_key.get(needle_key, ())] for needle_key in needle_keys])
        else:
            index = HammingIndex([keys[key] for keys in hay_keys], settings.hash_size ** 2)
            found_by_key.append([[(usable[position], bits) for position, bits in found]
                                 for found in index.search(needle_keys, settings.distance)])
    candidates: dict[int, dict[tuple[int, int], int]] = defaultdict(dict)  # (haystack, orientation) -> bits
    for (n, k), *found_keys in zip(queries, *found_by_key):
        for i, bits in itertools.chain(*found_keys):
            if haystack.scan.files[i].identity != needles.scan.files[n].identity:
                candidates[n][i, k] = min(bits, candidates[n].get((i, k), bits))
    return {n: sorted((bits, k, i) for (i, k), bits in found.items()) for n, found in candidates.items()}


# Candidate pairs confirmed in one batch, on one thread: the alignment's arrays then stay in the
# processor's caches. On 2,400 pairs (version 1.1): 3.9 s in one batch, 2.2 s in batches of 200.
# Two threads now take as long as one (benchmarks/match_benchmark.py at distance 8, 2.5.1:
# medians of 4, 1.62 s against 1.64 s): numpy's BLAS and OpenCV already use both cores.
CONFIRM_CHUNK = 200
# Candidates confirmed per needle at the most, nearest first: a degenerate hash (a sunset's all
# ones) can have thousands, and a copy is among the nearest.
MAX_CANDIDATES_CONFIRMED = 32
# The nearest few are confirmed first; the others only for a needle with no copy among them
# (or for --all-matches). The best match is the same; in benchmarks/match_benchmark.py at
# distance 8 the pairs confirmed fall from 9,558 to 6,210 and the time from 3.0 s to 2.1 s.
FIRST_ROUND = 4


def find_matches(haystack: Tree, needles: Tree, settings: Settings,
                 only: Container[int] | None = None) -> tuple[dict[int, list[Match]], dict[int, Match]]:
    """Needle position -> its confirmed copies in the haystack, nearest first (the best only,
    or every one with settings.all_matches); and, for a needle with none, the most similar
    haystack image that is not confirmed as a copy (most often another shot of the same scene).
    Every match is confirmed, at distance 0 too: equal hashes alone say little of a sunset
    gradient or a texture."""
    candidates = {n: found[:MAX_CANDIDATES_CONFIRMED]
                  for n, found in find_candidates(haystack, needles, settings, only).items()}
    rounds = [(0, MAX_CANDIDATES_CONFIRMED)] if settings.all_matches else [(0, FIRST_ROUND),
                                                                           (FIRST_ROUND, MAX_CANDIDATES_CONFIRMED)]
    copies: dict[int, list[Match]] = defaultdict(list)
    similar: dict[int, Match] = {}
    for first, last in rounds:
        pairs = [(n, bits, k, i) for n, found in candidates.items() if not copies.get(n)
                 for bits, k, i in found[first:last]]
        for (n, bits, k, i), (copy, score) in zip(pairs, confirm_pairs(haystack, needles, pairs, settings.jobs)):
            method = Method.SAME_HASH if bits == 0 else Method.WITHIN_DISTANCE
            match = Match(haystack.scan.files[i].rel, method, bits, k, round(float(score), 3))
            if copy and (settings.all_matches or not copies[n]):
                copies[n].append(match)
            elif not copy and score >= SIMILAR_MIN_CORRELATION and score > getattr(similar.get(n), "similarity", 0):
                similar[n] = match
    return dict(copies), {n: m for n, m in similar.items() if n not in copies}


def confirm_pairs(haystack: Tree, needles: Tree, pairs: Sequence[tuple[int, int, int, int]],
                  jobs: int) -> list[tuple[bool, float]]:
    """confirm_many over (needle, bits, orientation, haystack) pairs, in chunks on `jobs` threads."""

    def confirm_chunk(start: int):
        chunk = pairs[start:start + CONFIRM_CHUNK]
        return confirm_many([needles.fingerprints[n].signature for n, _, _, _ in chunk],
                            [haystack.fingerprints[i].signature for _, _, _, i in chunk], [k for _, _, k, _ in chunk])

    with ThreadPoolExecutor(max_workers=jobs) as executor:  # numpy lets go of the GIL meanwhile
        confirmed = list(executor.map(confirm_chunk, range(0, len(pairs), CONFIRM_CHUNK)))
    return [(bool(copy), float(score)) for is_copy, scores in confirmed for copy, score in zip(is_copy, scores)]


def match_needles(haystack: Tree, needles: Tree, settings: Settings) -> list[NeedleResult]:
    """Every needle file with its status, sorted by path: matched (byte for byte first, then
    by picture), not found, or why it was not compared."""
    byte_copies = find_byte_copies(haystack, needles)
    matches, similar = find_matches(haystack, needles, settings)
    results = [NeedleResult(problem.rel, problem.kind, NeedleStatus.UNREADABLE, reason=problem.reason)
               for problem in needles.scan.unreadable]
    results += [NeedleResult(file.rel, file.kind, NeedleStatus.NOT_COMPARED) for file in needles.scan.not_compared]
    for n, (file, fingerprint) in enumerate(zip(needles.scan.files, needles.fingerprints)):
        identical = byte_copies.get(n, [])
        copies = identical + [match for match in matches.get(n, []) if match.path not in {m.path for m in identical}]
        if copies:
            results.append(NeedleResult(file.rel, file.kind, NeedleStatus.MATCHED, fingerprint.hash,
                                        tuple(copies if settings.all_matches else copies[:1])))
        elif fingerprint.reason is not None:
            results.append(NeedleResult(file.rel, file.kind, NeedleStatus.UNREADABLE, reason=fingerprint.reason))
        elif fingerprint.low_detail:
            results.append(NeedleResult(file.rel, file.kind, NeedleStatus.LOW_DETAIL, fingerprint.hash,
                                        reason="too little detail to tell"))
        elif n in similar:
            results.append(NeedleResult(file.rel, file.kind, NeedleStatus.SIMILAR, fingerprint.hash,
                                        similar=similar[n]))
        else:
            results.append(NeedleResult(file.rel, file.kind, NeedleStatus.MISSING, fingerprint.hash))
    results.sort(key=lambda result: result.rel)
    return results


@dataclass(frozen=True, slots=True)
class Hint:
    """Unmatched needle images that a wider search would match: how many, and the option."""

    count: int
    option: str


def find_hints(haystack: Tree, needles: Tree, settings: Settings, results: Sequence[NeedleResult]) -> list[Hint]:
    """What the recommended distance, and turning, would add to this run's matches, confirmed
    as any match: so that a default run never misses ordinary copies without saying so."""
    unmatched_rels = {result.rel for result in results
                      if result.status in (NeedleStatus.MISSING, NeedleStatus.SIMILAR)}
    unmatched = {n for n, file in enumerate(needles.scan.files) if file.rel in unmatched_rels}
    wider = [(f"--distance {RECOMMENDED_DISTANCE}",
              dataclasses.replace(settings, distance=RECOMMENDED_DISTANCE, all_matches=False))
             ] if settings.distance < RECOMMENDED_DISTANCE else []
    if not settings.rotations:
        wider.append(("--rotations", dataclasses.replace(settings, rotations=True, all_matches=False)))
    hints = []
    for option, setting in wider:
        copies, _ = find_matches(haystack, needles, setting, unmatched) if unmatched else ({}, {})
        if copies:
            hints.append(Hint(len(copies), option))
    return hints


class Verdict(Status):
    NOT_IN = "not_in_haystack", "not in the haystack"
    PARTLY_IN = "partly_in_haystack", "partly in the haystack"
    NOTHING_COMPARED = "nothing_compared", "nothing to compare"
    IN = "in_haystack", "in the haystack"


@dataclass(frozen=True, slots=True)
class FolderVerdict:
    """A needle folder: in the haystack only when every photo, RAW file and video in it matched."""

    folder: str
    counts: Mapping[tuple[Kind, NeedleStatus], int]  # its files, by kind and status

    @property
    def compared(self) -> int:
        """Its photos, RAW files and videos, and anything that could not be read."""
        return sum(n for (_, status), n in self.counts.items() if status != NeedleStatus.NOT_COMPARED)

    @property
    def matched(self) -> int:
        return sum(n for (_, status), n in self.counts.items() if status == NeedleStatus.MATCHED)

    @property
    def not_compared(self) -> int:
        return sum(n for (_, status), n in self.counts.items() if status == NeedleStatus.NOT_COMPARED)

    @property
    def verdict(self) -> Verdict:
        if not self.compared:
            return Verdict.NOTHING_COMPARED
        return Verdict.IN if self.matched == self.compared else Verdict.PARTLY_IN if self.matched else Verdict.NOT_IN


def folder_verdicts(results: Sequence[NeedleResult]) -> list[FolderVerdict]:
    by_folder: dict[str, Counter[tuple[Kind, NeedleStatus]]] = defaultdict(Counter)
    for result in results:
        by_folder[result.folder][result.kind, result.status] += 1
    return [FolderVerdict(folder, dict(sorted(counts.items()))) for folder, counts in sorted(by_folder.items())]


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

# The haystack's unreadable files are named in the summary even without --verbose, since a
# library file that could not be read makes its copies in the backup look missing.
SUMMARY_UNREADABLE_SHOWN = 10


def _escape_table() -> dict[int, str]:
    named = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r", 0x1B: "\\e"}
    controls = [*range(0x20), 0x7F, *range(0x80, 0xA0)]  # C0, DEL, C1
    # Bidirectional controls reorder what follows them (U+202E shows 'gpj.exe' as 'exe.jpg');
    # the line and paragraph separators end a line in some terminals and viewers.
    invisible = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029]
    table = {code: named.get(code, f"\\x{code:02x}") for code in controls}
    table.update({code: f"\\u{code:04x}" for code in invisible})
    # os.fsdecode turns each byte of a name that is not UTF-8 into U+DC80..U+DCFF: shown as
    # that byte, as ls shows it. Other lone surrogates cannot come from a file name.
    table.update({code: f"\\x{code - 0xDC00:02x}" for code in range(0xDC80, 0xDD00)})
    table[0x5C] = "\\\\"  # a real backslash doubled, so that no name forges an escape
    return table


ESCAPES = _escape_table()


def safe_name(text: str) -> str:
    """A name (or a message holding names) as a terminal is to show it, as ls does: on one
    line, control characters, escapes and bidi overrides written as escapes, so that what it
    looks like is what it is. JSON and CSV keep names exact."""
    return text.translate(ESCAPES)


def render_text(result: RunResult, list_missing: bool = False, list_matched: bool = False) -> str:
    """The report for a person: every needle folder, one line each, under its verdict (those
    not in the haystack first, those in it last: the ones that may go), then the bottom line.
    list_missing adds the files that did not match under each folder; list_matched each file
    that did, with its copy in the haystack."""
    folders = result.folders
    if not any(folder.compared for folder in folders):
        not_compared = sum(folder.not_compared for folder in folders)
        return ("No photos or videos found in the needles folder"
                + (f" ({_count(not_compared, 'other file')} not compared)" if not_compared else "") + ".\n")
    by_folder: dict[str, list[NeedleResult]] = defaultdict(list)
    for needle in result.results:
        by_folder[needle.folder].append(needle)
    width = max(len(safe_name(folder.folder)) for folder in folders)
    lines = []
    for verdict in (Verdict.NOT_IN, Verdict.PARTLY_IN, Verdict.NOTHING_COMPARED, Verdict.IN):
        group = [folder for folder in folders if folder.verdict == verdict]
        if group:
            lines.append(f"{verdict.label[0].upper()}{verdict.label[1:]} ({_count(len(group), 'folder')}):")
        for folder in group:
            lines.append(f"  {safe_name(folder.folder):<{width}}  {folder_line(folder)}")
            for needle in by_folder[folder.folder]:
                if list_matched and needle.match is not None:
                    lines.append(f"      {_file_name(needle)}  =  {safe_name(needle.match.path)}"
                                 f"  ({match_note(needle.match)})")
                elif list_missing and needle.match is None:
                    note = "" if needle.status == NeedleStatus.MISSING else f"  ({safe_name(needle_note(needle))})"
                    lines.append(f"      {_file_name(needle)}{note}")
    done = [folder for folder in folders if folder.verdict == Verdict.IN]
    files_done = _count(sum(folder.compared for folder in done), _noun({
        kind for folder in done for (kind, status) in folder.counts if status != NeedleStatus.NOT_COMPARED}))
    if len(done) == len(folders):
        lines.append(f"Every needle folder is in the haystack: {_count(len(done), 'folder')}, {files_done}.")
    else:
        lines.append(f"In the haystack: {_count(len(done), 'folder')}, {files_done}.")
    lines += [hint_line(hint) for hint in result.hints]
    return "\n".join(lines) + "\n"


def hint_line(hint: Hint) -> str:
    if hint.option == "--rotations":
        return (f"Hint: {_count(hint.count, 'unmatched image')} {'matches' if hint.count == 1 else 'match'} when"
                " turned or mirrored: run with --rotations.")
    return (f"Hint: {_count(hint.count, 'unmatched image')} {'has' if hint.count == 1 else 'have'} a confirmed copy"
            f" within {hint.option[2:]}: run with {hint.option} to count {'it' if hint.count == 1 else 'them'}.")


def _file_name(needle: NeedleResult) -> str:
    return safe_name(posixpath.basename(needle.rel.rstrip("/"))) or "(the folder itself)"


def match_note(match: Match) -> str:
    """'same hash', 'within distance 3, similarity 0.97, turned 90° clockwise', and the like."""
    note = match.method.label
    if match.method == Method.WITHIN_DISTANCE:
        note += f" {match.distance}, similarity {match.similarity:.2f}"
    return note + (f", {ORIENTATIONS[match.orientation]}" if match.orientation else "")


def folder_line(folder: FolderVerdict) -> str:
    """'3 of 5 images matched (1 unreadable), 2 other files not compared', and the like: what
    matched, what it holds by kind when that is more than photos, why the rest did not."""
    kinds: Counter[Kind] = Counter()
    troubles: Counter[NeedleStatus] = Counter()
    for (kind, status), n in folder.counts.items():
        if status != NeedleStatus.NOT_COMPARED:
            kinds[kind] += n
            if status not in (NeedleStatus.MATCHED, NeedleStatus.MISSING):
                troubles[status] += n
    details = []
    if set(kinds) - {Kind.PHOTO} and len(kinds) > 1:
        details.append(", ".join(_count(n, kind.label) for kind, n in sorted(kinds.items())))
    if troubles:
        details.append(", ".join(f"{n} {status.label}" for status, n in sorted(troubles.items())))
    line = f"{folder.matched} of {_count(folder.compared, _noun(set(kinds)))} matched" if kinds else ""
    if details:
        line += f" ({'; '.join(details)})"
    if folder.not_compared:
        line += (", " if line else "") + f"{_count(folder.not_compared, 'other file')} not compared"
    return line


def _noun(kinds: set[Kind]) -> str:
    """What to call a set of files: images when they are photos and RAW files."""
    if kinds <= {Kind.PHOTO, Kind.RAW}:
        return "image"
    return "video" if kinds == {Kind.VIDEO} else "file"


def needle_note(needle: NeedleResult) -> str:
    if needle.status == NeedleStatus.NOT_COMPARED:
        return f"{needle.kind.label}, not compared"
    if needle.status == NeedleStatus.SIMILAR:
        return f"similar to {needle.similar.path} (similarity {needle.similar.similarity:.2f}), not confirmed as a copy"
    return f"{needle.status.label}: {needle.reason}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def render_summary(result: RunResult, verbose: bool = False) -> str:
    """What each tree held and took, for stderr; the haystack's unreadable files (all of both
    trees' with verbose), since they make their copies among the needles look missing; with
    verbose, the damaged images that still decoded and the links not followed too."""
    lines = []
    for tree in (result.haystack, result.needles):
        how = ", ".join(f"{n} {source.label}" for source, n in tree.sources.items() if n)
        videos = sum(file.kind == Kind.VIDEO for file in tree.scan.files)
        held = [_count(tree.hashed, "image") + " hashed"] + ([_count(videos, "video")] if videos else [])
        held.append(f"{len(tree.unreadable)} unreadable")
        if tree.damaged:
            held.append(f"{len(tree.damaged)} damaged")
        if tree.scan.not_compared:
            held.append(f"{_count(len(tree.scan.not_compared), 'other file')} not compared")
        if tree.scan.not_followed:
            held.append(f"{_count(len(tree.scan.not_followed), 'link')} not followed")
        lines.append(f"{tree.name}: {', '.join(held)}, in {tree.seconds:.1f} s" + (f" ({how})" if how else ""))
        shown = tree.unreadable if verbose else tree.unreadable[:SUMMARY_UNREADABLE_SHOWN] if tree is result.haystack else []
        lines += [f"  unreadable: {safe_name(problem.rel)}: {safe_name(problem.reason)}" for problem in shown]
        if len(shown) < len(tree.unreadable) and tree is result.haystack:
            lines.append(f"  ... and {len(tree.unreadable) - len(shown)} more (--verbose lists them all)")
        if verbose:
            lines += [f"  damaged: {safe_name(rel)}: {safe_name(damage)}" for rel, damage in tree.damaged]
            lines += [f"  not followed: {safe_name(link.rel)}: {safe_name(link.reason)}" for link in tree.scan.not_followed]
    if result.pruned is not None:
        lines.append(f"cache: forgot {_count(result.pruned, 'record')} of files that are gone")
    return "".join(line + "\n" for line in lines)


def render_json(result: RunResult) -> str:
    """The whole result as one JSON document; statuses are the enums' values."""
    settings = result.settings
    document = {
        "tool": {"name": "hash_and_search", "version": __version__},
        "settings": {"haystack": str(result.haystack_root), "needles": str(result.needles_root),
                     "hash_size": settings.hash_size, "distance": settings.distance,
                     "rotations": settings.rotations, "all_matches": settings.all_matches, "jobs": settings.jobs,
                     "cache": None if result.cache_path is None else str(result.cache_path)},
        "totals": result.totals(),
        "trees": {
            tree.name: {"hashed": tree.hashed, "unreadable": len(tree.unreadable),
                        "by_kind": dict(Counter(file.kind for file in tree.scan.files)),
                        "not_compared": len(tree.scan.not_compared),
                        **{source: tree.sources.get(source, 0) for source in Source},
                        "seconds": round(tree.seconds, 3)}
            for tree in (result.haystack, result.needles)
        },
        "folders": [
            {"folder": folder.folder, "verdict": folder.verdict, "compared": folder.compared,
             "matched": folder.matched, "not_compared": folder.not_compared, "by_kind": _by_kind(folder.counts)}
            for folder in result.folders
        ],
        "needles": [
            {"path": needle.rel, "folder": needle.folder, "kind": needle.kind, "status": needle.status,
             "hash": None if needle.hash is None else format_hash(needle.hash, settings.hash_size),
             "match": None if needle.match is None else _match_json(needle.match),
             **({"matches": [_match_json(match) for match in needle.matches]} if settings.all_matches else {}),
             "similar": None if needle.similar is None else _match_json(needle.similar),
             "reason": needle.reason}
            for needle in result.results
        ],
        "unreadable": [
            {"tree": tree.name, "path": problem.rel, "reason": problem.reason}
            for tree in (result.haystack, result.needles) for problem in tree.unreadable
        ],
        "hints": [{"count": hint.count, "option": hint.option} for hint in result.hints],
        "damaged": [
            {"tree": tree.name, "path": rel, "damage": damage}
            for tree in (result.haystack, result.needles) for rel, damage in tree.damaged
        ],
        "not_followed": [
            {"tree": tree.name, "path": link.rel, "reason": link.reason}
            for tree in (result.haystack, result.needles) for link in tree.scan.not_followed
        ],
        "elapsed_seconds": round(result.elapsed, 3),
    }
    return json.dumps(document, indent=2) + "\n"


def _match_json(match: Match) -> dict[str, object]:
    return {"path": match.path, "method": match.method, "distance": match.distance,
            "orientation": ORIENTATIONS[match.orientation],
            "similarity": None if match.similarity is None else round(match.similarity, 3)}


CSV_COLUMNS = ("needle", "folder", "kind", "status", "match", "method", "distance", "similarity", "orientation",
               "similar_to", "reason")


def render_csv(result: RunResult) -> str:
    """One row per needle file (per match with Settings.all_matches), names exactly as they
    are: the csv module quotes what needs it."""
    out = io.StringIO()
    # RFC 4180's line ends: Python 3.11 quotes a field holding a character of the line end only,
    # and a file name may hold a lone \r.
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for needle in result.results:
        for match in needle.matches or (None,):
            writer.writerow((
                needle.rel, needle.folder, needle.kind, needle.status,
                *(("", "", "", "", "") if match is None else (
                    match.path, match.method, match.distance,
                    "" if match.similarity is None else f"{match.similarity:.3f}", ORIENTATIONS[match.orientation])),
                "" if needle.similar is None else needle.similar.path, needle.reason or ""))
    return out.getvalue()


def _by_kind(counts: Mapping[tuple[Kind, NeedleStatus], int]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = defaultdict(dict)
    for (kind, status), n in counts.items():
        nested[kind][status] = n
    return dict(nested)


# --- HTML: one self-contained page to open in a browser -------------------------------
#
# Inline CSS, no script, thumbnails as base64 data: URIs, and a Content-Security-Policy that lets
# the browser load nothing else. Measured at 5,000 thumbnails: a 58 MiB page whose summary shows
# in 0.2 s and a thumbnail scrolled to in 0.35 s (lazy loading); with the thumbnails in a folder
# beside the page its load event comes sooner (0.65 s against 2.0 s) but the summary and each
# thumbnail later, and a page that is one file cannot lose its pictures when moved or mailed.

# Thumbnails are keyed by tree name and path: a needle and a haystack file may share a path.
ThumbnailKey = tuple[str, str]

THUMBNAIL_MAX_SIDE = 256  # pixels; shown in a 200-pixel box, so still sharp on a 1.25x screen
THUMBNAIL_JPEG_QUALITY = 75  # 8.7 KiB for a 256-pixel photo on average: 5,000 make a 58 MiB page
TILE = 200  # CSS pixels: the square box every thumbnail is fitted into, so nothing moves as they load

UNMATCHED_NOTES = {
    NeedleStatus.MISSING: "not found",
    NeedleStatus.SIMILAR: "only a similar shot found",
    NeedleStatus.LOW_DETAIL: "too little detail to tell",
    NeedleStatus.UNREADABLE: "could not be read",
}
VERDICT_CLASSES = {Verdict.NOT_IN: "not", Verdict.PARTLY_IN: "partly", Verdict.NOTHING_COMPARED: "nothing",
                   Verdict.IN: "in"}
VERDICT_BADGES = {Verdict.NOT_IN: "not in", Verdict.PARTLY_IN: "partly in",
                  Verdict.NOTHING_COMPARED: "nothing to compare", Verdict.IN: "in"}

# What a name may hold that a page must not show raw: bytes that were not UTF-8 (os.fsdecode
# keeps them as lone surrogates, which the page's UTF-8 cannot encode), control characters
# (invisible, or a parse error) and bidirectional controls (they could show "gpj.exe" as
# "exe.jpg"). Each is shown as an escape instead, as a Python literal would write it.
_UNSHOWABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape_char(found: re.Match[str]) -> str:
    code = ord(found.group())
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8, as surrogateescape keeps it
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def shown_text(text: str) -> str:
    """Any name, path or reason as HTML text (or attribute value): escaped, and readable."""
    return html.escape(_UNSHOWABLE.sub(_escape_char, text), quote=True)


def _is_near_match(needle: NeedleResult) -> bool:
    return needle.status == NeedleStatus.MATCHED and needle.match is not None and needle.match.distance > 0


def images_to_show(result: RunResult) -> set[ThumbnailKey]:
    """The images the page shows, for the caller to make thumbnails of (and of no others):
    each unmatched needle that was decoded, and both sides of every similar and near match."""
    keys = set()
    for needle in result.results:
        near = _is_near_match(needle)
        if needle.kind in HASHED_KINDS and (near or needle.status in (
                NeedleStatus.MISSING, NeedleStatus.SIMILAR, NeedleStatus.LOW_DETAIL)):
            keys.add((result.needles.name, needle.rel))
        other = needle.similar if needle.status == NeedleStatus.SIMILAR else needle.match if near else None
        if other is not None:
            keys.add((result.haystack.name, other.path))
    return keys


def make_thumbnail(pixels, max_side: int = THUMBNAIL_MAX_SIDE) -> bytes:
    """JPEG bytes of decoded pixels (from the same decoders as hashing), the longer side at
    most max_side. Area averaging: a photo shrunk 20 times stays free of moire."""
    cv2 = _cv2()
    height, width = pixels.shape[:2]
    scale = max_side / max(height, width)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        pixels = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, THUMBNAIL_JPEG_QUALITY])
    if not ok:
        raise UnreadableImage("OpenCV could not encode the thumbnail")
    return encoded.tobytes()


def make_thumbnails(result: RunResult, progress: Progress = no_progress) -> dict[ThumbnailKey, bytes]:
    """The thumbnail of each image the page shows (images_to_show), read and decoded again on
    result.settings.jobs threads. An image that cannot be read now is left out: the page
    shows its name and status in an empty box."""
    roots = {result.haystack.name: result.haystack_root, result.needles.name: result.needles_root}
    keys = sorted(images_to_show(result))

    budget = DecodeBudget(DECODE_BUDGET_BYTES)  # the same bound on memory as hashing

    def thumbnail(key: ThumbnailKey) -> bytes | None:
        tree, rel = key
        extension = os.path.splitext(rel)[1]
        try:
            with open_regular_file(roots[tree] / rel) as stream:
                need = decode_need(image_header(stream, extension), os.fstat(stream.fileno()).st_size, budget.total)
                if need > budget.total:
                    return None
                with budget.reserve(need):
                    return make_thumbnail(decode_image(read_bounded(stream, budget.total), extension))
        except Exception:  # the file changed or went away since it was hashed: no picture, no end
            return None

    thumbnails = {}
    executor = ThreadPoolExecutor(max_workers=result.settings.jobs)
    try:
        with progress("making thumbnails", len(keys), "image") as bar:
            for key, data in zip(keys, executor.map(thumbnail, keys)):
                if data is not None:
                    thumbnails[key] = data
                bar.update(1)
    finally:
        budget.cancel()  # on Ctrl-C, the queued images must not start decoding
        executor.shutdown(wait=True, cancel_futures=True)
    return thumbnails


def _thumbnail(thumbnails: Mapping[ThumbnailKey, bytes], key: ThumbnailKey, placeholder: str) -> str:
    """An image fitted into the TILE box, or the box with a word when there is no picture
    (a video, an unreadable file). Fixed width and height: the layout is final before any
    image decodes; lazy: only the thumbnails near the screen are decoded."""
    data = thumbnails.get(key)
    if data is None:
        return f'<div class="thumb none" aria-hidden="true">{shown_text(placeholder)}</div>'
    source = "data:image/jpeg;base64," + base64.b64encode(data).decode("ascii")
    return f'<img class="thumb" src="{source}" width="{TILE}" height="{TILE}" loading="lazy" decoding="async" alt="">'


def _match_line(match: Match) -> str:
    parts = [_count(match.distance, "bit") + " apart"]
    if match.similarity is not None:
        parts.append(f"similarity {match.similarity:.2f}")
    if match.orientation:
        parts.append(ORIENTATIONS[match.orientation])
    return " · ".join(parts)


def _pair(result: RunResult, needle: NeedleResult, match: Match, thumbnails: Mapping[ThumbnailKey, bytes],
          verdict: str) -> str:
    """The needle and its closest library image side by side, with how close they are."""
    return (
        f'<li class="pair" data-status="{needle.status.value}">'
        f'<figure>{_thumbnail(thumbnails, (result.needles.name, needle.rel), "no preview")}'
        f'<figcaption><span class="name" title="{shown_text(needle.rel)}">{shown_text(needle.rel)}</span>'
        f'<span class="side">backup</span></figcaption></figure>'
        f'<figure>{_thumbnail(thumbnails, (result.haystack.name, match.path), "no preview")}'
        f'<figcaption><span class="name" title="{shown_text(match.path)}">{shown_text(match.path)}</span>'
        f'<span class="side">library</span></figcaption></figure>'
        f'<p class="verdict-line"><span class="status {"similar" if needle.status == NeedleStatus.SIMILAR else "near"}">'
        f'{shown_text(verdict)}</span> {shown_text(_match_line(match))}</p></li>')


def _tile(result: RunResult, needle: NeedleResult, thumbnails: Mapping[ThumbnailKey, bytes]) -> str:
    note = UNMATCHED_NOTES.get(needle.status, needle.status.label)
    reason = needle.reason
    if needle.kind == Kind.VIDEO and needle.status == NeedleStatus.MISSING:
        reason = "a video matches only a file with the same bytes"
    reason_html = f'<span class="reason">{shown_text(reason)}</span>' if reason not in (None, note) else ""
    # A word where there is no picture: why (unreadable), else what it is (a video).
    placeholder = ("unreadable" if needle.status == NeedleStatus.UNREADABLE
                   else "no preview" if needle.kind in HASHED_KINDS else needle.kind.label)
    return (f'<li class="tile" data-status="{needle.status.value}">'
            f'{_thumbnail(thumbnails, (result.needles.name, needle.rel), placeholder)}'
            f'<span class="name" title="{shown_text(needle.rel)}">{shown_text(_file_name(needle))}</span>'
            f'<span class="status">{shown_text(note)}</span>{reason_html}</li>')


def _folder_notes(folder: FolderVerdict) -> str:
    """'1 not found, 1 could not be read, 2 other files not compared', and the like."""
    by_status: Counter[NeedleStatus] = Counter()
    for (_, status), n in folder.counts.items():
        by_status[status] += n
    notes = [f"{by_status[status]} {note}" for status, note in UNMATCHED_NOTES.items() if by_status[status]]
    if folder.not_compared:
        notes.append(f"{_count(folder.not_compared, 'other file')} not compared")
    return ", ".join(notes)


def _folder_row(folder: FolderVerdict, anchor: str | None) -> str:
    name = shown_text(folder.folder)
    link = f'<a href="#{anchor}">{name}</a>' if anchor else name
    matched = f"{folder.matched} of {folder.compared}" if folder.compared else "–"
    return (f'<tr><td><span class="badge {VERDICT_CLASSES[folder.verdict]}">{VERDICT_BADGES[folder.verdict]}'
            f'</span></td><td class="folder">{link}</td><td class="num">{matched}</td>'
            f'<td class="notes">{shown_text(_folder_notes(folder))}</td></tr>')


def render_html(result: RunResult, thumbnails: Mapping[ThumbnailKey, bytes]) -> str:
    """The report as one self-contained HTML page to open offline: the totals and every
    folder's verdict first, then the unmatched files of each folder not or partly in the
    haystack (a similar shot beside its library image), the near matches to check by eye, and
    the files that could not be read. thumbnails: from make_thumbnails (a missing one leaves
    an empty box)."""
    order = list(VERDICT_CLASSES)
    folders = sorted(result.folders, key=lambda folder: (order.index(folder.verdict), folder.folder))
    by_verdict = Counter(folder.verdict for folder in folders)
    unmatched: dict[str, list[NeedleResult]] = defaultdict(list)
    for needle in result.results:
        if needle.status not in (NeedleStatus.MATCHED, NeedleStatus.NOT_COMPARED):
            unmatched[needle.folder].append(needle)
    near = [needle for needle in result.results if _is_near_match(needle)]
    problems = [(tree, problem) for tree in (result.needles, result.haystack) for problem in tree.unreadable]
    compared = sum(folder.compared for folder in folders)
    matched = sum(folder.matched for folder in folders)
    kinds = {kind for folder in folders for (kind, status) in folder.counts if status != NeedleStatus.NOT_COMPARED}
    anchors = {folder.folder: f"folder-{i}" for i, folder in enumerate(folders)
               if folder.verdict in (Verdict.NOT_IN, Verdict.PARTLY_IN)}

    pills = "".join(f'<a class="pill {VERDICT_CLASSES[verdict]}" href="#folders">{by_verdict[verdict]} '
                    f'{VERDICT_BADGES[verdict]}</a>' for verdict in order if by_verdict[verdict])
    summary_links = [f'<span>{matched} of {_count(compared, _noun(kinds))} matched</span>']
    if near:
        summary_links.append(f'<a href="#near">{len(near)} near match{"" if len(near) == 1 else "es"}</a>')
    if problems:
        summary_links.append(f'<a href="#unreadable">{len(problems)} unreadable</a>')
    hints = "".join(f'<p class="hint">{shown_text(hint_line(hint))}</p>' for hint in result.hints)
    settings = result.settings
    how = f"hash {settings.hash_size}×{settings.hash_size}, " + (
        f"distance up to {settings.distance} bits" if settings.distance else "equal hashes only") + (
        ", turned and mirrored too" if settings.rotations else "")
    needles_root, haystack_root = shown_text(str(result.needles_root)), shown_text(str(result.haystack_root))
    parts = [
        ('<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
         '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
         # Nothing but this file's own styles and embedded images may load: a name that got past
         # escaping could still neither run a script nor reach the network.
         "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; img-src data:; "
         "style-src 'unsafe-inline'\">\n"
         '<meta name="color-scheme" content="light dark">\n'
         f'<title>Backup check: {needles_root}</title>\n<style>{HTML_CSS}</style>\n</head>\n<body>\n'
         f'<header class="masthead"><h1>Which of these photos are already in the library?</h1>'
         f'<p class="meta">Backup (needles) <code>{needles_root}</code> · library (haystack) '
         f'<code>{haystack_root}</code></p></header>\n'
         f'<nav class="summary" aria-label="Summary"><strong>{_count(len(folders), "folder")}</strong>{pills}'
         f'<span class="sep"></span>{" · ".join(summary_links)}</nav>\n'
         f'<main>\n<section id="folders"><h2>Folders</h2>{hints}'
         '<p class="lead">A folder is in the haystack only when every photo, RAW file and video in it matched '
         'a library file; files that could not be compared count as not matched.</p>'
         '<table class="folders"><thead><tr><th>Verdict</th><th>Folder</th><th class="num">Matched</th>'
         '<th>Not matched</th></tr></thead><tbody>'),
        *(_folder_row(folder, anchors.get(folder.folder)) for folder in folders),
        '</tbody></table></section>\n',
    ]
    for folder in folders:
        if folder.folder not in anchors:
            continue
        needles = unmatched[folder.folder]
        pairs = [_pair(result, needle, needle.similar, thumbnails, "a different shot?")
                 for needle in needles if needle.status == NeedleStatus.SIMILAR and needle.similar]
        tiles = [_tile(result, needle, thumbnails)
                 for needle in needles if not (needle.status == NeedleStatus.SIMILAR and needle.similar)]
        parts.append(
            f'<section id="{anchors[folder.folder]}"><h2><span class="badge {VERDICT_CLASSES[folder.verdict]}">'
            f'{shown_text(folder.verdict.label[0].upper() + folder.verdict.label[1:])}</span> '
            f'{shown_text(folder.folder)}</h2>'
            f'<p class="lead">{folder.matched} of {_count(folder.compared, "file")} matched; '
            f'{"the one" if len(needles) == 1 else "the " + str(len(needles))} below did not.</p>'
            + (f'<ul class="grid">{"".join(tiles)}</ul>' if tiles else "")
            + (f'<h3>Closest library image is a different shot</h3><ul class="pairs">{"".join(pairs)}</ul>'
               if pairs else "")
            + '</section>\n')
    if near:
        parts.append(
            '<section id="near"><h2>Near matches</h2><p class="lead">Counted as in the library: '
            'the hashes differ by a few bits and the pictures were confirmed alike (re-encoded, resized or '
            'edited copies). Worth a glance.</p><ul class="pairs">'
            + "".join(_pair(result, needle, needle.match, thumbnails, "matched") for needle in near)
            + '</ul></section>\n')
    if problems:
        parts.append(
            '<section id="unreadable"><h2>Could not be read</h2><p class="lead">Unreadable backup files keep their '
            'folder from counting as in the haystack; an unreadable library file can make its copies look '
            'missing.</p><table class="problems"><thead><tr><th>Where</th><th>File</th><th>Why</th></tr></thead>'
            '<tbody>'
            + "".join(f'<tr><td>{"backup" if tree is result.needles else "library"}</td><td class="folder">'
                      f'{shown_text(problem.rel)}</td><td>{shown_text(problem.reason)}</td></tr>'
                      for tree, problem in problems)
            + '</tbody></table></section>\n')
    parts.append(f'</main>\n<footer>hash_and_search {__version__} · {how}</footer>\n</body>\n</html>\n')
    return "".join(parts)


def write_html(result: RunResult, path: Path, progress: Progress = no_progress) -> None:
    """--html: the page, with thumbnails of the images it shows, written to path (UTF-8).
    Raises FatalError for a path inside a folder read, or one that cannot be written."""
    check_outside_read_folders(path, "--html", walked_folders(result))
    page = render_html(result, make_thumbnails(result, progress))
    try:
        with open(path, "w", encoding="utf-8") as stream:
            stream.write(page)
    except OSError as err:
        raise FatalError(f"--html {path}: {describe_os_error(err)}") from None


# Calm colours: muted terracotta, ochre and green for the verdicts, each lighter on a dark
# background. System fonts only (nothing to download). No content-visibility: it saved under
# 10% of the load time at 5,000 thumbnails and made the scroll bar jump as sections laid out.
HTML_CSS = """
:root{color-scheme:light dark;--bg:#f7f6f3;--card:#fff;--fg:#22211f;--muted:#6c6863;--line:#e3e0da;
--not:#a8412e;--not-bg:#f6e4df;--partly:#8a5a00;--partly-bg:#f8ecd2;--in:#2e6e45;--in-bg:#e0efe4;
--nothing:#5d5a55;--nothing-bg:#ebe9e4;--near:#2f5f8f;--near-bg:#e1ebf5;--thumb:#ebe9e4}
@media (prefers-color-scheme:dark){:root{--bg:#171615;--card:#201f1d;--fg:#e8e5e0;--muted:#a19c95;--line:#34322f;
--not:#f0937f;--not-bg:#3b221d;--partly:#e2b65c;--partly-bg:#372b15;--in:#7fc79a;--in-bg:#1b3124;
--nothing:#bdb8b0;--nothing-bg:#2c2b28;--near:#8fb8e3;--near-bg:#1c2a39;--thumb:#2a2926}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif;-webkit-text-size-adjust:100%}
.masthead,main,footer{max-width:1200px;margin:0 auto;padding:0 24px}
h1{font-size:1.6rem;font-weight:600;margin:32px 0 4px;letter-spacing:-.01em}
h2{font-size:1.25rem;font-weight:600;margin:40px 0 4px;display:flex;gap:10px;align-items:baseline;flex-wrap:wrap;
overflow-wrap:anywhere}
h3{font-size:1rem;font-weight:600;margin:24px 0 8px;color:var(--muted)}
section{scroll-margin-top:56px}
.meta,.lead,footer{color:var(--muted)}
.meta{margin:0 0 16px;overflow-wrap:anywhere}
.hint{margin:8px 0;padding:6px 12px;border-left:3px solid var(--near);background:var(--near-bg);border-radius:4px}
code{font:.9em ui-monospace,"SF Mono",Menlo,Consolas,monospace}
a{color:inherit;text-decoration-color:var(--muted);text-underline-offset:2px}
.summary{position:sticky;top:0;z-index:1;display:flex;flex-wrap:wrap;gap:8px 12px;align-items:center;
padding:10px max(24px,calc((100% - 1152px)/2));background:var(--bg);border-bottom:1px solid var(--line);
font-size:.95rem}
.summary .sep{flex:1}
.pill,.badge{display:inline-block;border-radius:999px;padding:1px 10px;font-size:.85rem;font-weight:600;
white-space:nowrap;text-decoration:none}
.not{--c:var(--not);--c-bg:var(--not-bg)}.partly{--c:var(--partly);--c-bg:var(--partly-bg)}
.in{--c:var(--in);--c-bg:var(--in-bg)}.nothing{--c:var(--nothing);--c-bg:var(--nothing-bg)}
.pill,.badge{color:var(--c);background:var(--c-bg)}
table{border-collapse:collapse;width:100%;background:var(--card);border:1px solid var(--line);border-radius:8px;
overflow:hidden;font-size:.95rem}
th,td{text-align:left;padding:7px 12px;border-bottom:1px solid var(--line);vertical-align:top}
th{font-weight:600;color:var(--muted);font-size:.85rem}
tbody tr:last-child td{border-bottom:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.folder{overflow-wrap:anywhere}
td.notes{color:var(--muted)}
ul.grid,ul.pairs{list-style:none;margin:16px 0 0;padding:0;display:grid;gap:16px}
ul.grid{grid-template-columns:repeat(auto-fill,minmax(200px,1fr))}
ul.pairs{grid-template-columns:repeat(auto-fill,minmax(420px,1fr))}
.tile,.pair{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:10px;min-width:0}
.tile{display:flex;flex-direction:column;gap:2px}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:10px}
.pair figure{margin:0;min-width:0}
.pair figcaption{display:flex;flex-direction:column;margin-top:4px}
.pair .verdict-line{grid-column:1/-1;margin:0;font-size:.9rem;color:var(--muted)}
.thumb{display:block;width:100%;height:auto;aspect-ratio:1;object-fit:contain;background:var(--thumb);
border-radius:4px}
.thumb.none{display:flex;align-items:center;justify-content:center;color:var(--muted);font-size:.85rem}
.name{font-weight:500;overflow-wrap:anywhere;margin-top:6px;line-height:1.3}
.pair .name{margin-top:0;font-size:.9rem}
.side{font-size:.8rem;color:var(--muted)}
.status{font-size:.85rem;color:var(--muted)}
.status.near{color:var(--near)}.status.similar{color:var(--partly)}
.tile[data-status=missing] .status{color:var(--not)}
.reason{font-size:.8rem;color:var(--muted);overflow-wrap:anywhere}
footer{margin:48px auto 32px;font-size:.85rem}
"""


# ---------------------------------------------------------------------------------------
# Act: copy what is missing, for import
# ---------------------------------------------------------------------------------------

class CopyOutcome(Status):
    COPIED = "copied", "copied"
    WOULD_COPY = "would_copy", "would copy"
    ALREADY_THERE = "already_there", "already there, the same bytes"
    CONFLICT = "conflict", "left alone: a different file is already there"
    FAILED = "failed", "failed"


@dataclass(frozen=True, slots=True)
class Copied:
    rel: str  # relative to the needles root and to the target folder alike
    outcome: CopyOutcome
    reason: str | None = None


COPY_BLOCK = 1 << 20  # bytes read at a time: a video may be larger than the memory


def files_to_copy(result: RunResult) -> list[str]:
    """Every photo, RAW file and video with no match (unreadable ones too: a person should
    look at them), and the sidecars of those photos (IMG_1.xmp, IMG_1.JPG.xmp, IMG_1.AAE)."""
    chosen = [needle for needle in result.results if needle.kind in COMPARED_KINDS and needle.match is None]
    stems = {(needle.folder, stem) for needle in chosen
             for stem in (posixpath.basename(needle.rel).lower(), posixpath.splitext(posixpath.basename(needle.rel))[0].lower())}
    sidecars = [needle for needle in result.results if needle.kind == Kind.SIDECAR
                and (needle.folder, posixpath.splitext(posixpath.basename(needle.rel))[0].lower()) in stems]
    return sorted(needle.rel for needle in chosen + sidecars)


def copy_missing(result: RunResult, target: Path, dry_run: bool = False,
                 on_copied: Callable[[Copied], object] = lambda copied: None) -> list[Copied]:
    """Copy files_to_copy(result) from the needles into target, under the same relative paths.
    Never overwrites: a file already there with the same bytes is skipped, a different one
    left alone. Each copy is written under a temporary name, checked against the source's
    digest, keeps the source's timestamps, and only then takes its name. Raises FatalError,
    before writing anything, for a target inside any folder either walk entered."""
    check_outside_read_folders(target, "--copy-missing", walked_folders(result))
    outcomes = []
    for rel in files_to_copy(result):
        copied = _copy_one(result.needles_root / rel, target / rel, rel, dry_run)
        on_copied(copied)
        outcomes.append(copied)
    return outcomes


def check_outside_read_folders(target: Path, option: str, walked: Mapping[str, Container[tuple[int, int]]]) -> None:
    """Raise FatalError when what `option` would write (--copy-missing, --html) is inside a
    folder read (see read_folder_holding): the folders read are never written to."""
    holder = read_folder_holding(target, walked)
    if holder:
        raise FatalError(f"{option} {target} is inside {holder}, which is never written to")


def walked_folders(result: RunResult) -> dict[str, Container[tuple[int, int]]]:
    return {"--haystack": result.haystack.scan.walked, "--needles": result.needles.scan.walked}


def _copy_one(source: Path, destination: Path, rel: str, dry_run: bool) -> Copied:
    try:
        if os.path.lexists(destination):
            same = (destination.is_file() and destination.stat().st_size == source.stat().st_size
                    and _file_digest(destination) == _file_digest(source))
            return Copied(rel, CopyOutcome.ALREADY_THERE if same else CopyOutcome.CONFLICT)
        if dry_run:
            return Copied(rel, CopyOutcome.WOULD_COPY)
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        return Copied(rel, CopyOutcome.FAILED, describe_os_error(err))
    partial = destination.with_name(f".{destination.name}.hash_and_search-partial")
    try:
        digest = hashlib.sha256()
        with open(source, "rb") as reader, open(partial, "xb") as writer:
            while block := reader.read(COPY_BLOCK):
                digest.update(block)
                writer.write(block)
            writer.flush()
            os.fsync(writer.fileno())
        if _file_digest(partial) != digest.digest():
            raise OSError("the copy does not read back as the source's bytes")
        shutil.copystat(source, partial)
        os.link(partial, destination)  # unlike a rename, never replaces a file that appeared meanwhile
        return Copied(rel, CopyOutcome.COPIED)
    except FileExistsError:
        return Copied(rel, CopyOutcome.CONFLICT)
    except OSError as err:
        return Copied(rel, CopyOutcome.FAILED, describe_os_error(err))
    finally:
        with contextlib.suppress(OSError):
            partial.unlink()


def _file_digest(path: Path) -> bytes:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").digest()


def render_copies(copies: Sequence[Copied], target: Path) -> str:
    """What --copy-missing did: the totals, then each file that was not simply copied."""
    counts = Counter(copied.outcome for copied in copies)
    lines = [f"Copy missing to {safe_name(str(target))}: "
             + (", ".join(f"{n} {outcome.label}" for outcome, n in sorted(counts.items())) or "nothing to copy")]
    lines += [f"  {safe_name(copied.rel)}: {copied.outcome.label}" + (f" ({safe_name(copied.reason)})" if copied.reason else "")
              for copied in copies if copied.outcome not in (CopyOutcome.COPIED, CopyOutcome.ALREADY_THERE)]
    return "".join(line + "\n" for line in lines)


# ---------------------------------------------------------------------------------------
# Run: the whole pipeline, as a library call
# ---------------------------------------------------------------------------------------

class FatalError(Exception):
    """A problem that stops the run: reported in one line, exit status 2."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How to compare. The defaults are the command line's, except the cache: none unless given."""

    hash_size: int = DEFAULT_HASH_SIZE
    distance: int = 0  # bits two hashes may differ in; above 0 a match must be confirmed
    rotations: bool = False  # also try each needle turned and mirrored
    jobs: int = field(default_factory=lambda: default_jobs())
    cache: Path | None = None  # the SQLite cache file, or None for no cache
    prune_cache: bool = False  # also forget cached files that no longer exist
    all_matches: bool = False  # every copy of each needle in the haystack, not only the best
    follow_links: bool = False  # also enter symbolic links to folders outside the root walked

    def __post_init__(self) -> None:
        if self.hash_size not in HASH_SIZE_RANGE:
            raise SettingError("hash_size", f"must be from {HASH_SIZE_RANGE.start} to {HASH_SIZE_RANGE.stop - 1}")
        if not 0 <= self.distance <= self.hash_size ** 2:
            raise SettingError("distance", f"must be from 0 to {self.hash_size ** 2}, the bits in a hash")
        if not 1 <= self.jobs <= default_jobs():  # more threads than cores only queue for them
            raise SettingError("jobs", f"must be from 1 to {default_jobs()}, the cores")


class SettingError(ValueError):
    """A setting out of its range: which one, and what it must be."""

    def __init__(self, name: str, problem: str):
        super().__init__(f"{name} {problem}")
        self.name, self.problem = name, problem


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


@dataclass(frozen=True)
class RunResult:
    """Everything a run found: both trees, every needle's result, and what it cost."""

    settings: Settings
    haystack_root: Path
    needles_root: Path
    haystack: Tree
    needles: Tree
    results: tuple[NeedleResult, ...]  # every needle file, sorted by path
    hints: tuple[Hint, ...]  # what a wider search would add
    cache_path: Path | None  # the cache used, if any
    pruned: int | None  # records forgotten by prune_cache, if asked
    elapsed: float

    @functools.cached_property
    def folders(self) -> list[FolderVerdict]:
        return folder_verdicts(self.results)

    def totals(self) -> dict[str, int]:
        statuses = Counter(needle.status for needle in self.results)
        verdicts = Counter(folder.verdict for folder in self.folders)
        return {
            "haystack_files": len(self.haystack.scan.files),
            "haystack_images": self.haystack.hashed,
            "needle_files": len(self.results),
            **{f"needles_{status}": statuses[status] for status in NeedleStatus},
            "needle_folders": len(self.folders),
            **{f"folders_{verdict}": verdicts[verdict] for verdict in Verdict},
        }

    @property
    def exit_code(self) -> int:
        """0 only when there was something to compare and all of it matched."""
        compared = [needle for needle in self.results if needle.status != NeedleStatus.NOT_COMPARED]
        matched = compared and all(needle.status == NeedleStatus.MATCHED for needle in compared)
        return EXIT_ALL_MATCHED if matched else EXIT_SOME_UNMATCHED


def check_folder(path: Path, option: str) -> None:
    if not path.exists():
        raise FatalError(f"{option} {path}: no such folder")
    if not path.is_dir():
        raise FatalError(f"{option} {path}: not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise FatalError(f"{option} {path}: permission denied")


def open_cache(settings: Settings, walked: Mapping[str, Container[tuple[int, int]]],
               warn: Callable[[str], None]) -> HashCache | None:
    """The cache asked for, unless it would be written inside a folder being read."""
    if settings.cache is None:
        return None
    option = read_folder_holding(settings.cache, walked)
    if option:
        warn(f"cache {settings.cache} would be inside {option}, which is never written to; going on without a cache")
        return None
    return HashCache(settings.cache, settings.hash_size, warn)


def read_folder_holding(path: Path, walked: Mapping[str, Container[tuple[int, int]]]) -> str | None:
    """The option (--haystack, --needles) whose walk entered a folder holding path, by device and
    inode of each folder on its real path, so through any link or bind mount; None if none."""
    folder = Path(os.path.realpath(path))
    for ancestor in (folder, *folder.parents):
        try:
            identity = folder_identity(ancestor)
        except OSError:  # not there yet: the file or folders that would be made
            continue
        for option, identities in walked.items():
            if identity in identities:
                return option
    return None


def run(haystack: str | os.PathLike[str], needles: str | os.PathLike[str], settings: Settings = Settings(), *,
        warn: Callable[[str], None] = lambda message: None, progress: Progress = no_progress) -> RunResult:
    """Find and hash both trees, match every needle against the haystack, and return it all.

    Prints nothing: warnings go to `warn`, progress to `progress` (see Progress). Raises
    FatalError when a root folder is missing or cannot be read, KeyboardInterrupt on Ctrl-C
    (what the cache had been given is kept).
    """
    haystack_root, needles_root = Path(haystack), Path(needles)
    roots = {"--haystack": haystack_root, "--needles": needles_root}
    for option, root in roots.items():
        check_folder(root, option)
    identities = {name: folder_identity(root) for name, root in (("haystack", haystack_root), ("needles", needles_root))}
    if identities["haystack"] == identities["needles"]:
        raise FatalError(f"--haystack {haystack_root} and --needles {needles_root} are the same folder")
    # The needles are never part of the haystack, nor the other way round: each walk leaves
    # the other root out, wherever it lies, so that no backup is matched with itself.
    for inner, outer in (("needles", "haystack"), ("haystack", "needles")):
        if Path(os.path.realpath(roots[f"--{inner}"])).is_relative_to(os.path.realpath(roots[f"--{outer}"])):
            warn(f"the {inner} folder {roots[f'--{inner}']} is inside the {outer} folder: "
                 f"left out of the {outer}")
    started = time.perf_counter()
    scans: dict[str, tuple[Scan, float]] = {}
    for name, root in (("haystack", haystack_root), ("needles", needles_root)):
        found_at = time.perf_counter()
        other = identities["needles" if name == "haystack" else "haystack"]
        with progress(f"finding {name}", None, "file") as bar:
            scans[name] = (find_files(root, {other}, bar.update, settings.follow_links),
                           time.perf_counter() - found_at)
    cache = open_cache(settings, {f"--{name}": scan.walked for name, (scan, _) in scans.items()}, warn)

    def hash_tree(name: str, sizes_to_digest: Container[int], haystack_by_digest: Mapping[bytes, Fingerprint]) -> Tree:
        scan, seconds = scans[name]
        hashed_at = time.perf_counter()
        with progress(f"hashing {name}", len(scan.files), "file") as bar:
            fingerprints, sources = fingerprint_all(scan.files, settings.hash_size, settings.jobs, cache,
                                                    sizes_to_digest, haystack_by_digest, bar.update)
        return Tree(name, scan, fingerprints, sources, seconds + time.perf_counter() - hashed_at)

    try:
        # Size first, as fclones does: only a file whose size occurs in the other tree can be a
        # byte copy, so only such files get the digest of their bytes.
        haystack_tree = hash_tree("haystack", {file.size for file in scans["needles"][0].files}, {})
        needles_tree = hash_tree("needles", {file.size for file in haystack_tree.scan.files},
                                 {fp.digest: fp for fp in haystack_tree.fingerprints if fp.digest})
        pruned = cache.prune() if cache and settings.prune_cache else None
    finally:
        if cache:
            cache.close()
    results = match_needles(haystack_tree, needles_tree, settings)
    hints = find_hints(haystack_tree, needles_tree, settings, results)
    return RunResult(settings, haystack_root, needles_root, haystack_tree, needles_tree, tuple(results),
                     tuple(hints), None if cache is None else cache.path, pruned, time.perf_counter() - started)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Settings]:
    parser = argparse.ArgumentParser(
        prog="hash_and_search.py",
        description="Report which needle folders have images that are not in the haystack, "
                    "comparing images by perceptual difference hash (dHash).",
        epilog=f"limits: the images decoding at once share {format_bytes(DECODE_BUDGET_BYTES)} (peak memory stays "
               "under 1 GiB whatever the files and --jobs); an image whose header says it needs more, or a file "
               "larger than that, is reported as too large, with the numbers. "
               "exit status: 0 every needle image matched; 1 some needle image did not match "
               "(or could not be read); 2 usage error or fatal problem, such as a folder that "
               "does not exist or cannot be read, or a report that cannot be written; 130 interrupted "
               "(Ctrl-C); 141 the reader of the report went away (| head); 143 terminated (SIGTERM).",
    )
    parser.add_argument("-a", "--haystack", required=True, type=folder_argument, metavar="DIR",
                        help="the library: folder searched recursively for images")
    parser.add_argument("-n", "--needles", required=True, type=folder_argument, metavar="DIR",
                        help="the backup: folder whose subfolders are checked against the haystack")
    parser.add_argument("--follow-links", action="store_true",
                        help="also enter symbolic links to folders outside the folder walked (never into "
                             "/proc, /sys, /dev); without it they are counted, and named with -v")
    parser.add_argument("--hash-size", type=int, default=DEFAULT_HASH_SIZE, metavar="N",
                        help=f"hash of N x N bits (default {DEFAULT_HASH_SIZE}: 64 bits)")
    parser.add_argument("-d", "--distance", type=int, default=0, metavar="D",
                        help="also match hashes that differ in up to D bits, when a finer comparison "
                             "confirms the picture is the same (default 0: equal hashes only; "
                             f"{RECOMMENDED_DISTANCE} is recommended for near-duplicates)")
    parser.add_argument("--rotations", action="store_true",
                        help="also try each needle turned by 90, 180 and 270 degrees and mirrored")
    parser.add_argument("--list-missing", action="store_true",
                        help="also list, under each folder, the needle files with no match")
    parser.add_argument("--list-matched", action="store_true",
                        help="also list, under each folder, each matched needle file with its copy in the haystack")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true",
                        help="write the whole result as one JSON document on stdout instead of the report")
    output.add_argument("--csv", action="store_true",
                        help="write one CSV row per needle file on stdout instead of the report")
    parser.add_argument("--all-matches", action="store_true",
                        help="find every copy of each needle in the haystack, not only the best (JSON, CSV, "
                             "--list-matched)")
    parser.add_argument("--copy-missing", type=Path, metavar="DIR",
                        help="after the report, copy every needle photo, RAW file and video with no match (and "
                             "their sidecars) into DIR, under the same paths; never overwrites")
    parser.add_argument("--dry-run", action="store_true", help="with --copy-missing: say what would be copied")
    parser.add_argument("--html", type=Path, metavar="FILE",
                        help="also write the report as one self-contained HTML page to FILE, with thumbnails "
                             "of the photos not found, similar shots and near matches")
    parser.add_argument("-j", "--jobs", type=int, default=default_jobs(), metavar="N",
                        help="images decoded at once, within the shared memory budget (default: all %(default)s cores)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache", type=Path, metavar="FILE",
                       help="the hash cache, an SQLite file (default: in the user's cache folder)")
    cache.add_argument("--no-cache", action="store_true", help="neither read nor write a hash cache")
    parser.add_argument("--prune-cache", action="store_true",
                        help="also forget cached files that no longer exist")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="list each unreadable file with the reason, each damaged image that still decoded, "
                             "each symbolic link not followed")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no summary on stderr")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    if args.dry_run and not args.copy_missing:
        parser.error("--dry-run goes with --copy-missing")
    try:
        settings = Settings(args.hash_size, args.distance, args.rotations, args.jobs,
                            None if args.no_cache else args.cache or default_cache_path(), args.prune_cache,
                            args.all_matches, args.follow_links)
    except SettingError as err:
        parser.error(f"{OPTION_OF_SETTING[err.name]} {err.problem}")
    return args, settings


OPTION_OF_SETTING = {"hash_size": "--hash-size", "distance": "--distance", "jobs": "--jobs"}


def folder_argument(text: str) -> Path:
    """argparse type for --haystack and --needles: Path('') is '.', which nobody means."""
    if not text:
        raise argparse.ArgumentTypeError("must not be empty")
    return Path(text)


def say(text: str) -> None:
    """Write a line to stderr. A stderr that fails (a closed pipe, a full disk) must not end
    the run: its output is dropped from then on."""
    try:
        sys.stderr.write(text + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        _silence(2)
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the rest of the run


def warn(message: str) -> None:
    say(f"hash_and_search: warning: {safe_name(message)}")


def tqdm_progress(description: str, total: int | None, unit: str) -> AbstractContextManager[Bar]:
    """Progress bars on stderr, for a terminal."""
    from tqdm import tqdm  # only on a terminal: its import costs more than a cached run

    return tqdm(desc=description, total=total, unit=unit, leave=False, file=sys.stderr)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread: a KeyboardInterrupt, so that every path Ctrl-C
    takes (queued files dropped, the cache's batch committed) is taken for it too."""


def _raise_terminated(signum: int, frame: object) -> NoReturn:
    raise Terminated


def prepare_streams() -> None:
    """Give a closed fd 0, 1 or 2 /dev/null before anything opens a file: else the next file
    opened (the cache) gets that number, and a decoder's message to fd 2 would be written
    into it. A closed stderr becomes /dev/null; names need not be valid text."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    if sys.stderr is None:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - for the run
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            stream.reconfigure(errors="backslashreplace")


def _silence(fd: int) -> None:
    """Point fd at /dev/null, so that Python's last flush at exit has nowhere to fail."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, fd)
    os.close(null)


# Characters of the report written and flushed at a time. CPython 3.11's buffered writer
# drops, without an error, the rest of one large write that a pipe took only part of before
# its reader left (| head); in blocks, the next block's write raises BrokenPipeError.
WRITE_BLOCK = 8192


def write_report(text: str) -> None:
    for start in range(0, len(text), WRITE_BLOCK):
        sys.stdout.write(text[start:start + WRITE_BLOCK])
        sys.stdout.flush()


# What writing the report can fail with besides a closed pipe: a full disk (/dev/full), a
# quota, a file size limit, an I/O error.
WRITE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: parse the arguments, run, print the report, return the exit status.
    However the streams fail, it ends in one line on stderr (when there is one) and a
    documented status, never a traceback; SIGTERM is handled as Ctrl-C."""
    prepare_streams()
    if sys.stdout is None:  # started with >&-
        say("hash_and_search: error: standard output is closed: nowhere to write the report")
        return EXIT_FATAL
    args, settings = parse_args(argv)
    show_progress = not args.quiet and sys.stderr.isatty()
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        writes = [(option, target) for option, target in (("--copy-missing", args.copy_missing), ("--html", args.html))
                  if target]
        if writes:  # refused before anything runs; checked again after the walks, which may reach further
            for option, root in (("--haystack", args.haystack), ("--needles", args.needles)):
                check_folder(root, option)
            roots = {"--haystack": {folder_identity(args.haystack)}, "--needles": {folder_identity(args.needles)}}
            for option, target in writes:
                check_outside_read_folders(target, option, roots)
        result = run(args.haystack, args.needles, settings, warn=warn,
                     progress=tqdm_progress if show_progress else no_progress)
        if not args.quiet:
            say(render_summary(result, args.verbose).rstrip("\n"))
        write_report(render_json(result) if args.json else render_csv(result) if args.csv
                     else render_text(result, args.list_missing, args.list_matched))
        exit_code = result.exit_code
        if args.copy_missing:
            copies = copy_missing(result, args.copy_missing, args.dry_run)
            report = render_copies(copies, args.copy_missing)
            if args.json or args.csv:  # stdout holds the document
                say(report.rstrip("\n"))
            else:
                write_report(report)
            if any(copied.outcome == CopyOutcome.FAILED for copied in copies):
                exit_code = EXIT_FATAL
        if args.html:
            write_html(result, args.html, tqdm_progress if show_progress else no_progress)
        return exit_code
    except FatalError as err:
        say(f"hash_and_search: error: {safe_name(str(err))}")
        return EXIT_FATAL
    except Terminated:
        say("hash_and_search: terminated")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        say("hash_and_search: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader went away (| head): nothing left to say, as other tools
        _silence(sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except OSError as err:
        if err.errno not in WRITE_ERRORS:
            raise
        _silence(sys.stdout.fileno())  # what the buffer still holds goes nowhere instead of failing at exit
        say(f"hash_and_search: error: cannot write the report: {describe_os_error(err)}")
        return EXIT_FATAL
    finally:
        signal.signal(signal.SIGTERM, previous_handler)


if __name__ == "__main__":
    sys.exit(main())
