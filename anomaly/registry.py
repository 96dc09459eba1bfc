"""MLflow: log and register detectors, move aliases, and turn any model URI into a Detector.

Every command that takes a model accepts:

- a local directory: a model directory (``detector.json``) or a downloaded MLflow model;
- ``models:/NAME@ALIAS`` and ``models:/NAME/VERSION`` (the registry);
- ``runs:/RUN_ID/PATH`` and ``models:/MODEL_ID`` (a run's or a logged model's artifacts).

Where runs and the registry live is MLflow's choice: ``MLFLOW_TRACKING_URI`` when set (a server
URL, a database), otherwise MLflow 3's default, ``sqlite:///mlflow.db`` in the working
directory. Downloaded models are cached under ``$ANOMALY_CACHE_DIR`` (default
``~/.cache/anomaly``), keyed by the immutable version they resolve to, so that loading the same
version twice downloads it once; an alias is looked up anew on every load.

MLflow is imported inside the functions: loading a local model directory does not pay for it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import secrets
import shutil
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pandas as pd

from anomaly.detector import Detector
from anomaly.errors import PromotionLocked, RegistryError, RegistryUnavailable
from anomaly.persistence import META_FILE, load_detector_dir, read_kind
from anomaly.pyfunc import DATA_DIR, signature

log = logging.getLogger(__name__)

CHAMPION = "champion"
PREVIOUS = "previous"
MODEL_ARTIFACT = "model"  # the logged model's name inside its run
LOADER_MODULE = "anomaly.pyfunc"
# On a version that became champion: the version it replaced, so that rollbacks can chain.
REPLACED_TAG = "anomaly.replaced_version"
# How long a gated promotion waits for another one to finish before giving up.
PROMOTION_WAIT_S = 30.0
# A promotion lock older than this is taken to be a dead holder's, and broken.
PROMOTION_LEASE_S = 600.0
LOCK_SUFFIX = "--promotion-lock"  # the registered model NAME--promotion-lock is NAME's lock
_PROJECTION_ROWS = 5000


@dataclass(frozen=True)
class ModelRef:
    """Where a model URI led: the local model directory, and its registry identity if any."""

    uri: str
    path: Path
    name: str | None = None
    version: str | None = None
    run_id: str | None = None


@dataclass(frozen=True)
class LoggedDetector:
    run_id: str
    model_uri: str  # runs:/RUN_ID/model
    model_id: str  # MLflow 3's logged model: models:/MODEL_ID
    name: str | None = None
    version: str | None = None
    aliases: tuple[str, ...] = ()


# ---------------------------------------------------------------------- resolving URIs
def load_detector(uri: str | Path, *, device: str = "cpu") -> Detector:
    """The detector behind any model URI (see the module docstring), on ``device``."""
    return load_detector_dir(resolve(uri).path, device=device)


def resolve(uri: str | Path) -> ModelRef:
    """Find (downloading once, then from the cache) the model directory behind ``uri``."""
    uri = str(uri)
    if not _is_remote(uri):
        return ModelRef(uri, _local_model_dir(Path(uri)))
    import mlflow

    client = _client()
    if uri.startswith("models:/"):
        target = uri.removeprefix("models:/").rstrip("/")
        if "@" in target:
            name, alias = target.split("@", 1)
            with _mlflow_errors(f"model {name!r} has no alias {alias!r}"):
                mv = client.get_model_version_by_alias(name, alias)
        elif "/" in target:
            name, version = target.split("/", 1)
            if not version.isdigit():
                raise RegistryError(
                    f"{uri}: give a version number or an alias (models:/{name}@{CHAMPION}); "
                    "stages are not supported"
                )
            with _mlflow_errors(f"model {name!r} has no version {version}"):
                mv = client.get_model_version(name, version)
        else:  # MLflow 3's logged-model id, models:/m-...
            root = _download(uri, _cache_key(mlflow.get_tracking_uri(), target))
            return ModelRef(uri, _model_data_dir(root))
        key = _cache_key(
            mlflow.get_registry_uri(), mv.name, mv.version, mv.run_id, mv.creation_timestamp
        )
        root = _download(f"models:/{mv.name}/{mv.version}", key)
        return ModelRef(uri, _model_data_dir(root), mv.name, str(mv.version), mv.run_id)
    if uri.startswith("runs:/"):
        run_id = uri.removeprefix("runs:/").split("/", 1)[0]
        root = _download(uri, _cache_key(mlflow.get_tracking_uri(), uri))
        return ModelRef(uri, _model_data_dir(root), run_id=run_id)
    # Other artifact URIs (s3://..., mlflow-artifacts:/...): a logged model's files never change.
    return ModelRef(uri, _model_data_dir(_download(uri, _cache_key(uri))))


def cache_dir() -> Path:
    root = os.environ.get("ANOMALY_CACHE_DIR") or Path.home() / ".cache" / "anomaly"
    return Path(root) / "models"


def _is_remote(uri: str) -> bool:
    return uri.startswith(("models:/", "runs:/")) or "://" in uri


def _local_model_dir(path: Path) -> Path:
    if (path / META_FILE).is_file():
        return path
    if (path / "MLmodel").is_file():
        return _model_data_dir(path)
    if not path.exists():
        raise RegistryError(
            f"no model at {path}: give a model directory, models:/NAME@ALIAS, "
            "models:/NAME/VERSION, models:/MODEL_ID or runs:/RUN_ID/PATH"
        )
    raise RegistryError(f"{path} is neither a model directory nor an MLflow model")


def _model_data_dir(root: Path) -> Path:
    """The model directory inside an MLflow model written by :func:`log_detector`."""
    from mlflow.models import Model

    flavor = Model.load(str(root / "MLmodel")).flavors.get("python_function", {})
    if flavor.get("loader_module") != LOADER_MODULE:
        raise RegistryError(f"{root} is an MLflow model, but not one of an anomaly detector")
    return root / flavor["data"]


def _cache_key(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:24]


def _download(uri: str, key: str) -> Path:
    """The MLflow model root of ``uri``, downloaded into the cache under ``key`` once."""
    import mlflow

    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / key
    if (target / "MLmodel").is_file():
        log.info("%s: from the cache, %s", uri, target)
        return target
    staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
    try:
        with _mlflow_errors(f"cannot download {uri}"), _download_errors(uri):
            local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=staging))
        if not (local / "MLmodel").is_file():
            raise RegistryError(f"{uri} is not an MLflow model (no MLmodel file)")
        with contextlib.suppress(OSError):  # another process put it there first: keep theirs
            os.replace(local, target)
        return target
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _download_errors(uri: str) -> Iterator[None]:
    """What MLflow's artifact stores raise outside MlflowException, as one RegistryError line."""
    try:
        yield
    except ImportError as exc:
        if exc.name is None:  # MLflow's own message names the package (Azure's stores)
            raise RegistryError(f"cannot download {uri}: {exc}") from None
        package = _STORE_PACKAGES.get(exc.name, _STORE_PACKAGES.get(exc.name.split(".")[0]))
        package = package or exc.name
        raise RegistryError(
            f"cannot download {uri}: its artifact store needs the package {package!r} "
            f"(pip install {package})"
        ) from None
    except ValueError as exc:
        if urlparse(uri).scheme in ("http", "https"):  # MLflow splits the URL at this path
            raise RegistryError(
                f"cannot download {uri}: an http(s) model URI points into an MLflow server's "
                "artifacts, http://HOST/api/2.0/mlflow-artifacts/artifacts/PATH"
            ) from None
        raise RegistryError(f"cannot download {uri}: {exc}") from None
    except OSError as exc:  # hdfs:// without Java, a full disk...
        raise RegistryError(f"cannot download {uri}: {exc or type(exc).__name__}") from None


# The module an artifact store imports -> the package that provides it.
_STORE_PACKAGES = {"botocore": "boto3", "boto3": "boto3", "google": "google-cloud-storage",
                   "azure": "azure-storage-blob", "azure.identity": "azure-identity"}  # fmt: skip


# ---------------------------------------------------------------------- logging a detector
def log_detector(
    detector: Detector,
    *,
    register: str | None = None,
    sample: pd.DataFrame | None = None,
    sample_is_anomaly: np.ndarray | None = None,
    data_source: str | None = None,
    run_name: str | None = None,
) -> LoggedDetector:
    """Log a fitted detector as an MLflow run, and register it when ``register`` names a model.

    The run holds the training settings, the per-epoch losses, the calibration figures, the
    schema, three plots (loss curve, calibration histogram, latent projection) and the model
    (pyfunc, no pickled code). The first version of a registered model becomes ``champion``;
    later ones are promoted with :func:`promote`.

    Parameters
    ----------
    sample : DataFrame, optional
        Rows like the training data: a few become the model's input example, and up to 5,000
        are projected in the latent plot.
    sample_is_anomaly : bool array, optional
        Marks rows of ``sample`` known to be anomalies in the latent plot.
    data_source : str, optional
        Where the training data came from (recorded as a parameter).
    """
    import mlflow

    from anomaly import plots

    client = _client()
    with (
        _mlflow_errors("cannot log the run"),
        tempfile.TemporaryDirectory() as tmp,
        mlflow.start_run(run_name=run_name) as run,
    ):
        run_id = run.info.run_id
        mlflow.log_params(_run_params(detector, data_source))
        _log_history(client, run_id, detector.history_)
        calibrator = detector.calibrator_
        mlflow.log_metrics(
            {
                "threshold": float(calibrator.threshold_),
                "calibration_rows": len(calibrator.scores_),
                "calibration_score_median": float(np.median(calibrator.scores_)),
                "epochs_run": detector.training_summary_["epochs_run"],
            }
            # models saved before training was timed have no train_seconds
            | {k: v for k, v in detector.training_summary_.items() if k == "train_seconds"}
        )
        if hasattr(detector, "schema_"):
            mlflow.log_dict(detector.schema_.to_dict(), "schema.json")
        figures = {
            "plots/loss_curve.png": plots.loss_curve(detector.history_),
            "plots/calibration_histogram.png": plots.calibration_histogram(
                calibrator.scores_, calibrator.threshold_, detector.target_fpr
            ),
        }
        example = None
        if sample is not None and len(sample) and detector.kind == "tabular":
            rows, marks = _projection_rows(sample, sample_is_anomaly, detector.seed)
            figures["plots/latent_projection.png"] = plots.latent_projection(
                detector.encode(sample.iloc[rows]), marks
            )
        if sample is not None and len(sample):
            example = _input_example(detector, sample)
        for path, figure in figures.items():
            mlflow.log_figure(figure, path)
            plots.plt.close(figure)

        model_dir = detector.save(Path(tmp) / DATA_DIR)
        info = mlflow.pyfunc.log_model(
            name=MODEL_ARTIFACT,
            loader_module=LOADER_MODULE,
            data_path=str(model_dir),
            signature=signature(detector),
            input_example=example,
            pip_requirements=_requirements(),
            registered_model_name=register,
        )
    if register is None:
        return LoggedDetector(run_id, f"runs:/{run_id}/{MODEL_ARTIFACT}", info.model_id)
    version = str(info.registered_model_version)
    with _mlflow_errors(f"cannot set the alias of {register!r}"):
        client.set_model_version_tag(
            register, version, "anomaly.threshold", str(detector.threshold_)
        )
        client.set_model_version_tag(register, version, "anomaly.model", detector.model)
        has_champion = CHAMPION in client.get_registered_model(register).aliases
        if not has_champion:
            client.set_registered_model_alias(register, CHAMPION, version)
    aliases = () if has_champion else (CHAMPION,)
    return LoggedDetector(
        run_id, f"runs:/{run_id}/{MODEL_ARTIFACT}", info.model_id, register, version, aliases
    )


def _logged_model_id(version) -> str | None:
    """The logged model behind a registered version (its source is ``models:/MODEL_ID``)."""
    if getattr(version, "model_id", None):
        return version.model_id
    source = version.source or ""
    return source.removeprefix("models:/") if source.startswith("models:/m-") else None


def _run_params(detector, data_source: str | None) -> dict:
    params = {k: v for k, v in detector.get_params().items() if k != "progress"}
    params |= {f"arch_{k}": v for k, v in detector.architecture_.items()}
    params = {
        k: ",".join(map(str, v)) if isinstance(v, list | tuple) else v for k, v in params.items()
    }
    summary = detector.training_summary_
    params |= {
        "kind": detector.kind,
        "score_kind": detector._score_method(),
        "train_rows": summary["n_train"],
        "validation_rows": summary["n_validation"],
        "calibration_rows": summary["n_calibration"],
        "trained_on": summary["device"],
        # torchrun's process count; models saved before data-parallel training have none
        "train_processes": summary.get("processes", 1),
    }
    if detector.kind == "tabular":
        arch = detector.architecture_
        params |= {
            "n_features": arch["n_features"],
            "hidden_sizes": ",".join(map(str, arch["hidden"])),
            "latent_size": arch["latent"],
            "data_columns": len(detector.schema_.columns),
            "schema_hash": detector.schema_.fingerprint(),
        }
    if data_source:
        params["data"] = data_source
    return {k: ("" if v is None else v) for k, v in params.items()}


def _log_history(client, run_id: str, history: dict[str, list[float]]) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, step)
        for key, values in history.items()
        for step, value in enumerate(values)
        if np.isfinite(value)
    ]
    for start in range(0, len(metrics), 1000):  # MLflow's limit per batch
        client.log_batch(run_id, metrics=metrics[start : start + 1000])


def _projection_rows(
    sample: pd.DataFrame, is_anomaly: np.ndarray | None, seed: int
) -> tuple[np.ndarray, np.ndarray | None]:
    """Every known anomaly (up to a fifth of the plot) and a random sample of the other rows."""
    rng = np.random.default_rng(seed)
    marked = np.zeros(len(sample), bool) if is_anomaly is None else np.asarray(is_anomaly, bool)
    anomalies, normal = np.flatnonzero(marked), np.flatnonzero(~marked)
    anomalies = rng.permutation(anomalies)[: _PROJECTION_ROWS // 5]
    normal = rng.permutation(normal)[: _PROJECTION_ROWS - len(anomalies)]
    rows = np.concatenate([normal, anomalies])
    return rows, (None if is_anomaly is None else marked[rows])


def _input_example(detector, sample: pd.DataFrame) -> pd.DataFrame | None:
    if detector.kind == "sequence":  # one series, in time order, a window and a few more points
        schema = detector.schema_
        rows = sample
        if schema.series:
            rows = rows[rows[schema.series] == rows[schema.series].iloc[0]]
        columns = schema.names
        order = np.argsort(schema.seconds(rows[schema.timestamp]), kind="stable")
        return rows.iloc[order[: detector.window + 4]][columns].reset_index(drop=True)
    if detector.kind != "tabular":
        return None
    columns = [c for c in (*detector.schema_.names, *detector.schema_.ignored) if c in sample]
    rows = sample[columns]
    complete = rows.dropna()
    return (complete if len(complete) >= 3 else rows).head(5).reset_index(drop=True)


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    pins = []
    for package in ("anomaly", "mlflow", "torch", "numpy", "pandas", "pyarrow", "safetensors"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins


def log_evaluation(evaluation, ref: ModelRef, *, data_source: str | None = None) -> str:
    """Log an :class:`anomaly.evaluation.Evaluation` as a run; returns the run id.

    The run is tagged with the model's URI (and name and version when registered); its metrics
    are linked to the registered version's logged model, and the version gets a tag naming the
    run, so each can be found from the other.
    """
    import mlflow

    from anomaly import plots

    client = _client()
    model_id = None
    if ref.name is not None:
        with _mlflow_errors(f"model {ref.name!r} has no version {ref.version}"):
            model_id = _logged_model_id(client.get_model_version(ref.name, ref.version))
    label = f"{ref.name} v{ref.version}" if ref.name else ref.uri
    tags = {"anomaly.evaluates": ref.uri, "anomaly.model_name": ref.name or "",
            "anomaly.model_version": ref.version or ""}  # fmt: skip
    with (
        _mlflow_errors("cannot log the evaluation"),
        mlflow.start_run(run_name=f"evaluate {label}", tags=tags) as run,
    ):
        if data_source:
            mlflow.log_param("data", data_source)
        metrics = {k: v for k, v in evaluation.metrics.items() if np.isfinite(v)}
        mlflow.log_metrics(metrics, model_id=model_id)
        curves = evaluation.curves
        base_rate = float(evaluation.labels.mean())
        roc, pr = plots.roc_pr_curves(
            curves["fpr"], curves["tpr"], curves["precision"], curves["recall"], base_rate
        )
        histogram = plots.score_histogram_by_label(
            evaluation.scores, evaluation.labels, evaluation.threshold
        )
        for name, figure in (("roc", roc), ("pr", pr), ("score_histogram", histogram)):
            mlflow.log_figure(figure, f"plots/{name}.png")
            plots.plt.close(figure)
        if ref.name is not None:
            client.set_model_version_tag(
                ref.name, ref.version, "anomaly.evaluation_run", run.info.run_id
            )
    return run.info.run_id


def run_param(run_id: str, key: str) -> str | None:
    """One parameter of a run (e.g. the ``data`` a model was trained on), or None."""
    client = _client()
    with _mlflow_errors(f"cannot read run {run_id}"):
        return client.get_run(run_id).data.params.get(key)


def log_gate(
    run_id: str,
    *,
    promoted: bool,
    reasons: list[str],
    figures: dict[str, float],
    rules: dict,
    schema_notes: list[str],
    champion_version: str | None,
) -> None:
    """Record a retraining gate's decision, figures and rules on the challenger's run."""
    client = _client()
    with _mlflow_errors(f"cannot log the gate to run {run_id}"):
        for key, value in rules.items():
            client.log_param(run_id, f"gate_{key}", value)
        for key, value in figures.items():
            if np.isfinite(value):
                client.log_metric(run_id, f"gate_{key}", value)
        client.set_tag(run_id, "anomaly.gate", "promoted" if promoted else "kept")
        client.set_tag(run_id, "anomaly.gate_champion_version", str(champion_version))
        text = "\n".join([f"decision: {'promoted' if promoted else 'kept the champion'}",
                           *reasons, *[f"schema: {n}" for n in schema_notes]])  # fmt: skip
        client.log_text(run_id, text + "\n", "gate.txt")


# ---------------------------------------------------------------------- aliases
def list_models() -> list[dict]:
    """Registered models: name, latest version, and which version each alias names."""
    client = _client()
    with _mlflow_errors("cannot list the registered models"):
        models = client.search_registered_models()
    return [
        {
            "name": m.name,
            "latest_version": max((int(v.version) for v in m.latest_versions), default=None),
            "aliases": dict(m.aliases),
        }
        for m in models
        if not m.name.endswith(LOCK_SUFFIX)  # a promotion in progress, not a model
    ]


def list_versions(name: str) -> list[dict]:
    """Versions of a registered model, newest first, with aliases, run and threshold."""
    client = _client()
    with _mlflow_errors(f"no registered model named {name!r}"):
        aliases = client.get_registered_model(name).aliases
        versions = client.search_model_versions(f"name = '{name}'")
    rows = [
        {
            "version": str(v.version),
            "aliases": sorted(a for a, target in aliases.items() if str(target) == str(v.version)),
            "created": pd.Timestamp(v.creation_timestamp, unit="ms").isoformat(timespec="seconds"),
            "run_id": v.run_id,
            "model": v.tags.get("anomaly.model", ""),
            "threshold": v.tags.get("anomaly.threshold", ""),
        }
        for v in versions
    ]
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def promote(name: str, version: str | int, alias: str = CHAMPION) -> str | None:
    """Point ``alias`` at ``version``; returns the version it named before (None if none).

    Promoting to ``champion`` hands ``previous`` to the champion it replaces, and records it on
    the new champion, so that :func:`rollback` can go back more than one step. It moves the
    champion under the promotion lock (see :func:`promote_if_champion`), as a retrain does.
    """
    client, version = _client(), str(version)
    ref = _check_loadable(client, name, version)
    if alias != CHAMPION:
        return _move_alias(client, name, version, alias)
    _check_same_kind(client, name, version, ref)
    with _promotion_lock(client, name, PROMOTION_WAIT_S, PROMOTION_LEASE_S):
        return _move_alias(client, name, version, alias)


def _check_loadable(client, name: str, version: str) -> ModelRef:
    """A version this package cannot load would break every service and job on its alias
    (checked before the lock: it may download the model)."""
    with _mlflow_errors(f"model {name!r} has no version {version}"):
        client.get_model_version(name, version)
    return resolve(f"models:/{name}/{version}")


def _check_same_kind(client, name: str, version: str, ref: ModelRef) -> None:
    """Services and jobs on NAME@champion read one kind of data (a service refuses to reload
    to another kind): a champion of another kind would break them all."""
    with _mlflow_errors(f"no registered model named {name!r}"):
        current = client.get_registered_model(name).aliases.get(CHAMPION)
    if current is None or str(current) == version:
        return
    before = read_kind(resolve(f"models:/{name}/{current}").path)
    after = read_kind(ref.path)
    if before != after:
        raise RegistryError(
            f"{name} v{version} is a {after} model, its champion v{current} a {before} one: "
            f"what reads {name}@champion reads {before} data; register it under another name"
        )


def _move_alias(client, name: str, version: str, alias: str) -> str | None:
    with _mlflow_errors(f"cannot move the alias {alias!r} of {name!r}"):
        aliases = client.get_registered_model(name).aliases
        old = aliases.get(alias)
        old = None if old is None else str(old)
        if old == version:
            return old
        client.set_registered_model_alias(name, alias, version)
        if alias == CHAMPION and old is not None:
            client.set_registered_model_alias(name, PREVIOUS, old)
            client.set_model_version_tag(name, version, REPLACED_TAG, old)
    return old


def promote_if_champion(
    name: str,
    version: str | int,
    expected: str,
    *,
    wait_s: float | None = None,
    lease_s: float = PROMOTION_LEASE_S,
) -> tuple[bool, str | None]:
    """Make ``version`` champion only if ``expected`` still is; returns (promoted, champion seen).

    Two retrains gated against the same champion must not both promote: under a lock, the
    champion is read again and moved only when it is still the one the gate compared with. The
    lock is a registered model named ``NAME--promotion-lock``: creating a registered model is
    atomic in every MLflow store, so exactly one creator wins. A lock older than ``lease_s``
    (its holder died) is broken. Waiting longer than ``wait_s`` (default
    :data:`PROMOTION_WAIT_S`) for the lock raises :class:`~anomaly.errors.PromotionLocked`.
    """
    client, version = _client(), str(version)
    _check_loadable(client, name, version)
    wait_s = PROMOTION_WAIT_S if wait_s is None else wait_s
    with _promotion_lock(client, name, wait_s, lease_s):
        with _mlflow_errors(f"no registered model named {name!r}"):
            current = client.get_registered_model(name).aliases.get(CHAMPION)
        current = None if current is None else str(current)
        if current != str(expected):
            return False, current
        _move_alias(client, name, version, CHAMPION)
        return True, current


@contextlib.contextmanager
def _promotion_lock(client, name: str, wait_s: float, lease_s: float) -> Iterator[None]:
    import time

    from mlflow.exceptions import MlflowException

    lock = f"{name}{LOCK_SUFFIX}"
    # Says whose lock it is: one broken as stale and taken by another is not this one's to drop.
    mine = f"held while {name} is promoted ({secrets.token_hex(8)})"
    deadline = time.monotonic() + wait_s
    while True:
        try:
            client.create_registered_model(lock, description=mine)
            break
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise RegistryError(f"cannot lock {name!r} for promotion: {exc.message}") from None
        with contextlib.suppress(MlflowException):
            held_ms = time.time() * 1000 - client.get_registered_model(lock).creation_timestamp
            if held_ms > lease_s * 1000:
                log.warning("breaking a promotion lock of %s held for %.0f s", name, held_ms / 1e3)
                client.delete_registered_model(lock)
                continue
        if time.monotonic() > deadline:
            raise PromotionLocked(f"another promotion of {name!r} holds its lock ({lock})")
        time.sleep(0.2)
    try:
        yield
    finally:
        with contextlib.suppress(MlflowException):
            if client.get_registered_model(lock).description == mine:
                client.delete_registered_model(lock)


def rollback(name: str) -> tuple[str, str]:
    """Give ``champion`` back to ``previous``; returns (demoted version, new champion). Under
    the promotion lock, as promotions are."""
    client = _client()
    with _promotion_lock(client, name, PROMOTION_WAIT_S, PROMOTION_LEASE_S):
        return _roll_back(client, name)


def _roll_back(client, name: str) -> tuple[str, str]:
    from mlflow.exceptions import MlflowException

    with _mlflow_errors(f"no registered model named {name!r}"):
        aliases = client.get_registered_model(name).aliases
    if PREVIOUS not in aliases:
        raise RegistryError(f"model {name!r} has no {PREVIOUS!r} version to roll back to")
    demoted, restored = aliases.get(CHAMPION), str(aliases[PREVIOUS])
    with _mlflow_errors(f"cannot roll back {name!r}"):
        before = client.get_model_version(name, restored).tags.get(REPLACED_TAG)
        if before:  # checked before any alias moves: a failed rollback leaves them as they were
            try:
                client.get_model_version(name, before)
            except MlflowException:
                log.warning("%s version %s, which %s replaced, is gone", name, before, restored)
                before = None
        client.set_registered_model_alias(name, CHAMPION, restored)
        if before:
            client.set_registered_model_alias(name, PREVIOUS, before)
        else:
            client.delete_registered_model_alias(name, PREVIOUS)
    return str(demoted), restored


# ---------------------------------------------------------------------- MLflow plumbing
def check_store() -> None:
    """Fail now (:class:`~anomaly.errors.RegistryUnavailable`) when the tracking server does
    not answer: before a long training run, not after it."""
    _client()


def _client():
    """An MlflowClient, after checking that a tracking server (if that is the store) answers."""
    import mlflow
    from mlflow import MlflowClient

    for uri in {mlflow.get_tracking_uri(), mlflow.get_registry_uri()}:
        _check_reachable(uri)
    return MlflowClient()


@functools.cache
def _check_reachable(uri: str) -> None:
    # MLflow retries an unreachable server for minutes (it allows for rate limits): a refused
    # or silent port is reported at once instead.
    parsed = urlparse(uri)
    if parsed.scheme not in ("http", "https"):
        return
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=5).close()
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise RegistryUnavailable(
            f"cannot reach the MLflow tracking server at {uri}: {reason}"
        ) from None


@contextlib.contextmanager
def _mlflow_errors(what: str) -> Iterator[None]:
    """MLflow's exceptions become one RegistryError line: ``what``, then MLflow's reason."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as exc:
        reason = str(exc.message).strip().splitlines()[0] if exc.message else exc.error_code
        error = RegistryUnavailable if exc.error_code in _SERVER_FAULTS else RegistryError
        raise error(f"{what}: {reason}") from None


# MLflow's error codes for a server at fault (HTTP 5xx, 429), not the request.
_SERVER_FAULTS = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
