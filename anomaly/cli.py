"""The ``anomaly`` command: a thin shell over the library.

Each command parses its arguments, calls the library, and prints a short summary. The library's
own errors become one line on stderr and exit code 2; nothing here knows about models.
"""

from __future__ import annotations

import functools
import logging
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from anomaly.errors import BAD_INPUT, AnomalyError, InputError, exit_code, one_line

app = typer.Typer(
    help="Autoencoder anomaly detection: train on normal rows, score new ones.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


MODEL_HELP = (
    "Model: a directory, models:/NAME@ALIAS, models:/NAME/VERSION, models:/MODEL_ID or "
    "runs:/RUN_ID/model."
)


class ModelKind(StrEnum):
    ae = "ae"
    vae = "vae"
    linear = "linear"


class ScoreKind(StrEnum):
    reconstruction = "reconstruction"
    elbo = "elbo"
    iwae = "iwae"


class Modality(StrEnum):
    table = "table"
    sequence = "sequence"
    image = "image"


class SequenceArch(StrEnum):
    conv = "conv"
    gru = "gru"


class ThresholdKind(StrEnum):
    quantile = "quantile"
    evt = "evt"


class LogLevel(StrEnum):
    critical = "critical"
    error = "error"
    warning = "warning"
    info = "info"
    debug = "debug"
    trace = "trace"


def _fail(message: str, code: int = BAD_INPUT) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=code)


def _friendly_errors(command):
    """Library errors (bad input, bad model directory) end the command with one clear line."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (AnomalyError, FloatingPointError, OSError) as exc:
            # a bad value, a missing file, a read-only folder; or the registry unreachable
            _fail(one_line(exc), exit_code(exc))
        except ValueError as exc:  # invalid settings that torch or numpy refuse
            _fail(str(exc))

    return wrapper


def _below_one(value: float) -> float:
    if value >= 1:
        raise typer.BadParameter(f"{value} is not below 1")
    return value


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
) -> None:
    # MLflow's per-file download bars would bury the one progress bar that matters.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
@_friendly_errors
def train(
    data: Annotated[
        Path, typer.Argument(help="CSV of normal rows (a folder or file of images for images).")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Model directory to write.")
    ] = None,
    modality: Annotated[
        Modality,
        typer.Option(
            help="table: independent rows; sequence: time series windows; image: pictures."
        ),
    ] = Modality.table,
    register: Annotated[
        str | None,
        typer.Option(help="Log an MLflow run and register the model under this name."),
    ] = None,
    label_col: Annotated[
        str | None,
        typer.Option(
            help="Column marking known anomalies: those rows are left out of training and "
            "marked in the latent plot of the MLflow run."
        ),
    ] = None,
    model: Annotated[
        ModelKind, typer.Option(help="Autoencoder, VAE, or linear baseline.")
    ] = ModelKind.vae,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", "-x", help="Column not to use (repeatable).")
    ] = None,
    target_fpr: Annotated[float, typer.Option(help="False-positive rate of the threshold.")] = 0.01,
    threshold: Annotated[
        ThresholdKind, typer.Option(help="Threshold rule.")
    ] = ThresholdKind.quantile,
    score: Annotated[
        ScoreKind | None, typer.Option(help="Score (default: reconstruction; elbo for a VAE).")
    ] = None,
    n_samples: Annotated[
        int,
        typer.Option(
            help="VAE: fixed posterior draws the elbo or iwae score averages over (0: the elbo "
            "at the posterior mean; iwae needs 1 or more)."
        ),
    ] = 0,
    epochs: Annotated[int, typer.Option(help="Most epochs (early stopping may end sooner).")] = 200,
    batch_size: Annotated[
        int | None, typer.Option(help="Rows per training step (default: from the data size).")
    ] = None,
    hidden: Annotated[
        str | None, typer.Option(help="Hidden widths, comma-separated, e.g. 64,32.")
    ] = None,
    latent: Annotated[int | None, typer.Option(help="Bottleneck size.")] = None,
    dropout: Annotated[
        float, typer.Option(min=0.0, callback=_below_one, help="Dropout while training, in [0, 1).")
    ] = 0.0,
    denoise: Annotated[
        float, typer.Option(min=0.0, help="Input noise std while training (0 = off).")
    ] = 0.0,
    beta: Annotated[float, typer.Option(min=0.0, help="KL weight of the VAE's loss.")] = 1.0,
    calibration_fraction: Annotated[float, typer.Option(help="Rows held out to calibrate.")] = 0.2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
    timestamp_col: Annotated[
        str, typer.Option(help="Sequences: the time column (dates or numbers).")
    ] = "timestamp",
    series_col: Annotated[
        str | None, typer.Option(help="Sequences: the series-id column, for many series.")
    ] = None,
    value_col: Annotated[
        list[str] | None,
        typer.Option(help="Sequences: a value column (repeatable; default: the numeric ones)."),
    ] = None,
    window: Annotated[int, typer.Option(help="Sequences: points per window.")] = 32,
    stride: Annotated[int, typer.Option(help="Sequences: step between training windows.")] = 1,
    arch: Annotated[
        SequenceArch, typer.Option(help="Sequences: 1-D convolutions or a GRU.")
    ] = SequenceArch.conv,
    size: Annotated[int, typer.Option(help="Images: resized to SIZE x SIZE pixels.")] = 32,
    channels: Annotated[int, typer.Option(help="Images: 1 (grey) or 3 (RGB).")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a detector on normal data, calibrate its threshold; save it and/or register it."""
    if out is None and register is None:
        raise AnomalyError("say where the model goes: --out DIR, --register NAME, or both")
    if model is ModelKind.linear and modality is not Modality.table:
        raise AnomalyError(f"{modality.value} models are ae or vae, not linear")
    # Whatever would refuse the result is asked before training, not hours after it.
    if out is not None:
        from anomaly.persistence import check_target

        check_target(out)
    from anomaly.training import this_process

    main = this_process().is_main  # under torchrun the first process speaks for all
    if not main:
        logging.getLogger().setLevel(logging.ERROR)
    # An unreachable tracking server fails now; the first process alone checks, as several
    # would race to create a new store.
    if register is not None and main:
        from anomaly import registry

        registry.check_store()
    common = dict(
        model=model.value,
        target_fpr=target_fpr,
        threshold_method=threshold.value,
        score=score.value if score else None,
        n_samples=n_samples,
        epochs=epochs,
        batch_size=batch_size,
        latent=latent,
        dropout=dropout,
        denoise=denoise,
        beta=beta,
        calibration_fraction=calibration_fraction,
        device=device,
        seed=seed,
        progress=progress,
    )
    if modality is Modality.image:
        from anomaly.image import ImageDetector

        detector = ImageDetector(
            **common, size=size, channels=channels, hidden=_parse_hidden(hidden)
        ).fit(data)
        _report(detector, out, register, data)
        return

    import numpy as np

    from anomaly.data import read_csv
    from anomaly.data.tabular import in_file

    # A series' times and ids as written, as `anomaly score` reads them ("NA" may be a series).
    frame = read_csv(
        data, as_text=[timestamp_col, series_col] if modality is Modality.sequence else ()
    )
    exclude = list(exclude or ())
    is_anomaly = None
    if label_col is not None:
        from anomaly.evaluation import parse_labels

        if label_col not in frame.columns:
            raise AnomalyError(f"{data}: no label column {label_col!r}")
        try:
            is_anomaly = parse_labels(frame[label_col], label_col)
        except InputError as exc:
            raise in_file(exc, data) from None
        exclude.append(label_col)
    normal = frame if is_anomaly is None else frame[~is_anomaly]
    if modality is Modality.sequence:
        from anomaly.sequence import SequenceDetector

        detector = SequenceDetector(
            **common,
            exclude=exclude,
            timestamp_col=timestamp_col,
            series_col=series_col,
            value_cols=value_col or None,
            arch=arch.value,
            window=window,
            stride=stride,
        )
    else:
        from anomaly.detector import Detector

        detector = Detector(**common, exclude=exclude, hidden=_parse_hidden(hidden))
    try:
        detector.fit(normal)
    except InputError as exc:  # named by the file's row and line, labelled anomalies counted
        rows = None if is_anomaly is None else np.flatnonzero(~is_anomaly)
        raise in_file(exc, data, rows) from None
    _report(detector, out, register, data, frame, is_anomaly)


def _report(detector, out, register, data: Path, frame=None, is_anomaly=None) -> None:
    """Say what was trained; save and/or log and register it: under torchrun, from the first
    process only (every process holds the same model)."""
    from anomaly.training import this_process

    if not this_process().is_main:
        return
    summary = detector.training_summary_
    unit = {"tabular": "rows", "sequence": "windows", "image": "images"}[detector.kind]
    target_fpr = detector.target_fpr
    processes = f" x {summary['processes']} processes" if summary.get("processes", 1) > 1 else ""
    calibration = (
        f"threshold {detector.threshold_:.6g} at target FPR {target_fpr} "
        f"from {summary['n_calibration']} calibration {unit}"
    )
    if detector.kind == "sequence":  # points and streams' windows: a threshold each
        calibration = (
            f"thresholds at target FPR {target_fpr}: {detector.threshold_:.6g} for points (from "
            f"{len(detector.calibrator_.scores_)} calibration points), "
            f"{detector.window_calibrator_.threshold_:.6g} for windows, as streams flag them "
            f"(from {summary['n_calibration']})"
        )
    typer.echo(
        f"trained {detector.model} on {summary['n_train']} {unit} ({summary['epochs_run']} "
        f"epochs, {summary['device']}{processes}); {calibration}"
    )
    if out is not None:
        detector.save(out)
        typer.echo(f"saved to {out}")
    if register is not None:
        from anomaly import registry

        logged = registry.log_detector(
            detector,
            register=register,
            sample=frame,
            sample_is_anomaly=is_anomaly,
            data_source=str(data.resolve()),  # absolute: `retrain --mode append` reads it
        )
        aliases = f" with alias {', '.join(logged.aliases)}" if logged.aliases else ""
        typer.echo(
            f"logged run {logged.run_id}; registered {register} version {logged.version}"
            f"{aliases}: models:/{register}/{logged.version}"
        )


@app.command("score")
@_friendly_errors
def score_command(
    data: Annotated[
        Path, typer.Argument(help="CSV of rows to score (images: a folder or file of them).")
    ],
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)],
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV to write.")],
    maps: Annotated[
        Path | None,
        typer.Option(help="Images: also write each image's anomaly map over it, as PNGs here."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, auto, cuda, cuda:N or mps.")] = "cpu",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Score a CSV file of any size (every input column plus the scores), or images (a row per
    image: path and scores)."""
    from anomaly.batch import score_csv, score_images
    from anomaly.registry import load_detector
    from anomaly.training import resolve_device

    resolve_device(device)  # a bad --device fails before a model is downloaded
    detector = load_detector(model, device=device)
    if detector.kind == "image":
        summary = score_images(detector, data, out, maps_dir=maps)
        unit = "images"
    elif maps is not None:
        raise AnomalyError("--maps is for image models")
    else:
        summary = score_csv(detector, data, out, progress=progress)
        unit = "rows"
    rate = summary.rows / summary.seconds if summary.seconds > 0 else float("nan")
    typer.echo(
        f"scored {summary.rows} {unit}, flagged {summary.flagged} "
        f"({summary.flagged / max(summary.rows, 1):.2%}), {rate:,.0f} {unit}/s; wrote {out}"
        + (f" and maps in {maps}" if maps is not None else "")
    )
    if summary.unscored:
        typer.echo(
            f"{summary.unscored} rows have no score: no window of {detector.window} points "
            "covers them (a series or a stretch between gaps shorter than one window)",
            err=True,
        )


@app.command()
@_friendly_errors
def evaluate(
    data: Annotated[Path, typer.Argument(help="CSV of rows with a label column.")],
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)],
    label_col: Annotated[
        str, typer.Option(help="Column saying which rows are anomalies (1/0, true/false...).")
    ],
    target_fpr: Annotated[
        float | None,
        typer.Option(help="Report the threshold reaching this FPR (default: the model's)."),
    ] = None,
    target_recall: Annotated[
        float | None, typer.Option(help="Also report the threshold reaching this recall.")
    ] = None,
    log_run: Annotated[
        bool, typer.Option("--log/--no-log", help="Log the figures and plots to MLflow.")
    ] = True,
) -> None:
    """Measure a model on labelled rows: AUROC, AUPRC, rates at its threshold and others."""
    from anomaly import load, registry
    from anomaly.data import read_csv
    from anomaly.data.tabular import in_file
    from anomaly.evaluation import evaluate as run_evaluation

    ref = registry.resolve(model)
    detector = load(ref.path)
    if detector.kind != "tabular":
        raise InputError(f"evaluate measures table models; {model} holds a {detector.kind} one")
    frame = read_csv(data, schema=detector.schema_)  # the model's columns as `score` reads them
    try:
        result = run_evaluation(
            detector, frame, label_col, target_fpr=target_fpr, target_recall=target_recall
        )
    except InputError as exc:  # a bad label, named by its line too
        raise in_file(exc, data) from None
    width = max(map(len, result.metrics))
    for name, value in result.metrics.items():
        shown = f"{int(value)}" if name in ("rows", "anomalies") else f"{value:.6g}"
        typer.echo(f"{name:<{width}}  {shown}")
    if log_run:
        run_id = registry.log_evaluation(result, ref, data_source=str(data))
        typer.echo(f"logged run {run_id} (plots/roc.png, plots/pr.png, plots/score_histogram.png)")


@app.command()
@_friendly_errors
def serve(
    model: Annotated[str, typer.Option("--model", "-m", help=MODEL_HELP)],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes.")] = 1,
    reload_interval: Annotated[
        float | None,
        typer.Option(
            help="Seconds between registry polls of an alias (0: never; default: "
            "ANOMALY_RELOAD_INTERVAL, else 30)."
        ),
    ] = None,
    log_level: Annotated[LogLevel, typer.Option(help="uvicorn's log level.")] = LogLevel.info,
) -> None:
    """Serve the model over HTTP (FastAPI on uvicorn). More settings: ANOMALY_* variables."""
    import contextlib
    import tempfile

    import pydantic
    import uvicorn

    from anomaly import registry
    from anomaly.persistence import read_kind
    from anomaly.service.settings import Settings

    # Workers are separate processes: they read their settings from the environment.
    os.environ["ANOMALY_MODEL_URI"] = model
    if reload_interval is not None:
        os.environ["ANOMALY_RELOAD_INTERVAL"] = str(reload_interval)
    try:  # bad settings fail here, once, not in every worker
        settings = Settings()
    except pydantic.ValidationError as exc:  # named as the environment names them
        problems = "; ".join(
            f"ANOMALY_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise AnomalyError(f"bad service settings: {problems}") from None
    ref = registry.resolve(model)  # so does a bad URI; the download lands in the cache
    if workers > 1 and not settings.stream_redis_url and read_kind(ref.path) == "sequence":
        raise AnomalyError(
            "a sequence model keeps each stream's recent points in its process: serve it with "
            "one worker (and route replicas by stream id), or share buffers in Redis with "
            "ANOMALY_STREAM_REDIS_URL"
        )
    with contextlib.ExitStack() as cleanup:
        if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # The workers' metric files, summed by a scrape; removed when the server stops, so
            # that no count outlives it.
            metrics_dir = tempfile.TemporaryDirectory(prefix="anomaly-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = cleanup.enter_context(metrics_dir)
            cleanup.callback(os.environ.pop, "PROMETHEUS_MULTIPROC_DIR", None)
        # A worker imports torch before it answers uvicorn's health check: on a busy or
        # CPU-limited machine that takes longer than uvicorn's 5 s default, and the worker
        # would be killed.
        uvicorn.run("anomaly.service.app:create_app", factory=True, host=host, port=port,
                    workers=workers, log_level=log_level.value,
                    timeout_worker_healthcheck=60)  # fmt: skip


class RetrainMode(StrEnum):
    fresh = "fresh"
    finetune = "finetune"
    append = "append"


@app.command()
@_friendly_errors
def retrain(
    data: Annotated[
        Path, typer.Argument(help="New normal data: a CSV of rows or series, or images.")
    ],
    name: Annotated[str, typer.Option(help="Registered model whose champion is challenged.")],
    mode: Annotated[
        RetrainMode, typer.Option(help="fresh weights, finetune the champion, or append data.")
    ] = RetrainMode.fresh,
    holdout: Annotated[float, typer.Option(help="Share of DATA kept for the gate.")] = 0.2,
    anomalies: Annotated[
        Path | None,
        typer.Option(help="Known anomalies, like DATA: the gate compares AUROC too."),
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Most epochs (default: the champion's).")
    ] = None,
    max_fpr_ratio: Annotated[
        float,
        typer.Option(
            help="Challenger's holdout FPR may not be above this x its target (beyond chance)."
        ),
    ] = 2.0,
    max_auroc_drop: Annotated[
        float,
        typer.Option(min=0.0, help="How far the challenger's AUROC may fall below the champion's."),
    ] = 0.01,
    seed: Annotated[int, typer.Option(min=0, help="Random seed.")] = 0,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train a challenger on new normal data; promote it only if it passes the gate.

    DATA is read as the champion reads: a CSV file of table rows or time series, or images (a
    folder or array file). Exit code 0: promoted; 3: the champion stays (the reasons are
    printed); 2: bad input.
    """
    from anomaly.retraining import GateRules
    from anomaly.retraining import retrain as run_retrain

    result = run_retrain(
        name,
        data,
        mode=mode.value,
        holdout=holdout,
        anomalies=anomalies,
        rules=GateRules(max_fpr_ratio=max_fpr_ratio, max_auroc_drop=max_auroc_drop),
        epochs=epochs,
        seed=seed,
        progress=progress,
    )
    for note in result.schema.lines():
        typer.echo(f"schema: {note}")
    for reason in result.reasons:
        typer.echo(reason)
    if result.promoted:
        typer.echo(
            f"promoted {name} v{result.challenger_version} to champion "
            f"(v{result.champion_version} is now previous); run {result.run_id}"
        )
        return
    typer.echo(
        f"kept {name} v{result.champion_version} as champion; challenger "
        f"v{result.challenger_version} has alias challenger; run {result.run_id}"
    )
    raise typer.Exit(code=3)


@app.command("rollback")
@_friendly_errors
def rollback_command(name: Annotated[str, typer.Argument(help="Registered model.")]) -> None:
    """Give champion back to the version it replaced (same as `anomaly models rollback`)."""
    models_rollback(name)


models_app = typer.Typer(help="Registered models and their aliases.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
@_friendly_errors
def models_list(
    name: Annotated[str | None, typer.Argument(help="A model: list its versions.")] = None,
) -> None:
    """Registered models, or the versions of one, with their aliases."""
    from anomaly import registry

    if name is None:
        for model in registry.list_models():
            aliases = ", ".join(f"{a}=v{v}" for a, v in sorted(model["aliases"].items()))
            typer.echo(f"{model['name']}  latest v{model['latest_version']}  {aliases}")
        return
    for row in registry.list_versions(name):
        typer.echo(
            f"v{row['version']:<4} {','.join(row['aliases']) or '-':<20} {row['created']}  "
            f"{row['model'] or '?':<6} threshold {row['threshold'] or '?'}  run {row['run_id']}"
        )


@models_app.command("promote")
@_friendly_errors
def models_promote(
    name: Annotated[str, typer.Argument(help="Registered model.")],
    version: Annotated[int, typer.Argument(help="Version to promote.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "champion",
) -> None:
    """Point an alias (champion by default) at a version; the old champion becomes previous."""
    from anomaly import registry

    old = registry.promote(name, version, alias)
    before = f" (was v{old})" if old is not None else ""
    typer.echo(f"{name}@{alias} -> v{version}{before}")


@models_app.command("rollback")
@_friendly_errors
def models_rollback(name: Annotated[str, typer.Argument(help="Registered model.")]) -> None:
    """Give champion back to the version it replaced (alias previous)."""
    from anomaly import registry

    demoted, restored = registry.rollback(name)
    typer.echo(f"{name}@champion -> v{restored} (was v{demoted})")


def _parse_hidden(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise AnomalyError(f"--hidden takes comma-separated integers, got {text!r}") from None


if __name__ == "__main__":
    app()
