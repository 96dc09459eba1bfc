"""The model directory: weights in safetensors, everything else in one JSON file. No pickle.

::

    model-dir/
      detector.json        format version, parameters, schema, preprocessing state,
                           calibration (threshold and scores), training history, versions
      weights.safetensors  the torch module's state dict

A directory is written next to its final place and renamed into it, so a reader never sees a
half-written model. The JSON records the weights' SHA-256: a reader that catches a folder being
replaced (the JSON of one save, the weights of the next, or no folder for a moment) reads again,
and weights changed since the save are refused.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load, save

from anomaly.errors import ModelFormatError

FORMAT_VERSION = 1
META_FILE = "detector.json"
WEIGHTS_FILE = "weights.safetensors"
# How long a reader retries a folder it found mid-replacement (a save swaps it in two renames).
READ_RETRY_S = 2.0


def save_model_dir(path: str | Path, meta: dict, tensors: dict[str, torch.Tensor]) -> Path:
    """Write ``meta`` and ``tensors`` to the directory ``path``, replacing it atomically; a
    symlink's target is replaced (the link stays)."""
    path = Path(os.path.realpath(path))
    check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = hidden_sibling(path)
    staging.mkdir()  # as any new folder: its permissions follow the umask (mkdtemp's: 0o700)
    try:
        weights = save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})
        (staging / WEIGHTS_FILE).write_bytes(weights)
        meta = {"format_version": FORMAT_VERSION, **meta, "weights_sha256": _sha256(weights)}
        with open(staging / META_FILE, "w") as fh:
            json.dump(meta, fh, indent=1, default=_plain)
        if path.exists():
            check_target(path)  # again: it may have changed while the weights were written
        replace_dir(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def replace_dir(staging: Path, path: Path) -> None:
    """Rename the folder ``staging`` to ``path``, moving aside (then deleting) any folder
    there. POSIX renames no folder over a non-empty one, so for a moment ``path`` is absent,
    with ``.NAME.old`` beside it (readers of a model folder wait that out)."""
    if not path.exists():
        os.replace(staging, path)
        return
    old = _aside(path)
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    os.replace(staging, path)
    shutil.rmtree(old, ignore_errors=True)


def _aside(path: Path) -> Path:
    """Where :func:`replace_dir` moves the folder it replaces, while it swaps."""
    return path.with_name(f".{path.name}.old")


def check_target(path: str | Path) -> None:
    """Refuse to save a model over ``path`` when it is a file or a non-empty folder that does
    not hold a model (callers check this before a long training run, too)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ModelFormatError(f"{path} is a file, not a model directory; not replacing it")
    if path.is_dir() and not (path / META_FILE).exists() and any(path.iterdir()):
        raise ModelFormatError(f"{path} exists and is not a model directory; not replacing it")
    # The model is written beside its place and renamed: the nearest existing folder above
    # must be a folder we may write in.
    parent = next(p for p in Path(os.path.realpath(path)).parents if p.exists())
    if not parent.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(parent))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(parent))


def hidden_sibling(path: Path) -> Path:
    """A new hidden name beside ``path``, for writing something that is then renamed to it."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}")


def load_model_dir(path: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Read a model directory; tensors come back on the CPU whatever device trained them."""
    path = Path(path)
    deadline = time.monotonic() + READ_RETRY_S
    while True:
        try:
            return _read_model_dir(path)
        except _Torn as torn:
            if time.monotonic() > deadline:
                raise ModelFormatError(str(torn)) from None
            time.sleep(0.01)


class _Torn(Exception):
    """The folder changed while it was read, or its weights are not the ones saved with it."""


def _read_model_dir(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    meta_path, weights_path = path / META_FILE, path / WEIGHTS_FILE
    try:
        meta_text, weights = meta_path.read_text(), weights_path.read_bytes()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        if _aside(path).exists():  # a save is swapping it in
            raise _Torn(f"{path} was being replaced while read") from None
        raise ModelFormatError(
            f"{path} is not a model directory (needs {META_FILE} and {WEIGHTS_FILE})"
        ) from None
    try:
        meta = json.loads(meta_text)
    except json.JSONDecodeError as exc:
        raise ModelFormatError(f"{meta_path} is not valid JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelFormatError(f"{meta_path} holds a {type(meta).__name__}, not a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ModelFormatError(
            f"{path} has model format {version!r}; this version of anomaly reads {FORMAT_VERSION}"
        )
    try:
        tensors = load(weights)
    except SafetensorError as exc:  # truncated, or not safetensors at all
        raise ModelFormatError(f"{weights_path} is not a valid safetensors file: {exc}") from None
    expected = meta.get("weights_sha256")  # models saved before it was recorded have none
    if expected is not None and _sha256(weights) != expected:
        raise _Torn(f"{weights_path} is not the weights saved with {META_FILE} (SHA-256 differs)")
    return meta, tensors


def _plain(value: object) -> object:
    """numpy numbers and arrays (a size given as np.int64, say) as JSON's numbers and lists."""
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# Which class reads each kind of model directory, by the "kind" its JSON records.
KINDS = {
    "tabular": ("anomaly.detector", "Detector"),
    "sequence": ("anomaly.sequence", "SequenceDetector"),
    "image": ("anomaly.image", "ImageDetector"),
}


def load_detector_dir(path: str | Path, *, device: str = "cpu"):
    """Any saved detector (table, sequence or image), read by the class its kind names."""
    import importlib

    kind = read_kind(path)
    if kind not in KINDS:
        raise ModelFormatError(f"{path} holds a {kind!r} model, which this version cannot read")
    module, name = KINDS[kind]
    return getattr(importlib.import_module(module), name).load(path, device=device)


def read_kind(path: str | Path) -> str:
    """The kind of model a directory holds ("tabular" for one that does not say)."""
    try:
        return json.loads((Path(path) / META_FILE).read_text()).get("kind", "tabular")
    except (OSError, json.JSONDecodeError):
        return "tabular"  # the class's own load() says what is wrong with the directory
