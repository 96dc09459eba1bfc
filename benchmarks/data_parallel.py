"""Does data-parallel training (``torchrun``) train faster than one process on this machine?

ADBench ``cover``'s normal rows (the first ``--rows`` of a seeded shuffle) are written as a CSV
and trained on with ``anomaly train`` for a fixed ``--epochs`` (the patience is above it), each
in a fresh subprocess, the same global batch in each:

- one process with one torch thread, and one with ``--processes`` threads;
- ``torchrun --standalone --nproc-per-node PROCESSES``, one thread each (gloo on a CPU,
  NCCL on GPUs with ``--device cuda``).

Training rows/s = rows trained on × epochs / the ``train_seconds`` the model saves (training
alone: no reading, preprocessing or calibration). ``--rounds`` runs of each. Prints markdown
for BENCHMARKS.md.

Run::

    python -m benchmarks.data_parallel --data ../shared/data/adbench
    python -m benchmarks.data_parallel --data ../shared/data/adbench --batch-size 4096
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks import _adbench
from benchmarks._machine import cpu_summary


def runs(processes: int) -> dict[str, tuple[int, list[str]]]:
    """Name -> (torch threads per process, the command before ``train``'s own arguments)."""
    train = ["-m", "anomaly.cli", "train"]
    torchrun = [str(Path(sys.executable).with_name("torchrun")), "--standalone"]
    return {
        "1 process, 1 thread": (1, [sys.executable, *train]),
        f"1 process, {processes} threads": (processes, [sys.executable, *train]),
        f"torchrun, {processes} processes": (
            1,
            [*torchrun, "--nproc-per-node", str(processes), *train],
        ),
    }


def train_rate(threads: int, command: list[str], csv: Path, model: str, args, out: Path) -> float:
    """Training rows/s of one run of ``command``."""
    options = ["--model", model, "--epochs", str(args.epochs), "--device", args.device]
    if args.batch_size:
        options += ["--batch-size", str(args.batch_size)]
    env = os.environ | {"OMP_NUM_THREADS": str(threads)}
    subprocess.run(
        [*command, str(csv), *options, "--no-progress", "--out", str(out)],
        check=True,
        capture_output=True,
        env=env,
    )
    summary = json.loads((out / "detector.json").read_text())["training"]
    return summary["n_train"] * summary["epochs_run"] / summary["train_seconds"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder with ADBench's 10_cover.npz")
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, help="the global batch (default: automatic)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=["ae", "vae"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    (path,) = _adbench.find_datasets(args.data, ["cover"])
    data = _adbench.load(path)
    normal = np.random.default_rng(0).permutation(data.X[data.y == 0])[: args.rows]
    commands = runs(args.processes)
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "cover.csv"
        pd.DataFrame(normal, columns=[f"x{i}" for i in range(normal.shape[1])]).to_csv(
            csv, index=False
        )
        rates = {
            (model, name): [
                train_rate(*commands[name], csv, model, args, Path(tmp) / f"m{r}")
                for r in range(args.rounds)
            ]
            for model in args.models
            for name in commands
        }
    print(f"Command: `python -m benchmarks.data_parallel {' '.join(argv or sys.argv[1:])}`")
    print(f"- {cpu_summary()}; device {args.device}")
    batch = args.batch_size or "automatic"
    print(f"- cover, {len(normal):,} normal rows; {args.epochs} epochs; global batch {batch}\n")
    print("| model | " + " | ".join(commands) + " |")
    print("|---|" + "--:|" * len(commands))
    for model in args.models:
        cells = (" / ".join(f"{rate:,.0f}" for rate in rates[model, name]) for name in commands)
        print(f"| {model} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
