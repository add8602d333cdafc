#!/usr/bin/env python3
"""Which folders of an old photo backup are not in my photo library yet?

Every image under the haystack (the library) and under the needles (the backup) gets a
perceptual difference hash (dHash), so that a re-encoded, resized or converted copy still
matches where a checksum of the file would not. Needle folders whose images have no match
in the haystack are reported.

    python hash_and_search.py --haystack ~/Pictures --needles /media/old-backup
    python hash_and_search.py -a ~/Pictures -n /media/old-backup --distance 8 --list-missing

Hashes are cached, so a second run over an unchanged library decodes nothing.
Exit status: 0 every needle image matched, 1 some needle image did not, 2 usage error or
fatal problem (a folder that does not exist or cannot be read).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import os
import posixpath
import sqlite3
import stat
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Container, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath

__version__ = "1.0.0"

DEFAULT_HASH_SIZE = 8
HASH_SIZE_RANGE = range(2, 33)
EXIT_ALL_MATCHED, EXIT_SOME_UNMATCHED, EXIT_FATAL = 0, 1, 2

# Matched case-insensitively. OpenCV picks the decoder from the file's content, so the
# extension only decides which files are looked at.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .jif .png .bmp .dib .tif .tiff .webp .avif .gif .jp2 .j2k .jpf .jpx"
    " .pbm .pgm .ppm .pnm .pxm .pam .sr .ras .hdr .pic .pfm".split()
)
# Photo formats OpenCV cannot decode: counted and reported, never skipped silently.
UNSUPPORTED_EXTENSIONS = frozenset(
    ".heic .heif .hif .avci .dng .cr2 .cr3 .crw .nef .nrw .arw .srf .sr2 .orf .rw2 .raf .pef"
    " .srw .x3f .3fr .erf .kdc .mrw .mos .raw .rwl .iiq".split()
)

# Mean absolute step, in grey levels, between horizontally adjacent pixels of the shrunken
# image below which its hash bits are decided by rounding noise. Measured on the 46 sample
# photos: the flattest (a starfield) has 3.7; black, white and uniform frames have 0 to 0.5.
LOW_DETAIL_MAX_MEAN_STEP = 2.0

# Side of the greyscale thumbnail kept to confirm near matches, and the least similarity
# (see signature_similarity) that confirms one: chosen by benchmarks/calibrate.py.
SIGNATURE_SIZE = 24
CONFIRM_MIN_SIMILARITY = 0.7
RECOMMENDED_DISTANCE = 8  # every calibration copy matches from 4 on; 8 leaves room for stronger edits


# ---------------------------------------------------------------------------------------
# Find images
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class ImageFile:
    """An image file found under a root folder, with what stat said of it."""

    path: str  # as found: the root joined with the relative path
    rel: str  # relative to the root, with '/' separators
    size: int
    mtime_ns: int


@dataclass(frozen=True, slots=True)
class Unreadable:
    rel: str  # a folder's ends with '/'
    reason: str


@dataclass
class Scan:
    """Everything found under one root folder."""

    root: Path
    images: list[ImageFile] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)


def describe_os_error(err: OSError) -> str:
    return err.strerror.lower() if err.strerror else str(err)


def image_kind(name: str) -> str | None:
    """'image' for a file OpenCV may decode, 'unsupported' for a photo it cannot, else None."""
    extension = os.path.splitext(name)[1].lower()
    if extension in IMAGE_EXTENSIONS:
        return "image"
    if extension in UNSUPPORTED_EXTENSIONS:
        return "unsupported"
    return None


def find_images(root: Path, on_found: Callable[[], None] = lambda: None) -> Scan:
    """Walk root recursively, following symlinks to folders but never into the same folder twice."""
    scan = Scan(root)
    visited: set[tuple[int, int]] = set()
    pending = [str(root)]
    while pending:
        folder = pending.pop()
        folder_rel = relative_path(folder, root)
        try:
            info = os.stat(folder)
            if (info.st_dev, info.st_ino) in visited:
                continue  # a symlink loop, or a second link to a folder already walked
            visited.add((info.st_dev, info.st_ino))
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError as err:
            scan.unreadable.append(Unreadable(folder_rel + "/", f"folder: {describe_os_error(err)}"))
            continue
        subfolders = []
        for entry in entries:
            if _is_folder(entry):
                subfolders.append(entry.path)
                continue
            kind = image_kind(entry.name)
            if kind is None:
                continue
            rel = relative_path(entry.path, root)
            try:
                info = entry.stat()
            except OSError as err:
                reason = "broken symbolic link" if entry.is_symlink() else describe_os_error(err)
                scan.unreadable.append(Unreadable(rel, reason))
                continue
            if not stat.S_ISREG(info.st_mode):
                scan.unreadable.append(Unreadable(rel, "not a regular file"))
            elif kind == "unsupported":
                scan.unsupported.append(rel)
            else:
                scan.images.append(ImageFile(entry.path, rel, info.st_size, info.st_mtime_ns))
                on_found()
        pending.extend(reversed(subfolders))
    scan.images.sort(key=lambda image: image.rel)
    scan.unsupported.sort()
    scan.unreadable.sort(key=lambda problem: problem.rel)
    return scan


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
    """A file that is not an image OpenCV can decode; the message says why."""


@functools.cache
def _cv2():
    # Imported on first decode: a run answered wholly from the cache never pays its
    # start-up time (about 0.1 s with numpy).
    import cv2

    # Its decoders' warnings about damaged files would interleave with the report; the
    # damage is reported per file instead.
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    cv2.setNumThreads(1)  # the cores are busy decoding other images: no threads within one
    return cv2


def decode_image(data: bytes):
    """Decode an encoded image to 8-bit BGR pixels, EXIF orientation applied."""
    if not data:
        raise UnreadableImage("empty file (0 bytes)")
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


def _opencv_reason(err: Exception) -> str:
    text = str(err).strip().splitlines()[-1]
    if "CV_IO_MAX_IMAGE_PIXELS" in text or "validateInputImageSize" in text:
        return "image too large"
    return text.split(") ", 1)[-1] if ") " in text else text


@functools.cache
def _np():
    import numpy

    return numpy


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


def is_low_detail(small_means) -> bool:
    """Blank frames, white pages, flat skies: their hash bits are noise and match each other."""
    np = _np()
    return float(np.abs(np.diff(small_means, axis=1)).mean()) < LOW_DETAIL_MAX_MEAN_STEP


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
    signature: bytes = b""  # a SIGNATURE_SIZE-square greyscale thumbnail, to confirm near matches
    error: str | None = None

    @property
    def hash(self) -> int | None:
        return self.hashes[0] if self.hashes else None


def fingerprint_pixels(pixels, hash_size: int) -> Fingerprint:
    """Hashes in every orientation and the signature, all from one exact thumbnail whose
    side, hash_size * (hash_size + 1), splits into whole blocks both ways: a block grid of
    hash_size + 1 columns and hash_size rows is the dHash grid, turned or not."""
    np, cv2 = _np(), _cv2()
    grey = to_grey(pixels)
    side = hash_size * (hash_size + 1)
    thumbnail = area_sums(grey, side, side)
    hashes = tuple(dhash(block_sums(orient(thumbnail, k), hash_size + 1, hash_size))
                   for k in range(len(ORIENTATIONS)))
    means = thumbnail / (grey.shape[0] * grey.shape[1])
    small = block_sums(means, hash_size + 1, hash_size) / side  # each block is side thumbnail cells
    signature = cv2.resize(means.astype(np.float32), (SIGNATURE_SIZE, SIGNATURE_SIZE), interpolation=cv2.INTER_AREA)
    return Fingerprint(b"", hashes, is_low_detail(small), np.rint(signature).astype(np.uint8).tobytes())


def block_sums(square, width: int, height: int):
    """Sums over width x height equal blocks of a square whose side both divide."""
    side = square.shape[0]
    return square.reshape(height, side // height, width, side // width).sum(axis=(1, 3))


# Where a fingerprint came from. A file that could not be read is tried again next run.
DECODED, BYTE_COPY, FROM_CACHE, NOT_READ = "decoded", "byte-identical", "from cache", "not read"


def fingerprint_file(path: str, hash_size: int, known: Mapping[bytes, Fingerprint], want_digest: bool,
                     cached: Fingerprint | None = None) -> tuple[Fingerprint, str]:
    """Read one file and hash it, unless a file with the same bytes is known; say which it did.
    The digest of the bytes is taken only when wanted (another file has the same size); a
    cached fingerprint that lacks it only gets it. Never raises for a bad file."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        return Fingerprint(b"", error=describe_os_error(err)), NOT_READ
    digest = hashlib.sha256(data).digest() if want_digest else b""  # 2 ms for a 12-megapixel JPEG
    if cached is not None:
        return dataclasses.replace(cached, digest=digest), FROM_CACHE
    if digest in known:
        return known[digest], BYTE_COPY
    try:
        fp = fingerprint_pixels(decode_image(data), hash_size)
    except UnreadableImage as err:
        return Fingerprint(digest, error=str(err)), DECODED
    except Exception as err:  # one strange file must not end a run over thousands
        return Fingerprint(digest, error=f"unexpected error while hashing: {err!r}"), DECODED
    return dataclasses.replace(fp, digest=digest), DECODED


# ---------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------

# Bump when a change to decoding or hashing changes any value: older records are then ignored.
ALGORITHM_VERSION = 1
CACHE_SCHEMA_VERSION = 1
CACHE_BATCH = 64  # records per transaction: the most that Ctrl-C or kill -9 can lose
CACHE_LOCK_TIMEOUT_S = 30.0  # how long to wait for another run's write to finish
CACHE_FILE_NAME = "fingerprints.sqlite3"
# SQLite's codes for a file that is not a database, or a damaged one: rebuilt, not just skipped.
SQLITE_DAMAGED = {"SQLITE_CORRUPT", "SQLITE_NOTADB"}


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
                    db.execute("""
                        CREATE TABLE fingerprints (
                            path BLOB NOT NULL, hash_size INTEGER NOT NULL, algorithm INTEGER NOT NULL,
                            size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, digest BLOB NOT NULL,
                            hashes TEXT, low_detail INTEGER NOT NULL, signature BLOB NOT NULL, error TEXT,
                            PRIMARY KEY (path, hash_size)) WITHOUT ROWID""")
                    db.execute(f"PRAGMA user_version = {CACHE_SCHEMA_VERSION}")
                db.commit()
        except BaseException:
            db.close()
            raise
        return db

    def _rebuild(self, err: sqlite3.Error) -> None:
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
    def _key(image: ImageFile) -> bytes:
        return os.fsencode(os.path.abspath(image.path))  # bytes: file names need not be valid text

    def lookup(self, image: ImageFile) -> Fingerprint | None:
        if self.db is None:
            return None
        try:
            row = self.db.execute(
                "SELECT size, mtime_ns, algorithm, digest, hashes, low_detail, signature, error FROM fingerprints"
                " WHERE path = ? AND hash_size = ?", (self._key(image), self.hash_size)).fetchone()
        except sqlite3.Error as err:
            self._give_up(err)
            return None
        if row is None or tuple(row[:3]) != (image.size, image.mtime_ns, ALGORITHM_VERSION):
            return None
        digest, hashes, low_detail, signature, error = row[3:]
        return Fingerprint(digest, tuple(int(h, 16) for h in hashes.split()) if hashes else (),
                           bool(low_detail), signature, error)

    def store(self, image: ImageFile, fp: Fingerprint) -> None:
        if self.db is None:
            return
        hashes = " ".join(format_hash(h, self.hash_size) for h in fp.hashes) or None
        self.pending.append((self._key(image), self.hash_size, ALGORITHM_VERSION, image.size, image.mtime_ns,
                             fp.digest, hashes, fp.low_detail, fp.signature, fp.error))
        if len(self.pending) >= CACHE_BATCH:
            self.flush()

    def flush(self) -> None:
        if self.db is None or not self.pending:
            return
        try:
            with self.db:  # one transaction
                self.db.executemany("INSERT OR REPLACE INTO fingerprints VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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

def fingerprint_all(
    images: Sequence[ImageFile],
    hash_size: int,
    jobs: int,
    cache: HashCache | None = None,
    digest_sizes: Container[int] = frozenset(),
    known: Mapping[bytes, Fingerprint] = {},
    on_done: Callable[[int], None] = lambda n: None,
) -> tuple[list[Fingerprint], Counter[str]]:
    """Fingerprints of the images, in order, and how many came from the cache, from a byte
    copy, or from decoding. Files of a size in digest_sizes get the digest of their bytes.
    Decodes on `jobs` threads: OpenCV releases the GIL meanwhile."""
    prints: list[Fingerprint | None] = []
    todo: list[tuple[int, Fingerprint | None]] = []  # and what the cache has of it, lacking the digest
    for i, image in enumerate(images):
        hit = cache.lookup(image) if cache else None
        complete = hit is not None and (hit.digest or image.size not in digest_sizes or hit.error is not None)
        prints.append(hit if complete else None)
        if not complete:
            todo.append((i, hit))
    sources = Counter({FROM_CACHE: len(images) - len(todo)})
    on_done(sources[FROM_CACHE])
    executor = ThreadPoolExecutor(max_workers=jobs)
    try:
        work = executor.map(lambda item: fingerprint_file(
            images[item[0]].path, hash_size, known, images[item[0]].size in digest_sizes, item[1]), todo)
        for (i, _), (fp, source) in zip(todo, work):
            prints[i] = fp
            sources[source] += 1
            if cache and source != NOT_READ:
                cache.store(images[i], fp)
            on_done(1)
    finally:
        # On Ctrl-C, drop the queued files instead of waiting for them, and keep what is done.
        executor.shutdown(wait=True, cancel_futures=True)
        if cache:
            cache.flush()
    return prints, sources


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


def signature_similarity(needle: bytes, haystack: bytes, orientation: int = 0) -> float:
    """Correlation of the brightness gradients of two signatures, the needle's turned first:
    about 1 for the same picture however re-encoded or edited, far lower for an overlapping
    crop, as of a neighbouring burst shot (the gradients no longer line up)."""
    np = _np()

    def gradients(signature: bytes, k: int):
        thumb = orient(np.frombuffer(signature, np.uint8).reshape(SIGNATURE_SIZE, -1).astype(np.float64), k)
        steps = np.concatenate([np.diff(thumb, axis=0).ravel(), np.diff(thumb, axis=1).ravel()])
        return steps - steps.mean()

    x, y = gradients(needle, orientation), gradients(haystack, 0)
    norm = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y) / norm if norm else 0.0


MATCHED, MISSING, LOW_DETAIL, UNREADABLE, UNSUPPORTED = (
    "matched", "missing", "low detail", "unreadable", "unsupported")


@dataclass(frozen=True, slots=True)
class Match:
    path: str  # the haystack image, relative to the haystack
    distance: int
    orientation: int  # index into ORIENTATIONS: how the needle was turned to match
    similarity: float | None  # of the signatures; exact matches are not compared


@dataclass(frozen=True, slots=True)
class NeedleResult:
    rel: str
    status: str
    hash: int | None = None
    match: Match | None = None
    reason: str | None = None

    @property
    def folder(self) -> str:
        return posixpath.dirname(self.rel) or "."


def find_matches(haystack: Sequence[Fingerprint], haystack_paths: Sequence[str], needles: Sequence[Fingerprint],
                 distance: int, rotations: bool, bits: int) -> dict[int, Match]:
    """Needle position -> its best match: the nearest, as is before turned. A match above
    distance 0 counts only when the signatures confirm it. Low-detail images never match: a
    blank frame matching another says nothing about whether a photo was imported."""
    usable = [i for i, fp in enumerate(haystack) if fp.hashes and not fp.low_detail]
    orientations = range(len(ORIENTATIONS) if rotations else 1)
    queries = [(n, k) for n, fp in enumerate(needles) if fp.hashes and not fp.low_detail for k in orientations]
    found: dict[int, Match] = {}
    if distance == 0:  # a dictionary: no index to build, no numpy to import on a cached run
        first_with: dict[int, int] = {}
        for i in usable:
            first_with.setdefault(haystack[i].hash, i)
        for n, k in queries:
            if n not in found and needles[n].hashes[k] in first_with:
                found[n] = Match(haystack_paths[first_with[needles[n].hashes[k]]], 0, k, None)
        return found
    index = HammingIndex([haystack[i].hash for i in usable], bits)
    for (n, k), candidates in zip(queries, index.search([needles[n].hashes[k] for n, k in queries], distance)):
        for position, bits_apart in candidates:  # nearest first
            i = usable[position]
            similarity = None if bits_apart == 0 else signature_similarity(
                needles[n].signature, haystack[i].signature, k)
            if similarity is None or similarity >= CONFIRM_MIN_SIMILARITY:
                if n not in found or (bits_apart, k) < (found[n].distance, found[n].orientation):
                    found[n] = Match(haystack_paths[i], bits_apart, k, similarity)
                break
    return found


def match_needles(needles: Scan, needle_prints: Sequence[Fingerprint], haystack: Scan,
                  haystack_prints: Sequence[Fingerprint], distance: int, rotations: bool,
                  bits: int) -> list[NeedleResult]:
    matches = find_matches(haystack_prints, [image.rel for image in haystack.images], needle_prints,
                           distance, rotations, bits)
    results = [NeedleResult(rel, UNSUPPORTED, reason="format OpenCV cannot read") for rel in needles.unsupported]
    results += [NeedleResult(problem.rel, UNREADABLE, reason=problem.reason) for problem in needles.unreadable]
    for n, (image, fp) in enumerate(zip(needles.images, needle_prints)):
        if fp.error is not None:
            results.append(NeedleResult(image.rel, UNREADABLE, reason=fp.error))
        elif fp.low_detail:
            results.append(NeedleResult(image.rel, LOW_DETAIL, fp.hash, reason="too little detail to tell"))
        elif n in matches:
            results.append(NeedleResult(image.rel, MATCHED, fp.hash, matches[n]))
        else:
            results.append(NeedleResult(image.rel, MISSING, fp.hash))
    results.sort(key=lambda result: result.rel)
    return results


# ---------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------

NOT_IN, PARTLY_IN, IN = "not in haystack", "partly in haystack", "in haystack"


@dataclass(frozen=True, slots=True)
class FolderVerdict:
    """A needle folder: in the haystack only when every image in it matched."""

    folder: str
    images: int
    matched: int
    other: Mapping[str, int]  # unmatched images by status

    @property
    def verdict(self) -> str:
        return IN if self.matched == self.images else PARTLY_IN if self.matched else NOT_IN


def folder_verdicts(needles: Sequence[NeedleResult]) -> list[FolderVerdict]:
    by_folder: dict[str, Counter[str]] = defaultdict(Counter)
    for needle in needles:
        by_folder[needle.folder][needle.status] += 1
    return [
        FolderVerdict(folder, sum(counts.values()), counts[MATCHED],
                      {status: n for status, n in counts.items() if status != MATCHED})
        for folder, counts in sorted(by_folder.items())
    ]


def render_text(verdicts: Sequence[FolderVerdict], needles: Sequence[NeedleResult], list_missing: bool) -> str:
    if not verdicts:
        return "No images found in the needles folder.\n"
    unmatched_by_folder: dict[str, list[NeedleResult]] = defaultdict(list)
    for needle in needles:
        if needle.status != MATCHED:
            unmatched_by_folder[needle.folder].append(needle)
    width = max(len(verdict.folder) for verdict in verdicts)
    lines = []
    for title, kind in (("Not in the haystack", NOT_IN), ("Partly in the haystack", PARTLY_IN)):
        group = [verdict for verdict in verdicts if verdict.verdict == kind]
        if not group:
            continue
        lines.append(f"{title} ({_count(len(group), 'folder')}):")
        for verdict in group:
            extra = ", ".join(f"{n} {status}" for status, n in sorted(verdict.other.items()) if status != MISSING)
            line = f"  {verdict.folder:<{width}}  {verdict.matched} of {_count(verdict.images, 'image')} matched"
            lines.append(line + (f" ({extra})" if extra else ""))
            if list_missing:
                for needle in unmatched_by_folder[verdict.folder]:
                    note = "" if needle.status == MISSING else f"  ({needle.status}: {needle.reason})"
                    lines.append(f"      {posixpath.basename(needle.rel) or '(the folder itself)'}{note}")
    done = [verdict for verdict in verdicts if verdict.verdict == IN]
    images_done = sum(verdict.images for verdict in done)
    if len(done) == len(verdicts):
        lines.append(f"Every needle folder is in the haystack: {_count(len(done), 'folder')}, "
                     f"{_count(images_done, 'image')}.")
    else:
        lines.append(f"In the haystack: {_count(len(done), 'folder')}, {_count(images_done, 'image')}.")
    return "\n".join(lines) + "\n"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def json_key(label: str) -> str:
    return label.replace(" ", "_").replace("-", "_")


def render_json(result: RunResult) -> str:
    hash_size = result.settings["hash_size"]
    document = {
        "tool": {"name": "hash_and_search", "version": __version__},
        "settings": result.settings,
        "totals": result.totals(),
        "trees": {tree.name: tree.as_json() for tree in result.trees},
        "folders": [
            {"folder": v.folder, "verdict": v.verdict, "images": v.images, "matched": v.matched,
             "unmatched": dict(sorted(v.other.items()))}
            for v in result.verdicts
        ],
        "needles": [
            {"path": n.rel, "folder": n.folder, "status": n.status,
             "hash": None if n.hash is None else format_hash(n.hash, hash_size),
             "match": None if n.match is None else {
                 "path": n.match.path, "distance": n.match.distance,
                 "orientation": ORIENTATIONS[n.match.orientation],
                 "similarity": None if n.match.similarity is None else round(n.match.similarity, 3)},
             "reason": n.reason}
            for n in result.needles
        ],
        "unreadable": [
            {"tree": tree.name, "path": problem.rel, "reason": problem.reason}
            for tree in result.trees for problem in tree.unreadable
        ],
        "elapsed_seconds": round(result.elapsed, 3),
    }
    return json.dumps(document, indent=2) + "\n"


@dataclass
class TreeSummary:
    """What hashing one tree took, for the summary on stderr and the JSON."""

    name: str
    hashed: int
    unreadable: list[Unreadable]
    unsupported: int
    sources: Mapping[str, int]
    seconds: float

    def line(self) -> str:
        how = ", ".join(f"{n} {source}" for source, n in self.sources.items() if n)
        return (f"{self.name}: {_count(self.hashed, 'image')} hashed, {len(self.unreadable)} unreadable, "
                f"{self.unsupported} unsupported, in {self.seconds:.1f} s" + (f" ({how})" if how else ""))

    def as_json(self) -> dict[str, object]:
        return {"hashed": self.hashed, "unreadable": len(self.unreadable), "unsupported": self.unsupported,
                **{json_key(source): self.sources.get(source, 0)
                   for source in (FROM_CACHE, BYTE_COPY, DECODED, NOT_READ)},
                "seconds": round(self.seconds, 3)}


@dataclass
class RunResult:
    settings: dict[str, object]
    needles: list[NeedleResult]
    verdicts: list[FolderVerdict]
    trees: tuple[TreeSummary, TreeSummary]  # haystack, needles
    elapsed: float

    def totals(self) -> dict[str, int]:
        statuses = Counter(needle.status for needle in self.needles)
        folders = Counter(verdict.verdict for verdict in self.verdicts)
        return {
            "haystack_images": self.trees[0].hashed,
            "needle_images": len(self.needles),
            **{f"needles_{json_key(status)}": statuses[status]
               for status in (MATCHED, MISSING, LOW_DETAIL, UNREADABLE, UNSUPPORTED)},
            "needle_folders": len(self.verdicts),
            **{f"folders_{json_key(verdict)}": folders[verdict] for verdict in (NOT_IN, PARTLY_IN, IN)},
        }

    @property
    def exit_code(self) -> int:
        return EXIT_ALL_MATCHED if all(n.status == MATCHED for n in self.needles) else EXIT_SOME_UNMATCHED


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------

class FatalError(Exception):
    """A problem that stops the run: reported in one line, exit status 2."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="hash_and_search.py",
        description="Report which needle folders have images that are not in the haystack, "
                    "comparing images by perceptual difference hash (dHash).",
        epilog="exit status: 0 every needle image matched; 1 some needle image did not match "
               "(or could not be read); 2 usage error or fatal problem, such as a folder that "
               "does not exist or cannot be read.",
    )
    parser.add_argument("-a", "--haystack", required=True, type=Path, metavar="DIR",
                        help="the library: folder searched recursively for images")
    parser.add_argument("-n", "--needles", required=True, type=Path, metavar="DIR",
                        help="the backup: folder whose subfolders are checked against the haystack")
    parser.add_argument("--hash-size", type=int, default=DEFAULT_HASH_SIZE, metavar="N",
                        help=f"hash of N x N bits (default {DEFAULT_HASH_SIZE}: 64 bits)")
    parser.add_argument("-d", "--distance", type=int, default=0, metavar="D",
                        help="also match hashes that differ in up to D bits, when a finer comparison "
                             "confirms the picture is the same (default 0: equal hashes only; "
                             f"{RECOMMENDED_DISTANCE} is recommended for near-duplicates)")
    parser.add_argument("--rotations", action="store_true",
                        help="also try each needle turned by 90, 180 and 270 degrees and mirrored")
    parser.add_argument("--list-missing", action="store_true",
                        help="also list, under each folder, the needle images with no match")
    parser.add_argument("--json", action="store_true",
                        help="write the whole result as one JSON document on stdout")
    parser.add_argument("-j", "--jobs", type=int, default=default_jobs(), metavar="N",
                        help="images decoded at once (default: all %(default)s cores)")
    cache = parser.add_mutually_exclusive_group()
    cache.add_argument("--cache", type=Path, metavar="FILE",
                       help="the hash cache, an SQLite file (default: in the user's cache folder)")
    cache.add_argument("--no-cache", action="store_true", help="neither read nor write a hash cache")
    parser.add_argument("--prune-cache", action="store_true",
                        help="also forget cached files that no longer exist")
    parser.add_argument("-v", "--verbose", action="store_true", help="list each unreadable file with the reason")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars and no summary on stderr")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    args = parser.parse_args(argv)
    if args.hash_size not in HASH_SIZE_RANGE:
        parser.error(f"--hash-size must be from {HASH_SIZE_RANGE.start} to {HASH_SIZE_RANGE.stop - 1}")
    if not 0 <= args.distance <= args.hash_size ** 2:
        parser.error(f"--distance must be from 0 to {args.hash_size ** 2}, the bits in a hash")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    return args


def default_jobs() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def check_folder(path: Path, option: str) -> None:
    if not path.exists():
        raise FatalError(f"{option} {path}: no such folder")
    if not path.is_dir():
        raise FatalError(f"{option} {path}: not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise FatalError(f"{option} {path}: permission denied")


def warn(message: str) -> None:
    print(f"hash_and_search: warning: {message}", file=sys.stderr)


def open_cache(args: argparse.Namespace) -> HashCache | None:
    """The cache the user asked for, unless it would be written inside a folder being read."""
    if args.no_cache:
        return None
    path = args.cache or default_cache_path()
    real = Path(os.path.realpath(path))
    for option, root in (("--haystack", args.haystack), ("--needles", args.needles)):
        if real.is_relative_to(os.path.realpath(root)):
            warn(f"cache {path} would be inside {option}, which is never written to; going on without a cache")
            return None
    return HashCache(path, args.hash_size, warn)


class Progress:
    """A tqdm bar on stderr when it is a terminal; nothing otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def bar(self, description: str, total: int | None = None, unit: str = "img"):
        if not self.enabled:
            return _NoBar()
        from tqdm import tqdm  # only on a terminal: its import costs more than a cached run

        return tqdm(desc=description, total=total, unit=unit, leave=False, file=sys.stderr)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def find_tree(root: Path, name: str, progress: Progress) -> tuple[Scan, float]:
    started = time.perf_counter()
    with progress.bar(f"finding {name}", unit="file") as bar:
        scan = find_images(root, on_found=bar.update)
    return scan, time.perf_counter() - started


def fingerprint_tree(scan: Scan, name: str, seconds: float, args: argparse.Namespace, cache: HashCache | None,
                     progress: Progress, digest_sizes: Container[int],
                     known: Mapping[bytes, Fingerprint] = {}) -> tuple[list[Fingerprint], TreeSummary]:
    started = time.perf_counter()
    with progress.bar(f"hashing {name}", total=len(scan.images)) as bar:
        prints, sources = fingerprint_all(scan.images, args.hash_size, args.jobs, cache, digest_sizes, known,
                                          bar.update)
    failed = [Unreadable(image.rel, fp.error) for image, fp in zip(scan.images, prints) if fp.error is not None]
    unreadable = sorted(scan.unreadable + failed, key=lambda problem: problem.rel)
    summary = TreeSummary(name, len(scan.images) - len(failed), unreadable, len(scan.unsupported),
                          sources, seconds + time.perf_counter() - started)
    return prints, summary


def run(args: argparse.Namespace) -> RunResult:
    check_folder(args.haystack, "--haystack")
    check_folder(args.needles, "--needles")
    started = time.perf_counter()
    progress = Progress(enabled=not args.quiet and sys.stderr.isatty())
    haystack, haystack_seconds = find_tree(args.haystack, "haystack", progress)
    needles, needles_seconds = find_tree(args.needles, "needles", progress)
    # Size first, as fclones does: only a file whose size occurs in the other tree can be a
    # byte copy, so only such files get the digest of their bytes.
    haystack_sizes = {image.size for image in haystack.images}
    needle_sizes = {image.size for image in needles.images}
    cache = open_cache(args)
    try:
        haystack_prints, haystack_tree = fingerprint_tree(
            haystack, "haystack", haystack_seconds, args, cache, progress, needle_sizes)
        known = {fp.digest: fp for fp in haystack_prints if fp.digest}
        needle_prints, needles_tree = fingerprint_tree(
            needles, "needles", needles_seconds, args, cache, progress, haystack_sizes, known)
        if cache and args.prune_cache:
            print(f"cache: forgot {_count(cache.prune(), 'record')} of files that are gone", file=sys.stderr)
    finally:
        if cache:
            cache.close()
    results = match_needles(needles, needle_prints, haystack, haystack_prints, args.distance, args.rotations,
                            args.hash_size ** 2)
    if not args.quiet:
        for tree in (haystack_tree, needles_tree):
            print(tree.line(), file=sys.stderr)
            if args.verbose:
                for problem in tree.unreadable:
                    print(f"  unreadable: {problem.rel}: {problem.reason}", file=sys.stderr)
    if not results:
        warn(f"no images found under {args.needles}")
    return RunResult(
        settings={"haystack": str(args.haystack), "needles": str(args.needles), "hash_size": args.hash_size,
                  "distance": args.distance, "rotations": args.rotations, "jobs": args.jobs,
                  "cache": None if cache is None else str(cache.path)},
        needles=results,
        verdicts=folder_verdicts(results),
        trees=(haystack_tree, needles_tree),
        elapsed=time.perf_counter() - started,
    )


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(errors="backslashreplace")  # file names need not be valid text
    args = parse_args(argv)
    try:
        result = run(args)
        output = render_json(result) if args.json else render_text(result.verdicts, result.needles, args.list_missing)
        sys.stdout.write(output)
        sys.stdout.flush()
    except FatalError as err:
        print(f"hash_and_search: error: {err}", file=sys.stderr)
        return EXIT_FATAL
    except KeyboardInterrupt:
        print("hash_and_search: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (| head): nothing left to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_SOME_UNMATCHED
    return result.exit_code


if __name__ == "__main__":
    sys.exit(main())
