"""Images: folders of PNG/JPEG files or arrays, read as float32 (N, C, H, W) in [0, 1].

Every image, whatever its source, goes through one path: to a float array in [0, 1] (8-bit
values / 255, 16-bit / 65535, floats as given), to the requested channels (RGB to grey by
ITU-R 601 luma, grey to RGB by repetition, alpha dropped), then resized to the requested size
with Pillow's bilinear filter (in 32-bit float, so nothing is rounded to 8 bits on the way).
So a PNG file and the same pixels in a uint8 ``.npy`` give identical arrays.

Sources (:func:`load_images`):

- a folder: its PNG/JPEG files (``.png``, ``.jpg``, ``.jpeg``) and ``.npy``/``.npz`` arrays,
  sorted by name, not recursive; other files are skipped, with a warning naming a few;
- a file, or a list of files, of those kinds;
- an in-memory array.

An array holds one image or a stack, by its shape: (H, W); (H, W, C) when its last axis has 1,
3 or 4 entries, else (N, H, W); (N, H, W, C) or, when its second axis has 1 or 3 entries and its
last does not, (N, C, H, W) (the layout :func:`load_images` returns). ``C`` is 1 (grey), 3 (RGB)
or 4 (RGBA). An ``.npz`` holds any number of such arrays. Integer arrays must be uint8 or
uint16; float arrays are taken as they are (expected in [0, 1]) and must be finite. A float
image far outside [0, 1] is not refused: :class:`ImageNormalizer` clips its standardised values
(as tables are clipped, :data:`anomaly.preprocessing.STANDARDISED_LIMIT`), so it scores finitely
and high.

Each image is named for the score table: the file's path, ``file.npy[i]`` for the i-th image
of a stack, ``file.npz:key`` or ``file.npz:key[i]`` for an archive's arrays, and the index
(``"0"``, ``"1"``...) for an in-memory array.
"""

from __future__ import annotations

import base64
import binascii
import io
import logging
import os
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from anomaly.errors import InputError
from anomaly.preprocessing import STANDARDISED_LIMIT

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
CHANNELS = (1, 3)
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # width x height of the largest image read
PathLike = str | os.PathLike[str]
ImageSource = PathLike | Sequence[PathLike] | np.ndarray

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, as Pillow's "L"
_U8, _U16 = np.float32(255), np.float32(65535)  # the largest 8- and 16-bit values
_DIVISOR = {np.dtype(np.uint8): _U8, np.dtype(np.uint16): _U16, np.dtype(bool): np.float32(1)}
_CHUNK = 256  # images converted at a time from an array: bounds the temporary copies
_SKIPPED_SHOWN = 5  # names of skipped files a warning lists
_BASE64_SPACE = b" \t\n\r\v\f"  # what wraps base64 text into lines (MIME, encodebytes)


def image_size(size: int | Sequence[int]) -> tuple[int, int]:
    """``size`` as ``(height, width)``: an int means a square."""
    if isinstance(size, int | np.integer):
        size = (int(size), int(size))
    try:
        height, width = (int(s) for s in size)
    except (TypeError, ValueError):
        raise InputError(f"size must be an int or (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise InputError(f"size must be positive, got {(height, width)}")
    return height, width


def load_images(
    source: ImageSource, size: int | Sequence[int], channels: int = 1
) -> tuple[np.ndarray, list[str]]:
    """Read images from a folder, files or an array, resized to ``size``.

    Parameters
    ----------
    source : path, sequence of paths, or ndarray
        A folder, an image or array file, a list of such files, or an in-memory array (see
        the module docstring for the shapes an array may have).
    size : int or (int, int)
        The output ``(height, width)``; an int means a square.
    channels : {1, 3}, default=1
        Grey or RGB output.

    Returns
    -------
    images : ndarray of shape (N, channels, height, width), float32
        Pixel values in [0, 1] for 8- and 16-bit inputs.
    names : list of str
        One name per image (see the module docstring).

    Raises
    ------
    InputError
        For a missing path, an empty folder, an unreadable file or an array of the wrong shape
        or type; the message names the file.
    """
    size = image_size(size)
    if channels not in CHANNELS:
        raise InputError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if isinstance(source, np.ndarray):
        return _from_memory(source, size, channels)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if path.is_dir():
            files = _folder_files(path)
        elif path.is_file():
            files = [path]
        else:
            raise InputError(f"{path}: no such file or folder")
    elif isinstance(source, Sequence) and all(isinstance(p, str | os.PathLike) for p in source):
        files = [Path(p) for p in source]
        for path in files:
            if not path.is_file():
                what = "a folder, not a file" if path.is_dir() else "no such file"
                raise InputError(f"{path}: {what}")
    else:
        raise InputError(
            f"expected a folder, a file, a list of files or an array, got {type(source).__name__}"
        )
    entries = [entry for path in files for entry in _entries(path)]
    out = np.empty((sum(e.count for e in entries), channels, *size), dtype=np.float32)
    names: list[str] = []
    start = 0
    for entry in entries:
        entry.read_into(out[start : start + entry.count], size)
        names += entry.names()
        start += entry.count
    return out, names


def decode_image(
    data: bytes, size: int | Sequence[int], channels: int = 1, *, name: str = "image"
) -> np.ndarray:
    """One PNG or JPEG image from its encoded bytes, as float32 (channels, height, width).

    The same conversion as :func:`load_images` applies, so the bytes of a file decode to the
    array that loading the file gives. ``name`` is used in error messages.

    Raises
    ------
    InputError
        When the bytes are not a PNG or JPEG image (or one too large to decode safely).
    """
    size = image_size(size)
    if channels not in CHANNELS:
        raise InputError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    out = np.empty((1, channels, *size), dtype=np.float32)
    _read_picture(io.BytesIO(data), name, out, size)
    return out[0]


def b64decode_text(text: str) -> bytes:
    """The bytes of base64 ``text``, wrapped in lines or not.

    Line breaks and spaces are dropped first: ``base64.encodebytes`` and MIME wrap base64 at 76
    characters, and that is still base64. Anything else outside the base64 alphabet is an
    error, so text that merely happens to decode is not taken for an image.

    Raises
    ------
    binascii.Error
        When ``text`` is not base64 (non-ASCII text included), as ``base64.b64decode`` does.
    """
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise binascii.Error("base64 text holds non-ASCII characters") from None
    return base64.b64decode(data.translate(None, _BASE64_SPACE), validate=True)


# ---------------------------------------------------------------------- normalisation
class ImageNormalizer:
    """Per-channel standardisation, fitted on the normal training images.

    Attributes
    ----------
    mean_, std_ : ndarray of shape (C,), float64
        Per-channel mean and standard deviation of the fitted images (a channel with no
        spread gets a standard deviation of 1).
    """

    def fit(self, images: np.ndarray) -> ImageNormalizer:
        """Learn the per-channel mean and spread of ``images`` (N, C, H, W)."""
        if images.ndim != 4 or len(images) == 0:
            raise InputError(f"expected a non-empty (N, C, H, W) array, got shape {images.shape}")
        self.mean_ = images.mean(axis=(0, 2, 3), dtype=np.float64)
        std = images.std(axis=(0, 2, 3), dtype=np.float64)
        self.std_ = np.where(std > 1e-8, std, 1.0)
        return self

    def transform(self, images: np.ndarray) -> np.ndarray:
        """``(images - mean) / std`` per channel, within ``STANDARDISED_LIMIT``; a new float32
        (N, C, H, W) array."""
        if images.ndim != 4 or images.shape[1] != len(self.mean_):
            raise InputError(
                f"expected images of shape (N, {len(self.mean_)}, H, W), got {images.shape}"
            )
        mean = self.mean_.astype(np.float32)[:, None, None]
        scale = (1.0 / self.std_).astype(np.float32)[:, None, None]
        # Clipped as tables are (anomaly.preprocessing): a float pixel of 3e38 overflows to inf,
        # the score to NaN, and NaN is never above a threshold: the wildest image would pass.
        with np.errstate(over="ignore", invalid="ignore"):
            out = np.subtract(images, mean, dtype=np.float32)
            out *= scale
        np.clip(out, -STANDARDISED_LIMIT, STANDARDISED_LIMIT, out=out)
        return out

    def to_dict(self) -> dict:
        return {"mean": self.mean_.tolist(), "std": self.std_.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> ImageNormalizer:
        norm = cls()
        norm.mean_ = np.asarray(data["mean"], dtype=np.float64)
        norm.std_ = np.asarray(data["std"], dtype=np.float64)
        return norm


# ---------------------------------------------------------------------- sources
@dataclass
class _Entry:
    """Images of one source: a picture file, or one array of an ``.npy``/``.npz`` file."""

    path: Path
    count: int
    stack: bool = False  # an array of several images (named with [i])
    key: str | None = None  # the array's name in an .npz

    @property
    def where(self) -> str:
        return f"{self.path}:{self.key}" if self.key is not None else str(self.path)

    def names(self) -> list[str]:
        if not self.stack:
            return [self.where]
        return [f"{self.where}[{i}]" for i in range(self.count)]

    def read_into(self, out: np.ndarray, size: tuple[int, int]) -> None:
        suffix = self.path.suffix.lower()
        if suffix not in ARRAY_SUFFIXES:
            with _opened(self.path) as fh:
                _read_picture(fh, self.where, out, size)
            return
        try:
            if suffix == ".npy":
                array = np.load(self.path, mmap_mode="r", allow_pickle=False)
            else:
                with np.load(self.path, allow_pickle=False) as archive:
                    array = archive[self.key]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
            raise InputError(f"{self.where}: not a readable numpy array ({exc})") from None
        _fill(_as_stack(array, self.where), out, size, self.where)


def _opened(path: Path) -> BinaryIO:
    try:
        return open(path, "rb")
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror})") from None


def _folder_files(folder: Path) -> list[Path]:
    suffixes = IMAGE_SUFFIXES + ARRAY_SUFFIXES
    files: list[Path] = []
    skipped: list[str] = []
    for path in sorted(folder.iterdir(), key=lambda p: p.name):
        if path.name.startswith("."):
            continue
        if path.is_dir():  # not read: images in subfolders are said to be left out
            skipped.append(f"{path.name}/")
        elif not path.is_file():  # a link to nothing, a pipe
            skipped.append(path.name)
        elif path.suffix.lower() in suffixes:
            files.append(path)
        else:
            skipped.append(path.name)
    if skipped:
        # A warning, not info: a folder of TIFF or WebP images would otherwise be scored in
        # part without a word on the command line.
        log.warning(
            "%s: skipped %d entries that are not PNG, JPEG, .npy or .npz files (subfolders "
            "are not read): %s",
            folder,
            len(skipped),
            _first_names(skipped),
        )
    if not files:
        raise InputError(f"{folder}: no PNG, JPEG, .npy or .npz files in this folder")
    return files


def _first_names(names: list[str]) -> str:
    """The first few ``names``, comma-separated, and "..." when there are more."""
    more = ", ..." if len(names) > _SKIPPED_SHOWN else ""
    return ", ".join(names[:_SKIPPED_SHOWN]) + more


def _entries(path: Path) -> list[_Entry]:
    """What ``path`` holds, from headers only: no pixel is read yet."""
    suffix = path.suffix.lower()
    if suffix not in ARRAY_SUFFIXES:
        return [_Entry(path, 1)]
    try:
        if suffix == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
            return [_Entry(path, *_count(shape, str(path)))]
        entries = [
            _Entry(path, *_count(shape, f"{path}:{key}"), key=key)
            for key, shape in _npz_shapes(path)
        ]
    except InputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a readable numpy file ({exc})") from None
    if not entries:
        raise InputError(f"{path}: the archive holds no arrays")
    return entries


def _npz_shapes(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """(key, shape) of every array in an ``.npz``, read from the array headers."""
    shapes = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            key = info.filename[: -len(".npy")]
            with archive.open(info) as fh:
                version = np.lib.format.read_magic(fh)
                if version == (1, 0):
                    shape = np.lib.format.read_array_header_1_0(fh)[0]
                elif version == (2, 0):
                    shape = np.lib.format.read_array_header_2_0(fh)[0]
                else:  # a newer header: read the array for its shape
                    with np.load(path, allow_pickle=False) as npz:
                        shape = npz[key].shape
            shapes.append((key, tuple(shape)))
    return shapes


def _count(shape: tuple[int, ...], where: str) -> tuple[int, bool]:
    """(number of images, whether it is a stack) of an array of ``shape``."""
    stack = _layout(shape, where) in ("NHW", "NHWC", "NCHW")
    return (shape[0] if stack else 1), stack


def _layout(shape: tuple[int, ...], where: str) -> str:
    """How an array of ``shape`` holds images (see the module docstring)."""
    image_channels = (1, 3, 4)
    if len(shape) == 2:
        layout = "HW"
    elif len(shape) == 3:
        layout = "HWC" if shape[2] in image_channels else "NHW"
    elif len(shape) == 4 and shape[1] in (1, 3) and shape[3] not in image_channels:
        layout = "NCHW"
    elif len(shape) == 4 and shape[3] in image_channels:
        layout = "NHWC"
    else:
        raise InputError(
            f"{where}: an array of shape {shape} is not an image or a stack of images; expected "
            "(H, W), (H, W, C), (N, H, W), (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4"
        )
    spatial = shape[-3:-1] if layout.endswith("C") else shape[-2:]
    if min(spatial) < 1:
        raise InputError(f"{where}: an array of shape {shape} has empty images")
    return layout


def _as_stack(array: np.ndarray, where: str) -> np.ndarray:
    """A (N, H, W, C) view of an array holding images (no copy)."""
    layout = _layout(array.shape, where)
    if layout == "HW":
        return array[None, :, :, None]
    if layout == "HWC":
        return array[None]
    if layout == "NHW":
        return array[..., None]
    if layout == "NCHW":
        return array.transpose(0, 2, 3, 1)
    return array


def _from_memory(
    array: np.ndarray, size: tuple[int, int], channels: int
) -> tuple[np.ndarray, list[str]]:
    if (
        array.ndim == 4
        and array.dtype == np.float32
        and array.shape[1:] == (channels, *size)
        and array.flags.c_contiguous
    ):  # already what this function returns: no copy (finite values still checked)
        _check_finite(array, "array")
        return array, [str(i) for i in range(len(array))]
    stack = _as_stack(array, "array")
    out = np.empty((len(stack), channels, *size), dtype=np.float32)
    _fill(stack, out, size, "array")
    return out, [str(i) for i in range(len(out))]


# ---------------------------------------------------------------------- conversion
def _fill(stack: np.ndarray, out: np.ndarray, size: tuple[int, int], where: str) -> None:
    """Convert the (N, H, W, C) ``stack`` into ``out`` (N, channels, *size), a chunk at a time."""
    if stack.dtype in _DIVISOR:
        divisor = _DIVISOR[stack.dtype]
    elif np.issubdtype(stack.dtype, np.floating):
        divisor = np.float32(1)
    else:
        raise InputError(
            f"{where}: arrays of {stack.dtype} are not read; give uint8, uint16 or float values "
            "in [0, 1]"
        )
    for start in range(0, len(stack), _CHUNK):
        part = stack[start : start + _CHUNK]
        if divisor != 1:  # a new array: converted from integers
            chunk = np.asarray(part, dtype=np.float32)
            chunk /= divisor
        else:
            _check_finite(part, where, offset=start)  # before the cast, which makes 1e39 inf
            chunk = _as_float32(part)
        _convert(chunk, out[start : start + len(chunk)], size)


def _as_float32(floats: np.ndarray) -> np.ndarray:
    """Finite ``floats`` as float32, those beyond its range at its largest magnitude.

    A float64 pixel of 1e39 is finite, but inf once cast; kept finite, it is normalised and
    clipped (:class:`ImageNormalizer`) like any other wild value, and flagged.
    """
    if floats.dtype.itemsize <= 4:
        return np.asarray(floats, dtype=np.float32)
    largest = np.finfo(np.float32).max
    return np.clip(floats, -largest, largest).astype(np.float32)


def _check_finite(array: np.ndarray, where: str, offset: int = 0) -> None:
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).reshape(len(array), -1).all(axis=1))[0])
        raise InputError(f"{where}: image {offset + bad} holds non-finite values (NaN or inf)")


def _convert(chunk: np.ndarray, out: np.ndarray, size: tuple[int, int]) -> None:
    """Float (n, h, w, c) in [0, 1] -> ``out`` (n, channels, *size): channels, then resize."""
    channels = out.shape[1]
    if chunk.shape[3] >= 3 and channels == 1:
        r, g, b = chunk[..., 0], chunk[..., 1], chunk[..., 2]
        chunk = (r * _LUMA[0] + g * _LUMA[1] + b * _LUMA[2])[..., None]
    elif chunk.shape[3] == 1 and channels == 3:
        chunk = np.broadcast_to(chunk, (*chunk.shape[:3], 3))
    elif chunk.shape[3] == 4:
        chunk = chunk[..., :3]  # alpha dropped
    planes = chunk.transpose(0, 3, 1, 2)  # (n, channels, h, w)
    if planes.shape[2:] == size:
        out[...] = planes
        return
    height, width = size
    for i, image in enumerate(planes):
        for c, plane in enumerate(image):
            resized = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32)).resize(
                (width, height), Image.Resampling.BILINEAR
            )
            out[i, c] = np.asarray(resized)


def _read_picture(fh: BinaryIO, where: str, out: np.ndarray, size: tuple[int, int]) -> None:
    """Decode one PNG/JPEG from ``fh`` into ``out`` (1, channels, *size)."""
    try:
        with Image.open(fh, formats=("PNG", "JPEG")) as img:
            # Refused from the header, before any decoding: a decompression bomb, or simply
            # more pixels than anyone should send (Pillow's own limit, checked here so that
            # it is an error, not a warning, whatever the process's warning filters).
            if img.width * img.height > MAX_PIXELS:
                raise InputError(
                    f"{where}: {img.width}x{img.height} pixels is more than the {MAX_PIXELS:,} "
                    "an image may have"
                )
            # A JPEG decodes straight at a reduced scale when it is much larger than size.
            img.draft(img.mode, (size[1], size[0]))
            img = ImageOps.exif_transpose(img)  # camera orientation
            pixels = _pixels(img)
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        SyntaxError,
        Image.DecompressionBombError,
    ) as exc:
        if isinstance(exc, InputError):
            raise
        # Pillow names what it read from by its repr (<_io.BytesIO object at 0x7f...>):
        # said once, by ``where``, instead.
        reason = "no PNG or JPEG header" if isinstance(exc, UnidentifiedImageError) else exc
        raise InputError(f"{where}: not a readable PNG or JPEG image ({reason})") from None
    _convert(pixels[None], out, size)


def _pixels(img: Image.Image) -> np.ndarray:
    """The picture as float32 (h, w, 1) for grey or (h, w, 3) for colour, in [0, 1].

    Channels are converted later, by the code arrays go through, so that a file and an array
    of the same pixels give the same result.
    """
    if img.mode.startswith("I;16") or img.mode == "I":  # 16-bit grey
        return np.asarray(img, dtype=np.float32)[..., None] / _U16
    if img.mode == "F":
        return np.asarray(img, dtype=np.float32)[..., None]
    grey = img.mode in ("1", "L", "LA", "La")
    pixels = np.asarray(img.convert("L" if grey else "RGB"), dtype=np.float32)
    pixels /= _U8
    return pixels[..., None] if grey else pixels
