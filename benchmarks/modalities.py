"""How fast do the sequence and image detectors train and score, on this machine's CPU or a GPU?

Synthetic data of a fixed size, so that a CPU and a GPU run measure the same work:

- sequences: ``--series`` series of ``--points`` points each (``anomaly.datasets.
  make_metric_series``), windows of ``--window`` points with stride 1; training windows/s =
  windows trained on × epochs / the training loop's time; scoring windows/s = windows scored /
  ``score()`` wall time (every window of fresh series, per-point aggregation included);
- images: ``--images`` 8×8 scikit-learn digits upscaled to ``--size`` pixels; training images/s
  likewise; scoring images/s = images / ``score_samples()`` wall time.

Each model trains a fixed ``--epochs`` (no early stop). Run::

    python -m benchmarks.modalities --threads 1            # CPU
    python -m benchmarks.modalities --device cuda --points 200000 --images 60000   # a GPU
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time

import numpy as np
import torch

from anomaly.datasets import make_metric_series
from anomaly.sequence import SequenceDetector
from benchmarks._machine import cpu_summary


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N.")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads.")
    p.add_argument("--series", type=int, default=4, help="Series of the sequence data.")
    p.add_argument("--points", type=int, default=20_000, help="Points per series.")
    p.add_argument("--window", type=int, default=32)
    p.add_argument("--images", type=int, default=5_000, help="Training images.")
    p.add_argument("--size", type=int, default=16, help="Image side in pixels.")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--parts", default="sequence,image", help="sequence, image or both.")
    return p.parse_args(argv)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, min_seconds: float = 1.0) -> tuple[object, float]:
    """``fn()``'s result and its mean wall time, repeated until ``min_seconds`` passed."""
    runs, start = 0, time.perf_counter()
    while True:
        out = fn()
        sync(device)
        runs += 1
        if time.perf_counter() - start >= min_seconds:
            return out, (time.perf_counter() - start) / runs


def sequences(args: argparse.Namespace) -> list[dict]:
    train = make_metric_series(args.points, args.series, seed=0, shuffle=False)
    fresh = make_metric_series(args.points // 4, args.series, anomalies=(100,), seed=1)
    warm = make_metric_series(400, 1, seed=2)  # one-off costs (kernels, thread pools) stay out
    SequenceDetector(window=args.window, epochs=1, device=args.device).fit(
        warm.drop(columns="host")
    )
    rows = []
    for model, arch in [("ae", "conv"), ("vae", "conv"), ("ae", "gru")]:
        det = SequenceDetector(
            series_col="host", exclude=["label"], model=model, arch=arch, window=args.window,
            epochs=args.epochs, patience=10**6, device=args.device,
        )  # fmt: skip
        det.fit(train)
        summary = det.training_summary_
        _, seconds = timed(lambda det=det: det.score(fresh), args.device)
        windows = len(fresh) - args.series * (args.window - 1)
        rows.append(
            {
                "what": f"sequence {model.upper()} {arch}, window {args.window}",
                "train_items": summary["n_train"],
                "train_rate": summary["n_train"] * summary["epochs_run"] / summary["train_seconds"],
                "score_items": windows,
                "score_rate": windows / seconds,
            }
        )
        print(f"  done: {rows[-1]['what']}", file=sys.stderr, flush=True)
    return rows


def images(args: argparse.Namespace) -> list[dict]:
    from sklearn.datasets import load_digits

    from anomaly.image import ImageDetector

    digits = load_digits().images.astype(np.float32) / 16.0  # (1797, 8, 8)
    reps = -(-args.images // len(digits))
    base = np.resize(np.tile(digits, (reps, 1, 1)), (args.images, 8, 8))
    upscaled = torch.nn.functional.interpolate(
        torch.from_numpy(base)[:, None], size=(args.size, args.size), mode="bilinear"
    ).numpy()
    ImageDetector(size=args.size, epochs=1, device=args.device).fit(upscaled[:256])  # warm-up
    rows = []
    for model in ("ae", "vae"):
        det = ImageDetector(
            model=model, size=args.size, epochs=args.epochs, patience=10**6, device=args.device
        )
        det.fit(upscaled)
        summary = det.training_summary_
        _, seconds = timed(lambda det=det: det.score_samples(upscaled), args.device)
        rows.append(
            {
                "what": f"image {model.upper()}, {args.size}×{args.size}",
                "train_items": summary["n_train"],
                "train_rate": summary["n_train"] * summary["epochs_run"] / summary["train_seconds"],
                "score_items": len(upscaled),
                "score_rate": len(upscaled) / seconds,
            }
        )
        print(f"  done: {rows[-1]['what']}", file=sys.stderr, flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("## Sequence and image throughput\n")
    print(f"Command: `python -m benchmarks.modalities {shlex.join(sys.argv[1:])}`\n")
    print(f"- {cpu_summary()}, torch threads {torch.get_num_threads()}")
    print(f"- Python {platform.python_version()}, torch {torch.__version__}")
    gpu = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "not used"
    print(f"- device: {args.device} (GPU: {gpu}); {args.epochs} epochs each\n", flush=True)
    parts = {p.strip() for p in args.parts.split(",")}
    results = (sequences(args) if "sequence" in parts else []) + (
        images(args) if "image" in parts else []
    )
    print("| model | trained on | train items/s | scored | score items/s |")
    print("|---|--:|--:|--:|--:|")
    for r in results:
        print(
            f"| {r['what']} | {r['train_items']:,} | {r['train_rate']:,.0f} "
            f"| {r['score_items']:,} | {r['score_rate']:,.0f} |"
        )


if __name__ == "__main__":
    main()
