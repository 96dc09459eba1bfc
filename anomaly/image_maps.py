"""Anomaly maps drawn over their images, as PNG files.

Each overlay is the input in grey with the map on top as a colour heat map (matplotlib's
``inferno``): a pixel's colour and opacity grow with its map value, so normal regions show the
image and anomalous ones glow. One scale, ``vmax``, is shared by every image of a call (by
default :attr:`anomaly.image.ImageDetector.map_scale_` is the one to pass), so overlays can be
compared with each other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from PIL import Image

from anomaly.errors import InputError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def overlay(image: np.ndarray, amap: np.ndarray, vmax: float, *, alpha: float = 0.7) -> np.ndarray:
    """One overlay as uint8 RGB (H, W, 3).

    Parameters
    ----------
    image : ndarray of shape (C, H, W)
        The input in [0, 1], grey (C=1) or RGB (C=3); shown in grey.
    amap : ndarray of shape (H, W)
        Its anomaly map, higher = more anomalous.
    vmax : float
        The map value drawn at full colour and opacity (``alpha``); 0 is transparent.
    alpha : float, default=0.7
        Opacity of the hottest colour.
    """
    grey = image.mean(axis=0) if image.shape[0] == 1 else _luma(image)
    grey = np.clip(grey, 0.0, 1.0)[..., None]  # (H, W, 1)
    level = np.clip(amap / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(amap)
    heat = colormaps["inferno"](level)[..., :3]  # (H, W, 3) in [0, 1]
    weight = alpha * level[..., None]
    rgb = (1.0 - weight) * grey + weight * heat
    return np.round(rgb * 255.0).astype(np.uint8)


def check_maps_dir(out_dir: str | os.PathLike[str]) -> Path:
    """``out_dir`` as a Path, when overlays can be written there: a folder, or a path not there
    yet whose nearest existing parent is a folder.

    Call it before scoring, so that a maps path that is a file fails before anything is
    written (:func:`save_overlays` calls it too).

    Raises
    ------
    InputError
        When ``out_dir``, or the nearest of its parents that exists, is not a folder.
    """
    out = Path(out_dir)
    for path in (out, *out.parents):
        if path.is_dir():
            return out
        if path.exists() or path.is_symlink():  # a file, or a link to nowhere, is in the way
            if path == out:
                raise InputError(f"{out}: not a folder; anomaly maps are written into a folder")
            raise InputError(f"{path}: not a folder, so the maps folder {out} cannot be made")
    return out


def save_overlays(
    images: np.ndarray,
    maps: np.ndarray,
    names: Sequence[str],
    out_dir: str | os.PathLike[str],
    *,
    vmax: float | None = None,
    alpha: float = 0.7,
) -> list[Path]:
    """Write one PNG per image: the image in grey with its anomaly map over it.

    Parameters
    ----------
    images : ndarray of shape (N, C, H, W)
        The images as read (values in [0, 1]), e.g. from :func:`anomaly.data.images.load_images`
        at the detector's size.
    maps : ndarray of shape (N, H, W)
        Their anomaly maps (:meth:`anomaly.image.ImageDetector.anomaly_maps`).
    names : sequence of str
        One name per image; a file is named after the last part of it, made safe, with
        ``_map.png`` appended (and ``-<index>`` before that when two names would clash).
    out_dir : path
        Created when missing; an error (:class:`InputError`) when it is a file.
    vmax : float, optional
        The map value drawn at full colour. Default: the largest value of ``maps``.
    alpha : float, default=0.7
        Opacity of the hottest colour.

    Returns
    -------
    list of Path
        The files written, in the order of ``images``.

    Each file is written under a temporary name in ``out_dir`` and renamed into place, so a
    reader never sees half a PNG.
    """
    if images.ndim != 4 or maps.shape != (len(images), *images.shape[2:]):
        raise InputError(
            f"maps of shape {maps.shape} do not match images of shape {images.shape}; expected "
            "(N, C, H, W) images and (N, H, W) maps"
        )
    if len(names) != len(images):
        raise InputError(f"{len(names)} names given for {len(images)} images")
    if vmax is None:
        vmax = float(maps.max()) if maps.size else 1.0
    out = check_maps_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for index, file_name in enumerate(_file_names(names)):
        target = out / file_name
        staging = out / f".{file_name}.tmp"
        rgb = overlay(images[index], maps[index], vmax, alpha=alpha)
        try:
            Image.fromarray(rgb).save(staging, format="PNG")
            os.replace(staging, target)
        except BaseException:
            staging.unlink(missing_ok=True)
            raise
        written.append(target)
    return written


def _file_names(names: Sequence[str]) -> list[str]:
    """``<safe stem>_map.png`` per name; ``-<index>`` added where stems clash.

    A suffixed name is checked against every name already given out, and against the plain
    names still to come, so ``x.png``, ``x.jpg`` and ``x-1.png`` give three files, not two.
    Names are compared ignoring case, as the file systems of macOS and Windows do.
    """
    stems = [_stem(name) for name in names]
    counts: dict[str, int] = {}
    for stem in stems:
        counts[stem.casefold()] = counts.get(stem.casefold(), 0) + 1
    taken = {key for key, count in counts.items() if count == 1}  # plain names, kept as they are
    out = []
    for index, stem in enumerate(stems):
        if counts[stem.casefold()] == 1:
            out.append(f"{stem}_map.png")
            continue
        suffix = index
        while f"{stem}-{suffix}".casefold() in taken:
            suffix += 1
        taken.add(f"{stem}-{suffix}".casefold())
        out.append(f"{stem}-{suffix}_map.png")
    return out


def _stem(name: str) -> str:
    """The last part of ``name``, without an image suffix, made safe for a file name."""
    last = re.split(r"[/\\]", str(name).rstrip("/\\"))[-1]
    for suffix in (".png", ".jpg", ".jpeg"):
        if last.lower().endswith(suffix):
            last = last[: -len(suffix)]
    return _UNSAFE.sub("_", last).strip("_.") or "image"


def _luma(image: np.ndarray) -> np.ndarray:
    r, g, b = image[0], image[1], image[2]
    return 0.299 * r + 0.587 * g + 0.114 * b
