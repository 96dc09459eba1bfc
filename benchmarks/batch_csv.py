"""How fast does ``anomaly score`` stream a large CSV file, and does its memory stay flat?

Generates (seeded, once, reused on later runs) a mixed table of ``--rows`` rows: an id, ten
numeric columns (one with missing values), two text categories and a boolean. Trains a small
detector on its first 20,000 rows (the id excluded; a few epochs: this benchmark is about
I/O), then measures in the same run, each in a fresh subprocess:

- the **pyarrow baseline**: ``pyarrow.csv.open_csv`` with every column read as text and the
  same 2 MiB blocks as ours, each batch written back with ``pyarrow.csv.write_csv`` (unquoted,
  as ours writes) to another file: the least any CSV-in, CSV-out scorer must spend;
- **ours**: the installed ``anomaly score --model DIR INPUT --out OUT --no-progress``.

``--repeat`` rounds (3) time each in turn; a method's best round is shown beside the rate of
every round, and each round's ratio to its own baseline. For each: end-to-end wall time
(interpreter start, imports and model load included) as rows/s, the rate measured inside the
process around the read-score-write loop, and the
child's peak RSS (``ru_maxrss`` of the children of a small launcher process started for each
measurement: the child's own peak, not this script's).
Then the peak RSS of both at each ``--rss-rows`` size, to show memory does not grow with the
file (both rise until Arrow's streaming reader has its read-ahead of up to 32 blocks in memory,
then stay flat). Prints markdown tables for BENCHMARKS.md.

Run::

    python -m benchmarks.batch_csv                       # 1M rows; RSS at 1M and 5M rows
    python -m benchmarks.batch_csv --rows 50000 --rss-rows 50000 100000   # a smoke test

Big files go to ``--work`` (default ``bench-output/batch``) and are deleted at the end unless
``--keep``. Timings are wall-clock on a possibly shared machine: compare rows of one run.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from benchmarks._machine import cpu_summary

BLOCK_SIZE = 2 << 20  # the block size anomaly.batch.score_csv reads with
TRAIN_ROWS = 20_000
_GEN_CHUNK = 250_000

REGIONS = ("north", "south", "east", "west", "central", "islands", "overseas", "online")
CHANNELS = ("web", "store", "phone", "partner", "app")

# Runs argv[2:], then writes its wall seconds and peak RSS (ru_maxrss) to the file argv[1].
RUSAGE = """
import resource, subprocess, sys, time
start = time.perf_counter()
code = subprocess.call(sys.argv[2:])
wall = time.perf_counter() - start
with open(sys.argv[1], "w") as fh:
    fh.write(f"{wall} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}")
sys.exit(code)
"""

# The baseline, run in a fresh interpreter so that it is measured like ours.
BASELINE = """
import csv, sys, time
import pyarrow as pa, pyarrow.csv as pacsv
src, dst, block = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
with open(src, newline="", encoding="utf-8") as fh:
    header = next(csv.reader(fh))
reader = pacsv.open_csv(
    src,
    read_options=pacsv.ReadOptions(block_size=block),
    convert_options=pacsv.ConvertOptions(
        column_types={name: pa.string() for name in header}, strings_can_be_null=False
    ),
)
rows, first = 0, True
with open(dst, "wb") as out:
    for batch in reader:
        options = pacsv.WriteOptions(include_header=first, quoting_style="none")
        pacsv.write_csv(batch, out, options)
        rows, first = rows + batch.num_rows, False
seconds = time.perf_counter() - start
print(f"copied {rows} rows in {seconds:.3f} s")
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000, help="Rows of the timed file.")
    p.add_argument(
        "--rss-rows",
        type=int,
        nargs="*",
        default=[1_000_000, 5_000_000],
        help="File sizes (rows) at which to report peak RSS.",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("bench-output/batch"),
        help="Folder for the generated files and the model.",
    )
    p.add_argument("--train-epochs", type=int, default=5, help="Epochs of the small detector.")
    p.add_argument(
        "--models", nargs="+", default=["ae", "vae"], choices=["ae", "vae", "linear"],
        help="Detector kinds to score with; the RSS sweep uses the first.",
    )  # fmt: skip
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="Set OMP_NUM_THREADS for every child (torch's and Arrow's thread pools).",
    )
    p.add_argument(
        "--device", default="cpu", help="`anomaly score --device`: cpu (its default), cuda..."
    )
    p.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="Rounds of timing (baseline, then each model, in turn); the best of each is shown.",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="Keep the generated CSV files.")
    return p.parse_args(argv)


def machine_info(device: str) -> list[str]:
    """One line per fact about the machine, for the top of the table."""
    import torch

    return [
        f"{cpu_summary()}; `anomaly score` scores a block per usable core, one torch thread each",
        f"Python {platform.python_version()}, torch {torch.__version__}, "
        f"pyarrow {pa.__version__}, numpy {np.__version__}",
        f"Scoring device: {device}"
        + (" (the `anomaly score` default)" if device == "cpu" else f" ({_gpu_name()})"),
    ]


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU found"


# ---------------------------------------------------------------------------- data
def _chunk(rng: np.random.Generator, start: int, n: int) -> pa.Table:
    """``n`` rows of a transactions-like table; about 1% of them break its correlations."""
    quantity = rng.poisson(3.0, n) + 1.0
    price = np.round(rng.lognormal(3.0, 0.8, n), 2)
    discount = np.round(rng.beta(1.0, 9.0, n), 4)
    amount = np.round(quantity * price * (1 - discount) + rng.normal(0, 0.5, n), 2)
    region = rng.integers(0, len(REGIONS), n)
    lat = np.round(40.0 + 2.0 * region + rng.normal(0, 0.5, n), 5)
    lon = np.round(-3.0 + 1.5 * region + rng.normal(0, 0.5, n), 5)
    duration = np.round(rng.gamma(2.0, 30.0, n), 1)
    risk = np.round(rng.normal(0.0, 1.0, n), 4)
    temperature = np.round(rng.normal(21.0, 3.0, n), 2)
    pressure = np.round(1013.0 + rng.normal(0, 8.0, n), 1)
    weird = rng.random(n) < 0.01
    amount[weird] *= rng.uniform(5, 20, weird.sum())
    lat[weird] += rng.normal(0, 10, weird.sum())
    channel = rng.choice(len(CHANNELS), n, p=[0.4, 0.25, 0.1, 0.05, 0.2])
    member = rng.random(n) < 0.3 + 0.1 * (channel == 4)
    temperature_col = pa.array(temperature, mask=rng.random(n) < 0.02)  # some missing
    return pa.table(
        {
            "id": pa.array(np.arange(start, start + n, dtype=np.int64)),
            "quantity": quantity,
            "price": price,
            "discount": discount,
            "amount": amount,
            "lat": lat,
            "lon": lon,
            "duration_s": duration,
            "risk": risk,
            "temperature": temperature_col,
            "pressure": pressure,
            "region": pa.array(np.asarray(REGIONS)[region]),
            "channel": pa.array(np.asarray(CHANNELS)[channel]),
            "is_member": pa.array(member),
        }
    )


def generate(path: Path, rows: int, seed: int) -> float:
    """Write the table to ``path`` unless already there; returns seconds spent (0 if reused)."""
    if path.is_file():
        return 0.0
    start = time.perf_counter()
    tmp = path.with_suffix(".partial")
    with pa.OSFile(str(tmp), "wb") as sink:
        writer = None
        for i, lo in enumerate(range(0, rows, _GEN_CHUNK)):
            table = _chunk(np.random.default_rng([seed, i]), lo, min(_GEN_CHUNK, rows - lo))
            if writer is None:
                writer = pacsv.CSVWriter(
                    sink, table.schema, write_options=pacsv.WriteOptions(quoting_style="none")
                )
            writer.write_table(table)
        writer.close()
    tmp.replace(path)
    return time.perf_counter() - start


def warm_cache(path: Path) -> None:
    """Read the file once so that every measurement finds it in the page cache."""
    with open(path, "rb") as fh:
        while fh.read(64 << 20):
            pass


# ---------------------------------------------------------------------------- measuring
def run_child(cmd: list[str], log: Path, threads: int | None = None) -> dict:
    """Run ``cmd``; wall seconds, the child's own peak RSS (MiB) and its output.

    The command is started by a small fresh interpreter (``RUSAGE``), not by this process:
    on Linux a child's ``ru_maxrss`` also counts the memory of the process it was forked from
    before it exec'd, which here would be ours, torch and all.
    """
    stats = log.with_suffix(".rusage")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
    with open(log, "wb") as out:
        done = subprocess.run(
            [sys.executable, "-S", "-c", RUSAGE, str(stats), *cmd],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
            env=env,
        )
    text = log.read_text(errors="replace")
    if done.returncode != 0:
        sys.exit(f"error: {shlex.join(cmd)} exited {done.returncode}:\n{text[-2000:]}")
    wall, maxrss = stats.read_text().split()
    per_mib = 1 << 20 if sys.platform == "darwin" else 1 << 10  # ru_maxrss: bytes vs KiB
    return {"wall": float(wall), "rss_mib": int(maxrss) / per_mib, "text": text}


def anomaly_command() -> list[str]:
    script = Path(sys.executable).parent / "anomaly"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "anomaly.cli"]


def measure_baseline(src: Path, work: Path, rows: int, args: argparse.Namespace) -> dict:
    dst = work / "out_baseline.csv"
    r = run_child(
        [sys.executable, "-c", BASELINE, str(src), str(dst), str(BLOCK_SIZE)],
        work / "baseline.log",
        args.threads,
    )
    m = re.search(r"copied (\d+) rows in ([\d.]+) s", r["text"])
    if not m or int(m.group(1)) != rows:
        sys.exit(f"error: the baseline did not copy {rows} rows:\n{r['text'][-2000:]}")
    if not args.keep:
        dst.unlink(missing_ok=True)
    return {**r, "inner_rate": rows / float(m.group(2)), "rate": rows / r["wall"]}


def measure_ours(src: Path, model: Path, work: Path, rows: int, args: argparse.Namespace) -> dict:
    dst = work / "out_anomaly.csv"
    cmd = [
        *anomaly_command(),
        "score",
        "--model",
        str(model),
        str(src),
        "--out",
        str(dst),
        "--no-progress",
        "--device",
        args.device,
    ]
    r = run_child(cmd, work / "anomaly.log", args.threads)
    m = re.search(r"scored (\d+) rows.*?([\d,]+) rows/s", r["text"])
    if not m or int(m.group(1)) != rows:
        sys.exit(f"error: anomaly score did not score {rows} rows:\n{r['text'][-2000:]}")
    if not args.keep:
        dst.unlink(missing_ok=True)
    return {
        **r,
        "inner_rate": float(m.group(2).replace(",", "")),
        "rate": rows / r["wall"],
        "cmd": cmd,
    }


def train_model(src: Path, work: Path, kind: str, epochs: int, seed: int) -> tuple[Path, float]:
    import pandas as pd

    from anomaly import Detector
    from anomaly.data.tabular import NA_VALUES

    start = time.perf_counter()
    frame = pd.read_csv(src, nrows=TRAIN_ROWS, keep_default_na=False, na_values=list(NA_VALUES))
    det = Detector(
        model=kind, exclude=["id"], epochs=epochs, progress=False, device="cpu", seed=seed
    )
    det.fit(frame)
    model = work / f"model_{kind}"
    if model.exists():
        shutil.rmtree(model)
    det.save(model)
    return model, time.perf_counter() - start


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    sizes = sorted({args.rows, *args.rss_rows})
    files = {n: work / f"table_{n}_s{args.seed}.csv" for n in sizes}

    print("## Batch CSV scoring: `anomaly score` vs a pyarrow read-write baseline\n")
    print(f"Command: `python -m benchmarks.batch_csv {shlex.join(sys.argv[1:])}`\n")
    for line in machine_info(args.device):
        print(f"- {line}")
    if args.threads:
        print(f"- OMP_NUM_THREADS={args.threads} in every measured child")

    src = files[args.rows]
    gen_s = generate(src, args.rows, args.seed)
    size_mib = src.stat().st_size / (1 << 20)
    models = {k: train_model(src, work, k, args.train_epochs, args.seed) for k in args.models}
    made = f"generated in {gen_s:.0f} s" if gen_s else "reused"
    print(
        f"- Data: {args.rows:,} rows × 14 columns (id, 10 numeric, 2 text categories, 1 "
        f"boolean), {size_mib:,.0f} MiB ({made})"
    )
    trained = ", ".join(f"{k} ({t:.0f} s)" for k, (_, t) in models.items())
    print(
        f"- Models: {trained}, each trained on the first {TRAIN_ROWS:,} rows for "
        f"{args.train_epochs} epochs, id excluded; blocks of {BLOCK_SIZE >> 20} MiB\n",
        flush=True,
    )

    warm_cache(src)
    # Rounds, each timing the baseline and then every model: on a shared machine one timing
    # can be off by a third, so each method's best round is shown, and every round's ratio.
    rounds = []
    for _ in range(args.repeat):
        timed = {"baseline": measure_baseline(src, work, args.rows, args)}
        for k, (m, _) in models.items():
            timed[k] = measure_ours(src, m, work, args.rows, args)
        rounds.append(timed)
    best = {  # each method's fastest round, with the highest peak RSS of any of its rounds
        name: max((timed[name] for timed in rounds), key=lambda r: r["inner_rate"])
        | {"rss_mib": max(timed[name]["rss_mib"] for timed in rounds)}
        for name in rounds[0]
    }
    base = best["baseline"]
    first = best[next(iter(models))]
    cmd = first["cmd"]
    print(f"Ours: `{shlex.join(['anomaly', *cmd[cmd.index('score') :]])}`\n")
    print(
        f"Best of {args.repeat} rounds (rows/s in loop of every round in brackets; "
        "each round's ratio to its own baseline in the last column):\n"
    )
    print(
        "| method | rows | wall s | rows/s (wall) | rows/s (in loop) | peak RSS MiB "
        "| vs baseline, best | vs baseline, each round |"
    )
    print("|---|--:|--:|--:|--:|--:|--:|--:|")
    for name, r in best.items():
        label = (
            "pyarrow read + write (baseline)"
            if name == "baseline"
            else f"anomaly score, {name} model"
        )
        every = ", ".join(f"{timed[name]['inner_rate']:,.0f}" for timed in rounds)
        ratios = " / ".join(
            f"{timed[name]['inner_rate'] / timed['baseline']['inner_rate']:.0%}" for timed in rounds
        )
        print(
            f"| {label} | {args.rows:,} | {r['wall']:.1f} | {r['rate']:,.0f} "
            f"| {r['inner_rate']:,.0f} ({every}) | {r['rss_mib']:,.0f} "
            f"| {r['rate'] / base['rate']:.0%} wall, "
            f"{r['inner_rate'] / base['inner_rate']:.0%} loop | {ratios} |"
        )
    print(flush=True)
    model = next(iter(models.values()))[0]
    ours = first

    if args.rss_rows:
        print(
            "| rows | file MiB | anomaly score peak RSS MiB | baseline peak RSS MiB "
            "| anomaly score rows/s (wall) |"
        )
        print("|--:|--:|--:|--:|--:|")
        for n in sorted(set(args.rss_rows)):
            if n == args.rows:
                b, o = base, ours
            else:
                generate(files[n], n, args.seed)
                warm_cache(files[n])
                b = measure_baseline(files[n], work, n, args)
                o = measure_ours(files[n], model, work, n, args)
            mib = files[n].stat().st_size / (1 << 20)
            print(
                f"| {n:,} | {mib:,.0f} | {o['rss_mib']:,.0f} | {b['rss_mib']:,.0f} "
                f"| {o['rate']:,.0f} |",
                flush=True,
            )

    if not args.keep:
        for path in files.values():
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
