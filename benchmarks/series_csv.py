"""Does ``anomaly score`` keep its memory flat on a long time-series file, and at what rate?

Generates (seeded, once per size, reused with ``--keep``) a CSV of ``--series`` series of
per-minute readings, interleaved in time as a log of readings is: ``timestamp`` (ISO text),
``host`` and ``value`` (a noisy cycle). Trains a small window autoencoder on the start of the
smallest file, then measures at each ``--rows`` size, each in a fresh subprocess:

- the **pyarrow baseline** of ``benchmarks.batch_csv``: reading and writing the file, all text;
- **ours**: ``anomaly score --model DIR FILE --out OUT --no-progress``, which scores a file
  whose series come in time order in blocks (``SequenceDetector.score_time_ordered``);
- **ours, read whole**: the same scoring with the whole file read first, as ``anomaly score``
  does for a file whose series are not in time order (``anomaly.batch._score_series_whole``;
  the way every series file was scored before the streaming path).

For each: wall seconds, the rate inside the scoring loop, and the child's peak RSS. The scores
of the two ``anomaly`` runs are checked to be the same, byte for byte. Prints markdown for
BENCHMARKS.md.

Run::

    python -m benchmarks.series_csv                               # 1M and 4M rows, 10 series
    python -m benchmarks.series_csv --rows 50000 100000           # a smoke test
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from benchmarks._machine import cpu_summary
from benchmarks.batch_csv import (
    anomaly_command,
    machine_info,
    measure_baseline,
    run_child,
    warm_cache,
)

TRAIN_POINTS = 2_000  # per series, at most half of each series in the smallest file
TRAIN_SERIES = 10  # the first ones: with thousands of series, training would be the run
WINDOW = 32
_GEN_POINTS = 50_000  # points per series generated at a time

# Scores ``src`` into ``dst`` with the whole file read first; prints as `anomaly score` does.
WHOLE = """
import sys, time
from pathlib import Path
from anomaly.batch import _read_header, _replacing, _score_series_whole
from anomaly.registry import load_detector
src, dst, model = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
detector, started = load_detector(model), time.perf_counter()
with _replacing(dst) as out:
    rows, _ = _score_series_whole(detector, src, out, _read_header(src), 2 << 20, False)
print(f"scored {rows} rows, {rows / (time.perf_counter() - started):,.0f} rows/s")
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 4_000_000])
    p.add_argument("--series", type=int, default=10, help="Series interleaved in the file.")
    p.add_argument("--work", type=Path, default=Path("bench-output/series"))
    p.add_argument("--epochs", type=int, default=3, help="Epochs of the small detector.")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of each child.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--keep", action="store_true", help="Keep the generated and scored files.")
    return p.parse_args(argv)


def generate(path: Path, rows: int, n_series: int, seed: int) -> None:
    """Write ``rows`` readings (``rows // n_series`` per series) in time order, unless there."""
    if path.is_file():
        return
    points = rows // n_series
    tmp = path.with_suffix(".partial")
    start = np.datetime64("2024-01-01T00:00:00")
    with pa.OSFile(str(tmp), "wb") as sink:
        writer = None
        for lo in range(0, points, _GEN_POINTS):
            t = np.arange(lo, min(points, lo + _GEN_POINTS))
            rng = np.random.default_rng([seed, lo])
            phase = np.arange(n_series)[None, :]
            value = np.sin(2 * np.pi * t[:, None] / 40 + phase)
            value += 0.05 * rng.normal(size=value.shape)
            stamps = (start + t.astype("timedelta64[m]")).astype(str)
            table = pa.table(
                {
                    "timestamp": np.repeat(stamps, n_series),
                    "host": np.tile([f"h{s}" for s in range(n_series)], len(t)),
                    "value": np.round(value.ravel(), 5),
                }
            )
            if writer is None:
                options = pacsv.WriteOptions(quoting_style="none")
                writer = pacsv.CSVWriter(sink, table.schema, write_options=options)
            writer.write_table(table)
        writer.close()
    tmp.replace(path)


def train(src: Path, work: Path, n_series: int, train_points: int, epochs: int, seed: int) -> Path:
    import pandas as pd

    from anomaly import SequenceDetector

    frame = pd.read_csv(src, nrows=train_points * n_series)  # series interleave in time
    frame = frame[frame["host"].isin(frame["host"].unique()[:TRAIN_SERIES])]
    det = SequenceDetector(
        timestamp_col="timestamp",
        series_col="host",
        window=WINDOW,
        epochs=epochs,
        seed=seed,
        progress=False,
        device="cpu",
    ).fit(frame)
    return det.save(work / "model")


def measure(cmd: list[str], log: Path, rows: int, threads: int | None) -> dict:
    r = run_child(cmd, log, threads)
    m = re.search(rf"scored {rows} rows.*?([\d,]+) rows/s", r["text"])
    if not m:
        sys.exit(f"error: {shlex.join(cmd)} did not score {rows} rows:\n{r['text'][-2000:]}")
    return {**r, "inner_rate": float(m.group(1).replace(",", "")), "rate": rows / r["wall"]}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    files = {n: work / f"series_{n}_x{args.series}_s{args.seed}.csv" for n in args.rows}

    print("## Time-series CSV scoring: streamed in time order against read whole\n")
    print(f"Command: `python -m benchmarks.series_csv {shlex.join(sys.argv[1:])}`\n")
    for line in [cpu_summary(), *machine_info()[1:]]:
        print(f"- {line}")
    started = time.perf_counter()
    for n, path in files.items():
        generate(path, n, args.series, args.seed)
    train_points = min(TRAIN_POINTS, min(files) // args.series // 2)
    model = train(files[min(files)], work, args.series, train_points, args.epochs, args.seed)
    print(
        f"- Data: {args.series} series of per-minute readings interleaved in time "
        f"(timestamp, host, value); generated in {time.perf_counter() - started:.0f} s"
    )
    print(
        f"- Model: conv window AE, window {WINDOW}, trained on the first {train_points:,} "
        f"points of the first {min(TRAIN_SERIES, args.series)} series for {args.epochs} epochs\n",
        flush=True,
    )
    print("| method | rows | file MiB | wall s | rows/s (wall) | rows/s (in loop) | peak RSS MiB |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for n, path in files.items():
        warm_cache(path)
        mib = path.stat().st_size / (1 << 20)
        base = measure_baseline(path, work, n, args)
        streamed, whole = work / "out_streamed.csv", work / "out_whole.csv"
        ours = measure(
            [*anomaly_command(), "score", "--model", str(model), str(path), "--out",
             str(streamed), "--no-progress"],
            work / "streamed.log", n, args.threads,
        )  # fmt: skip
        read_whole = measure(
            [sys.executable, "-c", WHOLE, str(path), str(whole), str(model)],
            work / "whole.log", n, args.threads,
        )  # fmt: skip
        if not filecmp.cmp(streamed, whole, shallow=False):
            sys.exit(f"error: the streamed and whole outputs of {path} differ")
        for name, r in (
            ("pyarrow read + write (baseline)", base),
            ("anomaly score, streamed in time order", ours),
            ("anomaly score, file read whole", read_whole),
        ):
            print(
                f"| {name} | {n:,} | {mib:,.0f} | {r['wall']:.1f} | {r['rate']:,.0f} "
                f"| {r['inner_rate']:,.0f} | {r['rss_mib']:,.0f} |",
                flush=True,
            )
        if not args.keep:
            for out in (streamed, whole):
                out.unlink(missing_ok=True)
    print("\nThe streamed and read-whole outputs were identical, byte for byte, at every size.")
    if not args.keep:
        for path in files.values():
            path.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
