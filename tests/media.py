"""Test fixtures in the formats the script decodes besides OpenCV's, made at test time from the
committed JPEGs (tests/photos), so that no binary fixture is committed.

Each maker takes 8-bit BGR pixels (as cv2.imread gives) and returns the encoded file's bytes.
"""
from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import cv2
import numpy as np
import pillow_heif
from PIL import Image

# EXIF/TIFF Orientation tag, and what each value asks of a viewer (1 = as stored).
ORIENTATION_TAG = 0x0112


def _pil_rgb(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB))


def _exif_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return exif.tobytes()


# irot stores anticlockwise quarter turns; the EXIF orientations that are pure turns map to them.
IROT_FOR_ORIENTATION = {1: 0, 8: 1, 3: 2, 6: 3}


def make_heic(pixels: np.ndarray, *, quality: int = 95, orientation: int = 1, exif_orientation: int | None = None,
              bit_depth: int = 8, alpha: bool = False) -> bytes:
    """A HEIC whose container says `orientation` (irot/imir, given as the EXIF value that means
    the same); the stored pixels are `pixels` as they are, so a correct decoder shows them turned.

    exif_orientation: an EXIF Orientation tag that disagrees with the container (both must be
    pure turns: 1, 3, 6, 8); the HEIF spec says readers ignore it. quality -1 is lossless
    (4:4:4 chroma). bit_depth 10 or 12 stores a high-bit-depth copy of the 8-bit pixels.
    """
    if bit_depth == 8:
        mode = "BGRA" if alpha else "BGR"
        data = np.dstack([pixels, np.full(pixels.shape[:2], 128, np.uint8)]) if alpha else pixels
    else:  # 16-bit samples, of which pillow-heif keeps the top bit_depth bits
        mode, data = "BGR;16", pixels.astype(np.uint16) * 257
    heif = pillow_heif.from_bytes(mode, (pixels.shape[1], pixels.shape[0]), np.ascontiguousarray(data).tobytes())
    # pillow-heif writes an EXIF orientation it is given as irot/imir, and the EXIF tag too.
    written = orientation if exif_orientation is None else exif_orientation
    buffer = io.BytesIO()
    heif.save(buffer, format="HEIF", quality=quality, chroma=444 if quality == -1 else 420, bit_depth=bit_depth,
              exif=_exif_orientation(written) if written != 1 else None)
    encoded = buffer.getvalue()
    if exif_orientation is None or exif_orientation == orientation:
        return encoded
    if written == 1:
        raise ValueError("the EXIF tag to disagree with must not be 1: no irot would be written to change")
    # Keep the EXIF tag, and set the container's irot to what `orientation` says.
    at = encoded.index(b"\0\0\0\x09irot") + 8
    return encoded[:at] + bytes([IROT_FOR_ORIENTATION[orientation]]) + encoded[at + 1:]


def make_avif(pixels: np.ndarray, *, quality: int = 90, orientation: int = 1) -> bytes:
    """An AVIF by Pillow, which turns an EXIF orientation into irot/imir and drops the tag."""
    buffer = io.BytesIO()
    _pil_rgb(pixels).save(buffer, format="AVIF", quality=quality,
                          exif=_exif_orientation(orientation) if orientation != 1 else None)
    return buffer.getvalue()


def make_jxl(pixels: np.ndarray, *, lossless: bool = False, quality: int = 95) -> bytes:
    import pillow_jxl  # noqa: F401  registers the JXL plugin with Pillow

    buffer = io.BytesIO()
    _pil_rgb(pixels).save(buffer, format="JXL", lossless=lossless, quality=quality)
    return buffer.getvalue()


def make_jxl_from_jpeg(jpeg: bytes) -> bytes:
    """A JPEG recompressed losslessly into JXL, as `cjxl photo.jpg` does by default: the JPEG's
    bytes can be rebuilt exactly. (Pillow's save does this only for a file opened by name.)"""
    from pillow_jxl import Encoder

    width, height = _jpeg_size(jpeg)
    return bytes(Encoder(mode="RGB", lossless=True)(jpeg, width, height, jpeg_encode=True))


# sRGB primaries, D65: XYZ -> linear sRGB. As a DNG ColorMatrix1 it makes the "camera" space
# linear sRGB, so that LibRaw's rendering gives back roughly the photo the mosaic came from.
XYZ_TO_LINEAR_SRGB = ((3.2404542, -1.5371385, -0.4985314), (-0.9692660, 1.8760108, 0.0415560),
                      (0.0556434, -0.2040259, 1.0572252))
RAW_WHITE_LEVEL = 4095  # 12-bit, as most cameras


def make_dng(pixels: np.ndarray, *, orientation: int = 1, preview: bytes | None = None) -> bytes:
    """A DNG whose raw image is an RGGB Bayer mosaic of `pixels` (sRGB decoded to linear light),
    stored as the camera's sensor saw it; `orientation` is the TIFF Orientation the camera wrote.
    preview: JPEG bytes embedded as a second IFD, as a camera's full-size preview (never rotated)."""
    from pidng.core import RAW2DNG, DNGTags, Tag
    from pidng.defs import CFAPattern, CalibrationIlluminant, DNGVersion, PhotometricInterpretation

    height, width = (pixels.shape[0] // 2) * 2, (pixels.shape[1] // 2) * 2
    rgb = cv2.cvtColor(pixels[:height, :width], cv2.COLOR_BGR2RGB).astype(np.float64) / 255
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    mosaic = np.empty((height, width), np.float64)
    mosaic[0::2, 0::2] = linear[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = linear[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = linear[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = linear[1::2, 1::2, 2]
    raw = np.rint(mosaic * RAW_WHITE_LEVEL).astype(np.uint16)

    def rationals(values):
        return [[Fraction(v).limit_denominator(10000).numerator, Fraction(v).limit_denominator(10000).denominator]
                for v in values]

    tags = DNGTags()
    for tag, value in (
        (Tag.ImageWidth, width), (Tag.ImageLength, height), (Tag.TileWidth, width), (Tag.TileLength, height),
        (Tag.Orientation, orientation), (Tag.PhotometricInterpretation, PhotometricInterpretation.Color_Filter_Array),
        (Tag.SamplesPerPixel, 1), (Tag.BitsPerSample, 16), (Tag.CFARepeatPatternDim, [2, 2]),
        (Tag.CFAPattern, CFAPattern.RGGB), (Tag.BlackLevel, 0), (Tag.WhiteLevel, RAW_WHITE_LEVEL),
        (Tag.ColorMatrix1, rationals(v for row in XYZ_TO_LINEAR_SRGB for v in row)),
        (Tag.CalibrationIlluminant1, CalibrationIlluminant.D65), (Tag.AsShotNeutral, rationals([1, 1, 1])),
        (Tag.BaselineExposure, [[0, 1]]), (Tag.Make, "hash_and_search"), (Tag.Model, "test camera"),
        (Tag.UniqueCameraModel, "hash_and_search test camera"), (Tag.DNGVersion, DNGVersion.V1_4),
    ):
        tags.set(tag, value)
    converter = RAW2DNG()
    converter.options(tags, path="", compress=False)
    dng = bytes(converter.convert(raw))
    return dng if preview is None else _with_preview(dng, preview)


def _with_preview(dng: bytes, jpeg: bytes) -> bytes:
    """Chain a second IFD holding a JPEG preview after pidng's one IFD, as DNG previews are
    stored (NewSubfileType 1, Compression 7): pidng cannot write one itself."""
    first_ifd = struct.unpack_from("<I", dng, 4)[0]
    entries = struct.unpack_from("<H", dng, first_ifd)[0]
    next_pointer = first_ifd + 2 + 12 * entries
    width, height = _jpeg_size(jpeg)
    jpeg_at = (len(dng) + 3) & ~3
    ifd_at = (jpeg_at + len(jpeg) + 3) & ~3
    bits_at = ifd_at + 2 + 12 * 9 + 4  # BitsPerSample's three values do not fit in the entry
    fields = [  # (tag, type, count, value), sorted by tag as TIFF requires; type 3 SHORT, 4 LONG
        (254, 4, 1, 1),  # NewSubfileType: a reduced-resolution copy (a preview)
        (256, 4, 1, width), (257, 4, 1, height), (258, 3, 3, bits_at),
        (259, 3, 1, 7),  # Compression: JPEG
        (262, 3, 1, 6),  # PhotometricInterpretation: YCbCr
        (273, 4, 1, jpeg_at), (277, 3, 1, 3), (279, 4, 1, len(jpeg)),
    ]
    ifd = struct.pack("<H", len(fields)) + b"".join(
        struct.pack("<HHI", tag, kind, count) + (struct.pack("<HH", value, 0) if kind == 3 and count == 1
                                                  else struct.pack("<I", value))
        for tag, kind, count, value in fields) + struct.pack("<I", 0) + struct.pack("<3H", 8, 8, 8)
    body = bytearray(dng)
    struct.pack_into("<I", body, next_pointer, ifd_at)
    body += b"\0" * (jpeg_at - len(body)) + jpeg
    body += b"\0" * (ifd_at - len(body)) + ifd
    return bytes(body)


def _jpeg_size(jpeg: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(jpeg)) as image:
        return image.size


def encode_jpeg(pixels: np.ndarray, quality: int = 95, orientation: int | None = None) -> bytes:
    """A JPEG as a camera writes its preview; with an EXIF Orientation tag when given."""
    ok, encoded = cv2.imencode(".jpg", pixels, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    if orientation is None:
        return encoded.tobytes()
    buffer = io.BytesIO()
    with Image.open(io.BytesIO(encoded.tobytes())) as image:
        # Re-saving with quality="keep" keeps the coefficients: the pixels stay the same.
        image.save(buffer, format="JPEG", quality="keep", exif=_exif_orientation(orientation))
    return buffer.getvalue()


# Containers and codecs that PyAV's bundled FFmpeg writes here (checked by the tests).
VIDEO_CODECS = {".mp4": "mpeg4", ".mov": "mpeg4", ".m4v": "mpeg4", ".avi": "mpeg4", ".mkv": "mpeg4",
                ".3gp": "h263", ".webm": "libvpx", ".mpg": "mpeg2video"}


def make_video(pixels: np.ndarray, extension: str, frames: int = 3) -> bytes:
    """A short video of the photo, a few frames at 10 fps, in the container `extension` names."""
    buffer = io.BytesIO()
    codec = VIDEO_CODECS[extension]
    height, width = (pixels.shape[0] // 2) * 2, (pixels.shape[1] // 2) * 2
    if codec == "h263":  # H.263 allows only a few frame sizes
        width, height = 352, 288
    frame_pixels = cv2.resize(pixels, (width, height), interpolation=cv2.INTER_AREA)
    with av.open(buffer, mode="w", format=_container_format(extension)) as container:
        stream = container.add_stream(codec, rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for _ in range(frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame_pixels, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def _container_format(extension: str) -> str:
    return {".mp4": "mp4", ".mov": "mov", ".m4v": "ipod", ".avi": "avi", ".mkv": "matroska", ".3gp": "3gp",
            ".webm": "webm", ".mpg": "mpeg"}[extension]
