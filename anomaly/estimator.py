"""What the three detectors share: their training run and the common parts of a saved model.

:class:`~anomaly.Detector` (tables), :class:`~anomaly.SequenceDetector` and
:class:`~anomaly.ImageDetector` differ in their data, models and scores; they build their
training settings, time their training, and save and restore weights, architecture, history
and versions the same way, here.
"""

from __future__ import annotations

import datetime as dt
import inspect
import math
import numbers
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Self

import numpy as np
import torch

from anomaly.calibration import Calibrator
from anomaly.errors import AnomalyError, InputError, ModelFormatError, NotFittedError
from anomaly.persistence import META_FILE, load_model_dir, save_model_dir
from anomaly.scoring import SCORE_METHODS
from anomaly.training import TrainConfig, resolve_device, this_process, train, training_device

if TYPE_CHECKING:
    from sklearn.utils import Tags


class AutoencoderDetector:
    """Base class of the detectors; not used on its own.

    A subclass sets ``kind`` (the name its saved models record) and ``_build_module``, keeps
    each constructor argument as an attribute of the same name (``score`` as
    ``score_method``: ``score`` is a method), and has the training settings ``epochs``,
    ``batch_size``, ``lr``, ``weight_decay``, ``patience``, ``denoise``, ``beta``, ``seed``,
    ``device`` and ``progress``.
    """

    kind: str

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments, read from its signature as scikit-learn does (the
        objects themselves, as its ``clone`` checks). ``deep`` is scikit-learn's; a detector
        holds no estimators."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {name: getattr(self, "score_method" if name == "score" else name) for name in names}

    def set_params(self, **params) -> Self:
        """Set constructor arguments by name, as scikit-learn's ``clone`` and searches do."""
        valid = self.get_params()
        for name in params:
            if name not in valid:
                raise InputError(f"{type(self).__name__} has no parameter {name!r}")
        type(self).__init__(self, **(valid | params))  # as the constructor keeps them
        return self

    def __sklearn_is_fitted__(self) -> bool:
        """Whether fitted, for scikit-learn's ``check_is_fitted``."""
        return hasattr(self, "calibrator_")

    def __sklearn_tags__(self) -> Tags:
        """What scikit-learn's pipelines and checks ask of an estimator: no target, and
        tables with missing values and text. scikit-learn is imported only when it asks."""
        from sklearn.utils import InputTags, Tags, TargetTags

        return Tags(
            estimator_type=None,
            target_tags=TargetTags(required=False),
            input_tags=InputTags(allow_nan=True, categorical=True, string=True),
        )

    def _score_method(self) -> str:
        if self.score_method is not None:
            return self.score_method
        return "elbo" if self.model == "vae" else "reconstruction"

    def _check_score(self) -> None:
        """The score settings, checked alike for every detector."""
        method = self._score_method()
        if method not in SCORE_METHODS:
            raise InputError(f"unknown score {method!r}; choose one of {SCORE_METHODS}")
        if method != "reconstruction" and self.model != "vae":
            raise InputError(f"score {method!r} needs model='vae'")
        if self.n_samples < 0:
            raise InputError(f"n_samples must be at least 0, got {self.n_samples}")
        if method == "iwae" and self.n_samples < 1:
            raise InputError(f"score 'iwae' needs n_samples of at least 1, got {self.n_samples}")

    def _check_shared(self) -> None:
        """Types, layer sizes, optimiser, regularisation, seed, threshold rule and device: the
        same rule for every detector."""
        self._check_types()
        if self.latent is not None and self.latent < 1:
            raise InputError(f"latent must be at least 1, got {self.latent}")
        if isinstance(self.hidden, str):
            raise InputError(f"hidden must be layer widths, e.g. (64, 32), not {self.hidden!r}")
        widths = self.hidden if isinstance(self.hidden, list | tuple) else ()
        if not all(_is_count(h) and h >= 1 for h in widths):
            raise InputError(f"hidden widths must be at least 1, got {tuple(self.hidden)}")
        if not 0.0 <= self.dropout < 1.0:
            raise InputError(f"dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 < self.lr < math.inf:
            raise InputError(f"lr must be above 0, got {self.lr}")
        for name in ("weight_decay", "denoise", "beta", "seed"):
            value = getattr(self, name)
            if not 0 <= value < math.inf:
                rule = "at least 0" if value < 0 else "finite"
                raise InputError(f"{name} must be {rule}, got {value}")
        if self.seed >= 2**64:
            raise InputError(f"seed must be below 2**64, got {self.seed}")

    def _check_before_training(self) -> None:
        """The settings, as a saved model's are checked when it loads; then what only training
        needs: a threshold rule it can fit, and the device to train on (unknown, absent, or
        not this torchrun process's). Not at load: a saved model's threshold is fitted."""
        self._check_params()
        Calibrator(target_fpr=self.target_fpr, method=self.threshold_method).check()
        training_device(self.device)

    def _check_types(self) -> None:
        """Each number of its default's type: a whole number where things are counted (epochs,
        sizes, seeds), a number where a rate or weight is (NaN refused), True or False for a
        switch. Tuples and lists (layer widths, image sizes) are each detector's to check."""
        for name, param in inspect.signature(type(self).__init__).parameters.items():
            value = getattr(self, "score_method" if name == "score" else name, None)
            default = param.default
            if name == "self" or isinstance(value, tuple | list):
                continue
            if value is None:
                if default is None or default is inspect.Parameter.empty:
                    continue
                raise InputError(f"{name} must be given, not None (default {default!r})")
            if isinstance(default, bool):
                wrong = not isinstance(value, bool | np.bool_)
                kind = "True or False"
            elif isinstance(default, int) or name in _COUNTS_OR_NONE:
                wrong, kind = not _is_count(value), "a whole number"
            elif isinstance(default, float):
                is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
                wrong, kind = not is_number or value != value, "a number"
            else:
                continue
            if wrong:
                raise InputError(f"{name} must be {kind}, got {value!r}")

    def _initial_module(
        self, warm_start_from: AutoencoderDetector | None, architecture: Callable[[], dict]
    ) -> tuple[dict, torch.nn.Module]:
        """The architecture and module that training starts from: new, seeded weights in the
        shape ``architecture()`` gives, or ``warm_start_from``'s shape and weights (which must
        be that shape: this detector's settings describe the model it trains)."""
        torch.manual_seed(self.seed)
        arch = architecture()
        if warm_start_from is not None:
            warm_start_from._check_fitted()
            kinds = (type(warm_start_from).__name__, warm_start_from.model)
            if kinds != (type(self).__name__, self.model):
                raise InputError(f"cannot warm-start a {self.model!r} {type(self).__name__} "
                                 f"from a {kinds[1]!r} {kinds[0]}")  # fmt: skip
            theirs = warm_start_from.architecture_
            # (compared as flat lists: a saved architecture's tuples came back from JSON as lists)
            differ = [k for k in theirs if k in arch and _flat(arch[k]) != _flat(theirs[k])]
            if differ:
                raise InputError(
                    "cannot warm-start from a model of another shape: "
                    + ", ".join(f"{k} {theirs[k]} there, {arch[k]} here" for k in differ)
                )
            arch = theirs
        module = self._build_module(arch)
        if warm_start_from is not None:
            module.load_state_dict(warm_start_from.module_.state_dict())
        return arch, module

    def _train(
        self,
        module: torch.nn.Module,
        x_train: np.ndarray,
        x_val: np.ndarray,
        *,
        batch_size: int | None = None,
    ) -> dict:
        """Train ``module`` with this detector's settings; sets ``module_``, ``device_`` and
        ``history_`` and returns the run's part of ``training_summary_``."""
        device = training_device(self.device)
        config = TrainConfig(
            epochs=self.epochs,
            batch_size=batch_size or self.batch_size,
            lr=self.lr,
            weight_decay=self.weight_decay,
            patience=self.patience,
            denoise=self.denoise,
            beta=self.beta,
            seed=self.seed,
            progress=self.progress,
        )
        world = this_process().world
        started = time.perf_counter()
        history = train(module, x_train, x_val, config, device)
        seconds = time.perf_counter() - started
        self.module_, self.device_, self.history_ = module, device, history
        return {
            "trained_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "epochs_run": len(history["train_loss"]),
            "train_seconds": round(seconds, 3),
            "device": str(device),
            "processes": world,
            # rows trained on: under torchrun the last len % processes are left out
            "n_train": len(x_train) - len(x_train) % world,
        }

    def _check_fitted(self) -> None:
        if not hasattr(self, "calibrator_"):
            name = type(self).__name__
            raise NotFittedError(f"this {name} is not fitted yet: call fit() or {name}.load()")

    def _save(self, path: str | Path, **own) -> Path:
        """Write the model directory: the common parts, and ``own`` (the subclass's state)."""
        self._check_fitted()
        import anomaly

        meta = {
            "kind": self.kind,
            "params": self.get_params(),
            "architecture": self.architecture_,
            **own,
            # No validation rows: NaN losses, written as null (JSON has no NaN)
            "history": {
                k: [v if math.isfinite(v) else None for v in vs] for k, vs in self.history_.items()
            },
            "training": self.training_summary_,
            "versions": {"anomaly": anomaly.__version__, "torch": torch.__version__},
        }
        return save_model_dir(path, meta, self.module_.state_dict())

    @classmethod
    def load(cls, path: str | Path, *, device: str = "cpu") -> Self:
        """Read a detector saved by :meth:`save`, on ``device`` (CPU by default)."""
        meta, tensors = load_model_dir(path)
        kind = meta.get("kind", "tabular")
        if kind != cls.kind:
            raise ModelFormatError(
                f"{path} holds a {kind!r} model, not a {cls.kind!r} one: load it with "
                "anomaly.load, which picks the class"
            )
        try:
            det = cls(**{**cls._saved_params(meta["params"]), "device": device})
            det.device_ = resolve_device(device)  # an absent device is the caller's error
            try:  # the settings the model was trained with (not where it trained)
                det._check_params()
            except InputError as exc:
                raise ModelFormatError(f"{Path(path) / META_FILE}: {exc}") from None
            det.architecture_ = meta["architecture"]
            det.module_ = det._build_module(det.architecture_)
            det.history_ = {
                k: [math.nan if v is None else v for v in vs] for k, vs in meta["history"].items()
            }
            det.training_summary_ = meta["training"]
            det._restore_state(meta)
        except AnomalyError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError, IndexError, RuntimeError) as exc:
            # An edited or damaged JSON (torch refuses a negative size): one line, not a
            # traceback from deep inside.
            what = f"no {exc.args[0]!r}" if isinstance(exc, KeyError) else str(exc)
            raise ModelFormatError(
                f"{Path(path) / META_FILE} does not describe a model: {what}"
            ) from None
        try:
            det.module_.load_state_dict(tensors)
        except RuntimeError as exc:  # weights of another shape than the JSON describes
            reason = str(exc).strip().splitlines()[0]
            raise ModelFormatError(
                f"{path}: the weights do not fit the architecture: {reason}"
            ) from None
        det.module_.to(det.device_).eval()
        return det

    def _restore_state(self, meta: dict) -> None:
        """Set the fitted state the subclass saved beside the common parts (schema,
        preprocessing, calibration...) from the saved JSON."""
        raise NotImplementedError

    @staticmethod
    def _saved_params(params: dict) -> dict:
        """Constructor arguments from their JSON form (a subclass turns lists back into the
        tuples it takes)."""
        return params


# Counts whose default (None) says "chosen from the data".
_COUNTS_OR_NONE = ("latent", "batch_size")


def _is_count(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)


def _flat(value) -> list:
    return np.ravel(value).tolist()
