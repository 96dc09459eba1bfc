"""Image anomaly detection on scikit-learn's digits: ImageDetector vs pixel-space kNN and iForest.

Question: with one digit as the normal class, how well do anomaly's convolutional AE and VAE
rank the other digits above unseen images of the normal one (AUROC), next to a k-nearest-
neighbour distance and an isolation forest on the pixels, and how fast do they train and score
on a CPU?

Protocol (one-class)
--------------------
- Data: ``sklearn.datasets.load_digits``, 1,797 8x8 grey images (values 0-16, divided by 16).
- For each digit d and seed s: d's images are shuffled with seed s; 70% of them are the
  training set, the other 30% plus every image of the other nine digits the test set
  (label 1 = another digit). Nothing of the test set is trained on.
- Ours: ``ImageDetector(model=..., size=..., seed=s)`` at its defaults, for each size of
  ``--sizes`` (the digits upscaled to 16x16, the default, and at their own 8x8), ``fit`` on the
  training set; ``fit`` holds 20% of it out for calibration and 10% of the rest for early
  stopping, so it trains on fewer images than the baselines. Score: its ``score_samples``.
- kNN: distance to the 5th nearest training image (scikit-learn ``NearestNeighbors``), pixels
  standardised with the training set's mean and spread. IsolationForest: scikit-learn's
  defaults (100 trees), ``random_state=s``, on the raw pixels; score = ``-score_samples``.
- AUROC per run; the tables give the mean over seeds per digit, and the mean over digits.
- Throughput (ours, same runs): training images/s = training images x epochs run / wall time
  of ``fit`` (everything it does: loading, normalisation, training, calibration) and of the
  training loop alone; scoring images/s = test images / wall time of ``score_samples``
  (array in, scores out; repeated until 0.5 s passed).

Run from the project root::

    .venv/bin/python -m benchmarks.images > bench-output/images.md

The Markdown report goes to stdout (paste it into BENCHMARKS.md); progress goes to stderr.
Timings are wall-clock on a possibly shared machine: compare rows of one run, not across runs.
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

import numpy as np
import sklearn
import torch
from sklearn.datasets import load_digits
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import NearestNeighbors

from anomaly.image import ImageDetector
from benchmarks._machine import cpu_summary

OURS = {"anomaly AE": "ae", "anomaly VAE": "vae"}
BASELINES = ("kNN (k=5)", "IsolationForest")
METHODS = (*OURS, *BASELINES)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=3, help="Seeds 0..N-1: each a new 70/30 split.")
    p.add_argument("--digits", default="0,1,2,3,4,5,6,7,8,9", help="Comma-separated normal digits.")
    p.add_argument(
        "--sizes",
        default="16,8",
        help="Comma-separated sides our detector resizes the 8x8 digits to, one run each.",
    )
    p.add_argument(
        "--methods", default=",".join(OURS.values()), help="Ours to run: comma-separated ae, vae."
    )
    p.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (default: torch's)."
    )
    return p.parse_args(argv)


def split(y: np.ndarray, digit: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train indices, test indices, test labels: 1 = another digit)."""
    own = np.random.default_rng(seed).permutation(np.flatnonzero(y == digit))
    n_train = round(0.7 * len(own))
    test = np.concatenate([own[n_train:], np.flatnonzero(y != digit)])
    return own[:n_train], test, (y[test] != digit).astype(int)


def run_ours(model: str, train: np.ndarray, test: np.ndarray, size: int, seed: int) -> dict:
    start = time.perf_counter()
    det = ImageDetector(model=model, size=size, seed=seed, device="cpu").fit(train)
    fit_s = time.perf_counter() - start
    scores, rate = timed(det.score_samples, test)
    summary = det.training_summary_
    seen = summary["n_train"] * summary["epochs_run"]
    return {
        "scores": scores,
        "fit_s": fit_s,
        "train_rate": seen / fit_s,
        "loop_rate": seen / summary["train_seconds"],
        "score_rate": rate,
        "epochs": summary["epochs_run"],
        "n_train": summary["n_train"],
        "batch": summary["batch_size"],
        "arch": det.architecture_,
        "max_epochs": det.epochs,
        "patience": det.patience,
    }


def run_knn(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    a, b = train.reshape(len(train), -1), test.reshape(len(test), -1)
    mean, std = a.mean(axis=0), a.std(axis=0)
    std[std == 0] = 1.0
    knn = NearestNeighbors(n_neighbors=5).fit((a - mean) / std)
    distances, _ = knn.kneighbors((b - mean) / std)
    return distances[:, -1]


def run_iforest(train: np.ndarray, test: np.ndarray, seed: int) -> np.ndarray:
    forest = IsolationForest(random_state=seed).fit(train.reshape(len(train), -1))
    return -forest.score_samples(test.reshape(len(test), -1))


def timed(score, x: np.ndarray, min_seconds: float = 0.5) -> tuple[np.ndarray, float]:
    """Scores of ``x`` and the rate in images/s, repeated until ``min_seconds`` passed."""
    scores, images, seconds = None, 0, 0.0
    while seconds < min_seconds or scores is None:
        start = time.perf_counter()
        scores = score(x)
        seconds += time.perf_counter() - start
        images += len(x)
    return np.asarray(scores), images / seconds


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(side) for side in args.sizes.split(",")]
    # name -> (model, side)
    ours = {
        f"{name} {side}x{side}": (model, side)
        for side in sizes
        for name, model in OURS.items()
        if model in args.methods.split(",")
    }
    methods = [*ours, *BASELINES]
    digits = [int(d) for d in args.digits.split(",")]
    data = load_digits()
    images = (data.images / 16.0).astype(np.float32)  # (1797, 8, 8) in [0, 1]
    y = data.target

    auroc: dict[str, dict[int, list[float]]] = {m: {d: [] for d in digits} for m in methods}
    runs: dict[str, list[dict]] = {name: [] for name in ours}
    for digit in digits:
        for seed in range(args.seeds):
            train_idx, test_idx, labels = split(y, digit, seed)
            train, test = images[train_idx], images[test_idx]
            for name, (model, side) in ours.items():
                run = run_ours(model, train, test, side, seed)
                runs[name].append(run)
                auroc[name][digit].append(roc_auc_score(labels, run["scores"]))
            auroc["kNN (k=5)"][digit].append(roc_auc_score(labels, run_knn(train, test)))
            forest = run_iforest(train, test, seed)
            auroc["IsolationForest"][digit].append(roc_auc_score(labels, forest))
            done = ", ".join(f"{m} {auroc[m][digit][-1]:.4f}" for m in methods)
            print(f"  digit {digit} seed {seed}: {done}", file=sys.stderr, flush=True)

    print("## Images: one-class digits (scikit-learn), anomaly vs kNN and IsolationForest\n")
    print(f"Command: `python -m benchmarks.images {shlex.join(sys.argv[1:])}`\n")
    print(f"- {cpu_summary()}, torch threads {torch.get_num_threads()}")
    print(
        f"- Python {platform.python_version()}, torch {torch.__version__}, "
        f"scikit-learn {sklearn.__version__}, numpy {np.__version__}"
    )
    for name, model_runs in runs.items():
        first = model_runs[0]
        print(
            f"- {name}: architecture {first['arch']}, batch "
            f"{first['batch']}, epochs run {min(r['epochs'] for r in model_runs)}-"
            f"{max(r['epochs'] for r in model_runs)} of at most {first['max_epochs']} (early "
            f"stopping, patience {first['patience']})"
        )
    print(
        f"- {len(digits)} normal digits x {args.seeds} seeds; AUROC, mean over seeds "
        "(higher is better; best of a row in bold)\n"
    )
    header = ["normal digit", *methods]
    rows = []
    for digit in digits:
        means = [float(np.mean(auroc[m][digit])) for m in methods]
        rows.append([str(digit), *_bold_best(means)])
    overall = [float(np.mean([np.mean(auroc[m][d]) for d in digits])) for m in methods]
    rows.append(["**mean**", *_bold_best(overall)])
    print(md_table(header, rows))

    print("\n**Throughput, CPU (ours; same runs):**\n")
    header = [
        "method",
        "train images",
        "fit s (mean)",
        "train images/s (fit)",
        "train images/s (loop)",
        "score images/s",
    ]
    rows = []
    for name, model_runs in runs.items():
        seen = sum(r["n_train"] * r["epochs"] for r in model_runs)
        fit_s = sum(r["fit_s"] for r in model_runs)
        loop_rate = seen / sum(r["n_train"] * r["epochs"] / r["loop_rate"] for r in model_runs)
        rows.append(
            [
                name,
                f"{np.mean([r['n_train'] for r in model_runs]):.0f}",
                f"{fit_s / len(model_runs):.1f}",
                f"{seen / fit_s:,.0f}",
                f"{loop_rate:,.0f}",
                f"{np.median([r['score_rate'] for r in model_runs]):,.0f}",
            ]
        )
    print(md_table(header, rows))
    print(
        "\nTrain images/s counts every epoch's pass over the training images; score images/s "
        "is the median over runs of test images (~1,300 8x8 arrays, resized) per second of "
        "`score_samples`."
    )


def _bold_best(values: list[float]) -> list[str]:
    text = [f"{v:.4f}" for v in values]
    best = max(text, key=float)
    return [f"**{t}**" if t == best else t for t in text]


if __name__ == "__main__":
    main()
