"""How fast does our autoencoder train and score, next to PyOD's ``AutoEncoder``, and is it as good?

Trains our dense AE and VAE and PyOD's ``AutoEncoder`` (at its defaults: batch size 32, 10 epochs,
batch norm, dropout) on the normal rows of ADBench ``cover`` in the same run, and prints a
markdown table for BENCHMARKS.md: training throughput, scoring throughput and AUROC.

Protocol
--------
- Normal rows are shuffled (seeded); ``--test-normals`` of them are held out and, with every
  anomaly, form the test set. Nothing of the test set is trained on.
- Ours trains on ``--train-rows`` of the remaining normal rows (``Detector.fit`` keeps 20% of
  them for calibration and 10% of the rest for early stopping; ``n_train`` is what is left).
  ``--rows N`` trains on N rows instead, the training pool tiled (plain repetition) as needed:
  for a large GPU.
- PyOD trains on ``--peer-rows`` of the same pool (it is slow at its defaults).
- Epochs are fixed so that both run the same number: ours with ``--epochs`` (default 10) and
  patience 10**6; PyOD with ``epoch_num`` (``--peer-epochs``, default 10, its own default).
- Training throughput = n_train × epochs / wall time of ``fit`` (everything ``fit`` does:
  preprocessing, validation, calibration; PyOD's ``fit`` also scores its training rows).
- Scoring throughput = test rows / wall time of ``score_samples`` (numpy in, scores out) for
  ours and of ``decision_function`` (at PyOD's default batch size) for PyOD, repeated until
  at least a second has passed.
- Resident scoring throughput (ours): the test rows, preprocessed and tiled to ``--resident-rows``,
  already on the device; rows / wall time of the scoring function the detector itself calls
  (``anomaly.scoring.score_batch`` on blocks of the height ``Detector`` uses), synchronised.
- Loop rows/s (ours): n_train × epochs / the training loop's own time (``fit`` less
  preprocessing, calibration and the rest).
- On a GPU, a second table times the training loop alone with the step replayed as a CUDA graph
  (the default) and run eagerly, same model, data and batch size.

Run::

    python -m benchmarks.throughput --data ../shared/data/adbench
    python -m benchmarks.throughput --device cuda --rows 1000000 --peer-rows 5000   # a GPU

Timings are wall-clock on a possibly shared machine: compare rows of one run, not across runs.
On a machine shared with other CPU-heavy jobs, ``--threads 1`` gives both libraries one torch
thread each: with more threads than free cores, every small kernel waits on a descheduled
thread, and PyOD's many tiny batches suffer far more than ours (up to 10× slower here).
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from anomaly import Detector
from anomaly.scoring import model_blocks, score_batch
from anomaly.training import TrainConfig, auto_batch_size, train
from benchmarks._machine import cpu_summary

DATASET = "10_cover.npz"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--data",
        type=Path,
        default=Path("../shared/data/adbench"),
        help="Folder holding ADBench's 10_cover.npz.",
    )
    p.add_argument(
        "--train-rows", type=int, default=100_000, help="Normal rows given to our Detector.fit."
    )
    p.add_argument(
        "--rows",
        type=int,
        default=None,
        help="Give our fit N rows, tiling the training pool as needed (big GPUs).",
    )
    p.add_argument(
        "--peer-rows", type=int, default=20_000, help="Normal rows given to PyOD's AutoEncoder.fit."
    )
    p.add_argument(
        "--test-normals",
        type=int,
        default=50_000,
        help="Normal rows held out for the test set (with every anomaly).",
    )
    p.add_argument("--epochs", type=int, default=10, help="Epochs for ours (fixed).")
    p.add_argument("--peer-epochs", type=int, default=10, help="PyOD's epoch_num (default 10).")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="Our batch size (default: the Detector's default).",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N.")
    p.add_argument(
        "--methods", default="ae,vae,pyod-ae", help="Comma-separated subset of: ae, vae, pyod-ae."
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads for every method (default: torch's default).",
    )
    p.add_argument(
        "--resident-rows",
        type=int,
        default=1_000_000,
        help="Rows (test rows, tiled) for the device-resident scoring rate.",
    )
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def machine_info(device: torch.device) -> list[str]:
    """One line per fact about the machine, for the top of the table."""
    lines = [
        f"{cpu_summary()}, torch threads {torch.get_num_threads()}",
        f"Python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}",
    ]
    if device.type == "cuda":
        lines.append(f"GPU: {torch.cuda.get_device_name(device)}")
    else:
        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        lines.append(f"GPU: {gpu} (not used)")
    return lines


def load_split(args: argparse.Namespace) -> dict[str, np.ndarray]:
    """Train pool (normals only) and test set (held-out normals + every anomaly)."""
    path = args.data / DATASET
    if not path.is_file():
        sys.exit(f"error: {path} not found; pass --data the ADBench folder")
    with np.load(path, allow_pickle=False) as npz:
        X, y = npz["X"].astype(np.float32), npz["y"].astype(int)
    rng = np.random.default_rng(args.seed)
    normals = rng.permutation(np.flatnonzero(y == 0))
    anomalies = np.flatnonzero(y == 1)
    n_test = min(args.test_normals, len(normals) // 2)
    test_idx = np.concatenate([normals[:n_test], anomalies])
    pool = X[normals[n_test:]]
    return {"pool": pool, "x_test": X[test_idx], "y_test": y[test_idx]}


def rows_from(pool: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` rows of the pool, repeating it when it is shorter (plain tiling)."""
    if n <= len(pool):
        return pool[:n]
    return np.resize(pool, (n, pool.shape[1]))


def timed_scoring(score, x: np.ndarray, min_seconds: float = 1.0) -> tuple[np.ndarray, float]:
    """Scores of ``x`` and the scoring rate in rows/s, repeated until ``min_seconds`` passed."""
    scores, rows, seconds = None, 0, 0.0
    while seconds < min_seconds or scores is None:
        start = time.perf_counter()
        scores = score(x)
        seconds += time.perf_counter() - start
        rows += len(x)
    return np.asarray(scores), rows / seconds


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(methods: list[str], pool: np.ndarray, device: torch.device) -> None:
    """One tiny fit per library, untimed: one-off costs (kernels, thread pools) stay out."""
    x = pool[:2048]
    if {"ae", "vae"} & set(methods):
        Detector(epochs=1, progress=False, device=str(device)).fit(x).score_samples(x)
    if "pyod-ae" in methods:
        from pyod.models.auto_encoder import AutoEncoder

        AutoEncoder(epoch_num=1, verbose=0, device=device).fit(x[:512].astype(np.float64))


def resident_scoring_rate(det: Detector, x_test: np.ndarray, rows: int) -> float:
    """Rows/s of the detector's scoring function on preprocessed rows already on its device."""
    x = det.preprocessor_.transform(det.schema_.coerce(det_frame(det, x_test)))
    x = torch.from_numpy(rows_from(x, rows)).to(det.device_)
    method, device = det._score_method(), det.device_
    chunk, _ = model_blocks(det.module_, x.shape[1:], method, device)  # as score_array's

    def score_all() -> None:
        with torch.no_grad():
            for start in range(0, len(x), chunk):
                score_batch(det.module_, x[start : start + chunk], method)
        sync(device)

    score_all()  # warm-up: kernels chosen, memory pooled
    runs, start = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - start < 1.0:
        score_all()
        runs += 1
    return runs * len(x) / (time.perf_counter() - start)


def det_frame(det: Detector, x: np.ndarray):
    """``x`` as the DataFrame a detector fitted on a bare matrix expects (columns x0, x1...)."""
    import pandas as pd

    return pd.DataFrame(x, columns=det.schema_.names)


def run_ours(
    model: str, x_train: np.ndarray, split: dict, args: argparse.Namespace, device: torch.device
) -> dict:
    kwargs = {"batch_size": args.batch_size} if args.batch_size else {}
    det = Detector(
        model=model,
        epochs=args.epochs,
        patience=10**6,
        progress=False,
        device=str(device),
        seed=args.seed,
        **kwargs,
    )
    sync(device)
    start = time.perf_counter()
    det.fit(x_train)
    sync(device)
    seconds = time.perf_counter() - start
    summary = det.training_summary_
    scores, score_rate = timed_scoring(det.score_samples, split["x_test"])
    return {
        "method": f"anomaly {model.upper()}",
        "batch": det.batch_size or auto_batch_size(det.training_summary_["n_train"]),
        "epochs": summary["epochs_run"],
        "n_train": summary["n_train"],
        "fit_s": seconds,
        "train_rate": summary["n_train"] * summary["epochs_run"] / seconds,
        "score_rate": score_rate,
        "resident_rate": resident_scoring_rate(det, split["x_test"], args.resident_rows),
        "loop_rate": summary["n_train"] * summary["epochs_run"] / summary["train_seconds"],
        "auroc": roc_auc_score(split["y_test"], scores),
        "detector": det,
    }


def loop_comparison(
    det: Detector, x_train: np.ndarray, args: argparse.Namespace, device: torch.device
) -> list[dict]:
    """The training loop alone, its step replayed as a CUDA graph and run eagerly."""
    x = det.preprocessor_.transform(det.schema_.coerce(det_frame(det, x_train)))
    n_train = int(len(x) * 0.9)
    rows = []
    for graphed in (True, False):
        torch.manual_seed(args.seed)
        module = det._build_module(det.architecture_)
        config = TrainConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            patience=10**6,
            seed=args.seed,
            progress=False,
            cuda_graph=graphed,
        )
        sync(device)
        start = time.perf_counter()
        history = train(module, x[:n_train], x[n_train:], config, device)
        sync(device)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "step": "CUDA graph" if graphed else "eager",
                "batch": config.batch_size or auto_batch_size(n_train),
                "n_train": n_train,
                "seconds": seconds,
                "rate": n_train * args.epochs / seconds,
                "val_loss": history["val_loss"][-1],
            }
        )
    return rows


def run_pyod(
    x_train: np.ndarray, split: dict, args: argparse.Namespace, device: torch.device
) -> dict:
    from pyod.models.auto_encoder import AutoEncoder

    torch.manual_seed(args.seed)
    det = AutoEncoder(epoch_num=args.peer_epochs, verbose=0, device=device)
    x_train = x_train.astype(np.float64)  # what a user hands PyOD: sklearn's default dtype
    sync(device)
    start = time.perf_counter()
    det.fit(x_train)
    sync(device)
    seconds = time.perf_counter() - start
    x_test = split["x_test"].astype(np.float64)
    scores, score_rate = timed_scoring(det.decision_function, x_test)
    return {
        "method": "PyOD AutoEncoder (defaults)",
        "batch": det.batch_size,
        "epochs": det.epoch_num,
        "n_train": len(x_train),
        "fit_s": seconds,
        "train_rate": len(x_train) * det.epoch_num / seconds,
        "score_rate": score_rate,
        "auroc": roc_auc_score(split["y_test"], scores),
    }


def markdown(results: list[dict], device: torch.device) -> str:
    head = (
        "| method | device | batch size | epochs | n_train | fit s | train rows/s "
        "| loop rows/s | score rows/s | resident score rows/s | AUROC |"
    )
    lines = [head, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|"]
    for r in results:
        loop = f"{r['loop_rate']:,.0f}" if "loop_rate" in r else "–"
        resident = f"{r['resident_rate']:,.0f}" if "resident_rate" in r else "–"
        lines.append(
            f"| {r['method']} | {device} | {r['batch']} | {r['epochs']} | {r['n_train']:,} "
            f"| {r['fit_s']:.1f} | {r['train_rate']:,.0f} | {loop} | {r['score_rate']:,.0f} "
            f"| {resident} | {r['auroc']:.4f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - {"ae", "vae", "pyod-ae"}
    if unknown:
        sys.exit(f"error: unknown method(s) {sorted(unknown)}; choose from ae, vae, pyod-ae")
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    split = load_split(args)
    n_ours = args.rows if args.rows is not None else args.train_rows
    x_ours = rows_from(split["pool"], n_ours)
    x_peer = rows_from(split["pool"], args.peer_rows)

    print("## Training and scoring throughput: anomaly vs PyOD AutoEncoder\n")
    print(f"Command: `python -m benchmarks.throughput {shlex.join(sys.argv[1:])}`\n")
    for line in machine_info(device):
        print(f"- {line}")
    pool_note = " (tiled)" if n_ours > len(split["pool"]) else ""
    print(
        f"- Data: ADBench cover, {split['x_test'].shape[1]} features; ours given "
        f"{n_ours:,} normal rows{pool_note}, PyOD {args.peer_rows:,}; test "
        f"{len(split['y_test']):,} rows ({int(split['y_test'].sum()):,} anomalies)\n",
        flush=True,
    )

    warm_up(methods, split["pool"], device)
    results = []
    for method in methods:
        if method == "pyod-ae":
            results.append(run_pyod(x_peer, split, args, device))
        else:
            results.append(run_ours(method, x_ours, split, args, device))
        r = results[-1]
        print(f"  done: {r['method']} in {r['fit_s']:.1f} s", file=sys.stderr, flush=True)

    print(markdown(results, device))
    ours = next((r for r in results if "detector" in r), None)
    if device.type == "cuda" and ours is not None:
        print(f"\n**Training loop alone, {ours['method']}, {args.epochs} epochs:**\n")
        print("| step | batch size | n_train | loop s | loop rows/s | last val loss |")
        print("|---|--:|--:|--:|--:|--:|")
        for r in loop_comparison(ours["detector"], x_ours, args, device):
            print(
                f"| {r['step']} | {r['batch']} | {r['n_train']:,} | {r['seconds']:.2f} "
                f"| {r['rate']:,.0f} | {r['val_loss']:.4g} |"
            )
    peer = next((r for r in results if r["method"].startswith("PyOD")), None)
    if peer is not None:
        print()
        for r in results:
            if r is peer:
                continue
            print(
                f"- {r['method']} / PyOD AE: training rows/s ×"
                f"{r['train_rate'] / peer['train_rate']:.1f}, scoring rows/s ×"
                f"{r['score_rate'] / peer['score_rate']:.1f}"
            )


if __name__ == "__main__":
    main()
