"""The ``anomaly`` command: a thin shell over the library.

Each command parses its arguments, calls the library, and prints a short summary. The library's
own errors become one line on stderr and exit code 2; nothing here knows about models.
"""

from __future__ import annotations

import functools
import logging
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from anomaly.errors import AnomalyError

app = typer.Typer(
    help="Autoencoder anomaly detection: train on normal rows, score new ones.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class ModelKind(StrEnum):
    ae = "ae"
    vae = "vae"
    linear = "linear"


class ScoreKind(StrEnum):
    reconstruction = "reconstruction"
    elbo = "elbo"
    iwae = "iwae"


class ThresholdKind(StrEnum):
    quantile = "quantile"
    evt = "evt"


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


def _friendly_errors(command):
    """Library errors (bad input, bad model directory) end the command with one clear line."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except (AnomalyError, FileNotFoundError, FloatingPointError) as exc:
            _fail(str(exc))
        except ValueError as exc:  # invalid settings that torch or numpy refuse (e.g. --device)
            _fail(str(exc))

    return wrapper


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log more.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )


@app.command()
@_friendly_errors
def train(
    data: Annotated[Path, typer.Argument(help="CSV of normal rows.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
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
    epochs: Annotated[int, typer.Option(help="Most epochs (early stopping may end sooner).")] = 200,
    batch_size: Annotated[
        int | None, typer.Option(help="Rows per training step (default: from the data size).")
    ] = None,
    hidden: Annotated[
        str | None, typer.Option(help="Hidden widths, comma-separated, e.g. 64,32.")
    ] = None,
    latent: Annotated[int | None, typer.Option(help="Bottleneck size.")] = None,
    dropout: Annotated[float, typer.Option(help="Dropout while training.")] = 0.0,
    denoise: Annotated[float, typer.Option(help="Input noise std while training (0 = off).")] = 0.0,
    beta: Annotated[float, typer.Option(help="KL weight of the VAE's loss.")] = 1.0,
    calibration_fraction: Annotated[float, typer.Option(help="Rows held out to calibrate.")] = 0.2,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N.")] = "auto",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train a detector on normal rows, calibrate its threshold, save it to --out."""
    from anomaly.data import read_csv
    from anomaly.detector import Detector

    frame = read_csv(data)
    detector = Detector(
        model=model.value,
        exclude=exclude or (),
        target_fpr=target_fpr,
        threshold_method=threshold.value,
        score=score.value if score else None,
        epochs=epochs,
        batch_size=batch_size,
        hidden=_parse_hidden(hidden),
        latent=latent,
        dropout=dropout,
        denoise=denoise,
        beta=beta,
        calibration_fraction=calibration_fraction,
        device=device,
        seed=seed,
        progress=True,
    ).fit(frame)
    detector.save(out)
    summary = detector.training_summary_
    typer.echo(
        f"trained {model.value} on {summary['n_train']} rows ({summary['epochs_run']} epochs, "
        f"{summary['device']}); threshold {detector.threshold_:.6g} at target FPR {target_fpr} "
        f"from {summary['n_calibration']} calibration rows; saved to {out}"
    )


@app.command("score")
@_friendly_errors
def score_command(
    data: Annotated[Path, typer.Argument(help="CSV of rows to score.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model directory.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV to write.")],
    device: Annotated[str, typer.Option(help="cpu, auto, cuda, cuda:N.")] = "cpu",
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Score a CSV file of any size; writes every input column plus the scores."""
    from anomaly.batch import score_csv
    from anomaly.detector import Detector

    detector = Detector.load(model, device=device)
    summary = score_csv(detector, data, out, progress=progress)
    rate = summary.rows / summary.seconds if summary.seconds > 0 else float("nan")
    typer.echo(
        f"scored {summary.rows} rows, flagged {summary.flagged} "
        f"({summary.flagged / max(summary.rows, 1):.2%}), {rate:,.0f} rows/s; wrote {out}"
    )


def _parse_hidden(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise AnomalyError(f"--hidden takes comma-separated integers, got {text!r}") from None


if __name__ == "__main__":
    app()
