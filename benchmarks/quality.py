"""Detection quality on ADBench tabular sets.

Question: how well do anomaly's autoencoders (``ae``, ``vae``, ``linear``) rank anomalies above
normal rows (AUROC, AUPRC) next to PyOD's AutoEncoder, VAE, IForest, ECOD and KNN at their
defaults, and does a threshold set for a 1% false-positive rate on held-out normal rows hold
that rate on test normals, at what recall? Protocol: ``benchmarks/_adbench.py``.

Run from the project root (after ``make bench``)::

    .venv/bin/python -m benchmarks.quality --data ../shared/data/adbench \\
        --out bench-output/quality.json > bench-output/quality.md

The Markdown report goes to stdout (paste it into BENCHMARKS.md); progress and warnings go to
stderr; ``--out`` writes every run's numbers as JSON.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import math
import os
import platform
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyod
import sklearn
import torch
from pyod.models.auto_encoder import AutoEncoder
from pyod.models.ecod import ECOD
from pyod.models.iforest import IForest
from pyod.models.knn import KNN
from pyod.models.vae import VAE
from sklearn.metrics import average_precision_score, roc_auc_score

import anomaly
from anomaly import Detector
from benchmarks import _adbench

log = logging.getLogger("benchmarks.quality")

TARGET_FPR = 0.01
OURS = {"anomaly-ae": "ae", "anomaly-vae": "vae", "anomaly-linear": "linear"}
# PyOD detectors at their defaults, but seeded where they take a seed and quiet.
PYOD: dict[str, Callable[[int], object]] = {
    "AutoEncoder": lambda seed: AutoEncoder(random_state=seed, verbose=0),
    "VAE": lambda seed: VAE(random_state=seed, verbose=0),
    "IForest": lambda seed: IForest(random_state=seed),
    "ECOD": lambda seed: ECOD(),
    "KNN": lambda seed: KNN(),
}
METHODS = (*OURS, *PYOD)
INPUTS = {
    "anomaly-*": "a DataFrame of the raw columns; the detector standardises them itself",
    "AutoEncoder, VAE": "raw features; PyOD standardises them itself (preprocessing=True)",
    "IForest, ECOD, KNN": "raw, unscaled features, as PyOD's defaults take them",
}


@dataclass
class Scores:
    calibration: np.ndarray
    test: np.ndarray
    threshold: float
    fit_s: float
    score_s: float


def conformal_threshold(scores: np.ndarray, target_fpr: float = TARGET_FPR) -> float:
    """The ⌈(n+1)(1-α)⌉-th smallest calibration score (the largest when n is too small).

    The same rule as ``anomaly.calibration.Calibrator`` (method "quantile"); a row is flagged
    when its score is strictly above the threshold.
    """
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    rank = min(math.ceil((len(ordered) + 1) * (1.0 - target_fpr)), len(ordered))
    return float(ordered[rank - 1])


def run_ours(model: str, split: _adbench.Split, seed: int) -> Scores:
    columns = [f"x{i}" for i in range(split.X_train.shape[1])]
    train = pd.DataFrame(split.X_train, columns=columns)
    cal = pd.DataFrame(split.X_cal, columns=columns)
    test = pd.DataFrame(split.X_test, columns=columns)
    kwargs = {} if model == "linear" else {"seed": seed}
    t0 = time.perf_counter()
    det = Detector(model=model, progress=False, **kwargs).fit(train, calibration_data=cal)
    t1 = time.perf_counter()
    test_scores = det.score_samples(test)
    t2 = time.perf_counter()
    # Not timed: the calibration scores again, to check det.threshold_ against the rule above.
    cal_scores = det.score_samples(cal)
    if det.threshold_ != conformal_threshold(cal_scores):
        log.warning(
            "%s: threshold_ %r differs from the conformal rule on rescored calibration rows %r",
            model,
            det.threshold_,
            conformal_threshold(cal_scores),
        )
    return Scores(cal_scores, test_scores, det.threshold_, t1 - t0, t2 - t1)


def run_pyod(name: str, split: _adbench.Split, seed: int) -> Scores:
    clf = PYOD[name](seed)
    t0 = time.perf_counter()
    clf.fit(split.X_train)
    t1 = time.perf_counter()
    cal_scores = np.asarray(clf.decision_function(split.X_cal), dtype=np.float64)
    test_scores = np.asarray(clf.decision_function(split.X_test), dtype=np.float64)
    t2 = time.perf_counter()
    return Scores(cal_scores, test_scores, conformal_threshold(cal_scores), t1 - t0, t2 - t1)


def evaluate(scores: Scores, y_test: np.ndarray) -> dict:
    if not (np.isfinite(scores.test).all() and np.isfinite(scores.calibration).all()):
        raise ValueError("non-finite scores")
    flagged = scores.test > scores.threshold
    normal = y_test == 0
    return {
        "auroc": float(roc_auc_score(y_test, scores.test)),
        "auprc": float(average_precision_score(y_test, scores.test)),
        "threshold": scores.threshold,
        "fpr": float(flagged[normal].mean()),
        "recall": float(flagged[~normal].mean()),
        "fit_s": scores.fit_s,
        "score_s": scores.score_s,
        "total_s": scores.fit_s + scores.score_s,
    }


# ---------------------------------------------------------------------- report
def machine_info() -> dict[str, str]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return {
        "cpu": cpu,
        "cores": f"{psutil.cpu_count(logical=False)} physical, {os.cpu_count()} logical, "
        f"{len(os.sched_getaffinity(0))} usable",
        "memory": f"{psutil.virtual_memory().total / 2**30:.1f} GiB",
        "os": platform.platform(),
        "python": platform.python_version(),
        "torch": f"{torch.__version__} (1 thread in each --jobs worker)",
        "pyod": pyod.__version__,
        "scikit-learn": sklearn.__version__,
        "numpy": np.__version__,
        "anomaly": f"{anomaly.__version__} (git {commit})",
        "anomaly source sha256": source_digest(),
    }


def source_digest() -> str:
    """A hash of the installed package's source, so results from different code never mix."""
    root = Path(anomaly.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def command_line() -> str:
    spec = globals().get("__spec__")
    head = f"python -m {spec.name}" if spec is not None else f"python {sys.argv[0]}"
    return " ".join([head, *map(shlex.quote, sys.argv[1:])])


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |"]
    lines.append("|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _datasets(runs: pd.DataFrame) -> list[str]:
    return sorted(runs["dataset"].unique(), key=str.lower)


def _methods(runs: pd.DataFrame) -> list[str]:
    present = set(runs["method"])
    return [m for m in METHODS if m in present]


def metric_table(runs: pd.DataFrame, metric: str, digits: int, *, rank: bool = False) -> str:
    """Datasets x methods, mean over seeds; a mean row, and the mean rank if ``rank``."""
    ok = runs[runs["error"].isna()]
    table = ok.pivot_table(index="dataset", columns="method", values=metric, aggfunc="mean")
    table = table.reindex(index=_datasets(runs), columns=_methods(runs))
    seeds = runs["seed"].nunique()
    counts = ok.pivot_table(index="dataset", columns="method", values=metric, aggfunc="count")
    counts = counts.reindex_like(table).fillna(0)

    def cell(value: float, partial: bool = False) -> str:
        return "n/a" if pd.isna(value) else f"{value:.{digits}f}" + ("*" if partial else "")

    rows = [
        [d, *(cell(table.at[d, m], counts.at[d, m] < seeds) for m in table.columns)]
        for d in table.index
    ]
    short = table.isna().any()
    rows.append(["**mean**", *(cell(table[m].mean(), short[m]) for m in table.columns)])
    if rank:
        ranks = table.rank(axis=1, ascending=False).mean()
        rows.append(["**mean rank**", *(f"{ranks[m]:.1f}" for m in table.columns)])
    return md_table(["dataset", *table.columns], rows)


def time_table(runs: pd.DataFrame) -> str:
    table = runs.pivot_table(index="dataset", columns="method", values="total_s", aggfunc="sum")
    table = table.reindex(index=_datasets(runs), columns=_methods(runs))
    rows = [[d, *(f"{table.at[d, m]:.1f}" for m in table.columns)] for d in table.index]
    rows.append(["**total**", *(f"{table[m].sum():.1f}" for m in table.columns)])
    return md_table(["dataset", *table.columns], rows)


def report(doc: dict) -> str:
    """The Markdown report of a results document (what ``--out`` writes)."""
    info, sets = doc["machine"], doc["datasets"]
    runs = pd.DataFrame.from_records(doc["runs"])
    for column in ("error", "auroc", "auprc", "fpr", "recall", "total_s"):
        if column not in runs:
            runs[column] = np.nan
    seeds = " ".join(map(str, doc["seeds"]))
    out = [
        "## Detection quality (ADBench tabular sets)",
        "",
        "```",
        doc["command"],
        "```",
        "",
        *(f"- {k}: {v}" for k, v in info.items()),
        "",
        f"Protocol, per seed ({seeds}): normal rows shuffled, 60% train, 10% calibration, 30% "
        "test; test = those normals + all anomalies; train and test capped at "
        f"{_adbench.MAX_ROWS:,} rows by a seeded random choice. Thresholds for a "
        f"{TARGET_FPR:.0%} false-positive rate come from the calibration rows by the same "
        "conformal rule for every method (the ⌈(n+1)(1-α)⌉-th smallest calibration score, the "
        "largest when n < 99); a test row is flagged when its score is above it. Cells are means "
        "over seeds. Methods at their defaults (seeded); what each is given:",
        "",
        *(f"- {k}: {v}" for k, v in INPUTS.items()),
        "",
        md_table(
            ["dataset", "rows", "features", "anomalies", "train", "calibration", "test (anom.)"],
            [
                [
                    s["dataset"],
                    f"{s['rows']:,}",
                    str(s["features"]),
                    f"{s['anomalies']:,} ({s['anomalies'] / s['rows']:.1%})",
                    f"{s['n_train']:,}",
                    f"{s['n_cal']:,}",
                    f"{s['n_test']:,} ({s['n_test_anomalies']:,})",
                ]
                for s in sets
            ],
        ),
        "",
        "### AUROC",
        "",
        metric_table(runs, "auroc", 3, rank=True),
        "",
        "### AUPRC (average precision)",
        "",
        metric_table(runs, "auprc", 3, rank=True),
        "",
        f"### Observed false-positive rate on test normals (target {TARGET_FPR:.0%})",
        "",
        metric_table(runs, "fpr", 4),
        "",
        f"### Recall on test anomalies at the {TARGET_FPR:.0%} threshold",
        "",
        metric_table(runs, "recall", 3),
        "",
        "### Wall time, seconds (fit + scoring calibration and test rows, summed over seeds)",
        "",
        time_table(runs),
    ]
    errors = runs[runs["error"].notna()]
    if len(errors):
        out += ["", "`*` some seeds failed; `n/a` all failed:", ""]
        out += [f"- {r.dataset} seed {r.seed} {r.method}: {r.error}" for r in errors.itertuples()]
    if not doc["complete"]:
        out += ["", f"**Partial results**: {len(runs)} runs written before the run stopped."]
    out += ["", f"Total wall time: {doc['elapsed_s'] / 60:.1f} min."]
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------- main
def _one_thread() -> None:
    torch.set_num_threads(1)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def run_unit(path: Path, seed: int, methods: list[str]) -> tuple[dict, list[dict]]:
    """Every method of ``methods`` on one dataset's split for one seed."""
    data = _adbench.load(path)
    split = _adbench.split(data, seed)
    sizes = {
        "n_train": len(split.X_train),
        "n_cal": len(split.X_cal),
        "n_test": len(split.y_test),
        "n_test_anomalies": int(split.y_test.sum()),
    }
    info_set = {
        "dataset": data.name,
        "rows": len(data.y),
        "features": data.X.shape[1],
        "anomalies": int(data.y.sum()),
        **sizes,
    }
    records = []
    for method in methods:
        record = {"dataset": data.name, "seed": seed, "method": method, **sizes}
        try:
            scores = (
                run_ours(OURS[method], split, seed)
                if method in OURS
                else run_pyod(method, split, seed)
            )
            record |= evaluate(scores, split.y_test)
            record["error"] = None
            print(
                f"{data.name} seed {seed} {method}: AUROC {record['auroc']:.3f} "
                f"AUPRC {record['auprc']:.3f} FPR {record['fpr']:.4f} "
                f"recall {record['recall']:.3f} "
                f"({record['fit_s']:.1f}s + {record['score_s']:.1f}s)",
                file=sys.stderr,
                flush=True,
            )
        except Exception as exc:  # one failing run must not lose the others
            traceback.print_exc()
            record["error"] = f"{type(exc).__name__}: {exc}"
            print(f"{data.name} seed {seed} {method}: FAILED", file=sys.stderr, flush=True)
        records.append(record)
    return info_set, records


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/adbench", help="folder of .npz sets")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", help="set names, e.g. cardio (default: all)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--out", type=Path, help="write every run's results here as JSON")
    parser.add_argument(
        "--jobs", type=int, default=2, help="processes, each running one (dataset, seed)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in the --out file and run only the missing ones",
    )
    parser.add_argument(
        "--report", type=Path, metavar="JSON", help="print the report of a saved --out file, exit"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.report:
        print(report(json.loads(args.report.read_text())), end="")
        return
    try:
        paths = _adbench.find_datasets(args.data, args.datasets)
    except ValueError as exc:
        sys.exit(str(exc))
    info = machine_info()
    started = time.perf_counter()
    sets: list[dict] = []
    records: list[dict] = []
    if args.resume and args.out and args.out.exists():
        previous = json.loads(args.out.read_text())
        key = "anomaly source sha256"
        sets, records = previous["datasets"], previous["runs"]
        if previous["machine"].get(key) != info[key]:
            # The peers' runs do not depend on our code; ours are run again.
            records = [r for r in records if r["method"] not in OURS]
            print(f"{args.out}: anomaly's code changed; its runs are redone", file=sys.stderr)
        started -= previous["elapsed_s"]  # the total wall time covers every sitting
        print(f"resuming: {len(records)} runs kept from {args.out}", file=sys.stderr)
    kept = {(r["dataset"], r["seed"], r["method"]) for r in records}
    units = [(path, seed) for path in paths for seed in args.seeds]
    todo = [(p, s, [m for m in args.methods if (_adbench.dataset_name(p), s, m) not in kept])
            for p, s in units]  # fmt: skip
    # One process per (dataset, seed), each with one torch thread: every method gets the same
    # share of the machine, and the cores are kept busy.
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=_one_thread) as pool:
        futures = [pool.submit(run_unit, p, s, methods) for p, s, methods in todo if methods]
        for future in as_completed(futures):
            info_set, new_records = future.result()
            if not any(x["dataset"] == info_set["dataset"] for x in sets):
                sets.append(info_set)
            records.extend(new_records)
            if args.out:
                write_json(args.out, results(args, info, sets, records, started, complete=False))
    for path, seed in units:  # sets whose runs were all kept still need their sizes
        name = _adbench.dataset_name(path)
        if not any(x["dataset"] == name for x in sets):
            sets.append(run_unit(path, seed, [])[0])
    sets.sort(key=lambda x: x["dataset"])
    doc = results(args, info, sets, records, started, complete=True)
    if args.out:
        write_json(args.out, doc)
    print(report(doc), end="")


def results(
    args: argparse.Namespace,
    info: dict,
    sets: list[dict],
    records: list[dict],
    started: float,
    *,
    complete: bool,
) -> dict:
    """Everything the report needs, as plain data (what ``--out`` writes)."""
    return {
        "benchmark": "quality",
        "command": command_line(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "complete": complete,
        "elapsed_s": time.perf_counter() - started,
        "machine": info,
        "target_fpr": TARGET_FPR,
        "max_rows": _adbench.MAX_ROWS,
        "seeds": args.seeds,
        "inputs": INPUTS,
        "datasets": sets,
        "runs": records,
    }


def write_json(path: Path, doc: dict) -> None:
    """Write atomically, so a run stopped mid-write leaves the previous complete file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    main()
