"""Detection quality on NAB time series: SequenceDetector vs simple window baselines.

Question: trained only on the start of each series, how well do anomaly's window autoencoders
rank the labelled anomaly windows of the Numenta Anomaly Benchmark above the rest (AUROC,
AUPRC), next to a rolling z-score, an IsolationForest and a PCA on windows; at the 1% target
false-positive rate, how many labelled windows does each flag and how many false alarms does it
raise; and how fast do ours train and score on a CPU?

Protocol (every method the same)
--------------------------------
- Data: ``DATA/data/<category>/<name>.csv`` (``timestamp,value``); a point is anomalous (label
  1) when it lies inside one of its ``DATA/labels/combined_windows.json`` windows (ends
  included).
- Rows whose timestamp repeats an earlier row's (two NAB series have a clock change; our data
  policy refuses repeated timestamps) are dropped when the series is read, for every method.
- Split: the first 15% of each series' rows is NAB's probationary period. Its points inside a
  labelled window are dropped; what is left (the *normal* probationary points) is everything a
  method may learn from. Dropping points leaves a time gap, which our gap policy
  (``anomaly.data.sequence``: a step over ``max_gap`` typical steps starts a new segment) turns
  into a segment break, so no window straddles it. The other 85% is the *test* part.
- Context: every method scores the test part with the last ``window - 1`` probationary rows
  (raw, labelled or not) put in front, so that its first points are scored with full windows;
  the context rows' results are dropped. No window straddles a segment break (same gap policy
  and the same segments for every method), so a segment's first ``window - 1`` points have no
  window ending at them.
- Ours: ``SequenceDetector(model, arch, window, hidden, epochs, patience, seed)``, the same
  parameters for every series, ``fit`` on the normal probationary points (it holds their last
  20% out for calibration, 10% before that for early stopping). Score: ``score(frame, by=...)``
  (``point``: the mean error at the point over all windows covering it, which uses up to
  ``window - 1`` later points; ``window``: the error of the window ending at the point).
  Flags: its own calibrated ``is_anomaly`` (1% target).
- Baselines, on values standardised with the mean and std of their fitting points, windows of
  the same ``window`` points, a point's score = the score of the window ending at it:
  ``zscore``: |last point - mean of the window's other points| / their std (std floored at
  1e-3), nothing fitted; ``iforest``: scikit-learn ``IsolationForest`` (100 trees,
  ``random_state=seed``), score ``-score_samples``; ``pca``: scikit-learn ``PCA`` keeping 95%
  of the variance, score = mean squared reconstruction error of the window.
  IsolationForest and PCA are fitted on the windows ending in the first 80% of the normal
  probationary points; their threshold is the conformal 99% quantile (the rule of
  ``anomaly.calibration``) of their scores of the windows ending in the last 20%, never fitted
  on. The z-score fits nothing, so every probationary window calibrates it.
- Metrics per series and method, over the test points: AUROC, AUPRC (average precision); a
  point without a score (no window ends at / covers it) gets the method's lowest test score;
  the counts are in the tables. Event recall: a labelled window (its part in the test period)
  is found when any of its points is flagged. False alarms per 1,000 normal test points.
- A method that cannot be fitted on a series (too few windows for our detector's training or
  calibration parts) scores it as a constant: AUROC 0.5, AUPRC = the positive rate, nothing
  flagged. Such fits are counted in the tables.
- Means are over the series with labelled windows. Series with none (``artificialNoAnomaly``)
  have no positives, so AUROC and AUPRC are undefined there: they get their own table of false
  alarms.
- Throughput (ours, the same runs): training windows/s = training windows x epochs run / the
  training loop's time (``training_summary_``), summed over series; scoring windows/s = windows
  scored / wall time of ``score`` (data frame in, results out), summed over series.

Run from the project root::

    .venv/bin/python -m benchmarks.nab --data ../shared/data/nab --threads 1 \\
        > bench-output/nab.md

Defaults: window 32, our models ``ae-conv``, ``vae-conv``, ``ae-gru`` with at most 50 epochs and
patience 5 (the detector's defaults, 100 and 10, about double the time for +0.01 to +0.03 mean
AUPRC), each scored both ways (``--by point,window``); 5 to 9 minutes on 2 shared CPU cores.

The Markdown report goes to stdout; progress to stderr; ``--out`` writes the per-series numbers
as JSON. Timings are wall-clock on a possibly shared machine: compare rows of one run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import sklearn
import torch
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import average_precision_score, roc_auc_score
from threadpoolctl import threadpool_limits

from anomaly.data.sequence import Segments, SequenceSchema
from anomaly.errors import InputError
from anomaly.sequence import SequenceDetector
from benchmarks._machine import cpu_summary

PROBATION = 0.15  # NAB's probationary period: the first 15% of rows
TARGET_FPR = 0.01
BASELINE_CAL = 0.2  # the last 20% of the normal probationary points calibrate the baselines
ZSCORE_STD_FLOOR = 1e-3
OURS = {
    "ae-conv": ("ae", "conv"),
    "vae-conv": ("vae", "conv"),
    "ae-gru": ("ae", "gru"),
    "vae-gru": ("vae", "gru"),
}
BASELINES = ("zscore", "iforest", "pca")
METHODS = (*OURS, *BASELINES)
DEFAULT_METHODS = ("ae-conv", "vae-conv", "ae-gru", *BASELINES)
BY = ("point", "window")


# ---------------------------------------------------------------------- data
@dataclass
class Series:
    """One NAB series, split into its probationary and test parts."""

    key: str  # "<category>/<name>.csv"
    frame: pd.DataFrame  # timestamp (str), value
    labels: np.ndarray  # (n,) bool: inside a labelled window
    windows: list[tuple[pd.Timestamp, pd.Timestamp]]
    n_prob: int  # rows in the probationary period
    n_repeated: int = 0  # rows dropped because their timestamp repeats an earlier row's

    @property
    def name(self) -> str:
        return self.key.rsplit("/", 1)[-1].removesuffix(".csv")

    def train_frame(self) -> pd.DataFrame:
        """The normal probationary points: the first 15% of rows less the labelled ones."""
        keep = ~self.labels[: self.n_prob]
        return self.frame.iloc[: self.n_prob][keep].reset_index(drop=True)

    def test_frame(self, window: int) -> tuple[pd.DataFrame, int]:
        """The test part with the last ``window - 1`` probationary rows in front, and how many
        rows of context that is."""
        start = max(0, self.n_prob - (window - 1))
        return self.frame.iloc[start:].reset_index(drop=True), self.n_prob - start

    @property
    def y_test(self) -> np.ndarray:
        return self.labels[self.n_prob :]

    def test_events(self) -> list[np.ndarray]:
        """Per labelled window, the positions (in the test part) of its test points."""
        times = pd.to_datetime(self.frame["timestamp"]).to_numpy()[self.n_prob :]
        events = []
        for start, end in self.windows:
            inside = np.flatnonzero(
                (times >= start.to_datetime64()) & (times <= end.to_datetime64())
            )
            if len(inside):
                events.append(inside)
        return events


def load_series(data: Path, contains: str | None) -> list[Series]:
    labels_path = data / "labels" / "combined_windows.json"
    if not labels_path.is_file():
        sys.exit(f"error: {labels_path} not found; pass --data the NAB folder")
    all_windows = json.loads(labels_path.read_text())
    out = []
    for path in sorted((data / "data").glob("*/*.csv")):
        key = f"{path.parent.name}/{path.name}"
        if contains and contains not in key:
            continue
        if key not in all_windows:
            print(f"  skipped {key}: no entry in the labels", file=sys.stderr)
            continue
        frame = pd.read_csv(path, dtype={"timestamp": str, "value": float})
        repeated = frame["timestamp"].duplicated()  # clock changes: our data policy refuses them
        frame = frame[~repeated].reset_index(drop=True)
        times = pd.to_datetime(frame["timestamp"]).to_numpy()
        windows = [(pd.Timestamp(a), pd.Timestamp(b)) for a, b in all_windows[key]]
        labels = np.zeros(len(frame), dtype=bool)
        for a, b in windows:
            labels |= (times >= a.to_datetime64()) & (times <= b.to_datetime64())
        n_prob = int(PROBATION * len(frame))
        out.append(Series(key, frame, labels, windows, n_prob, int(repeated.sum())))
    if not out:
        sys.exit(f"error: no series under {data / 'data'} match {contains!r}")
    return out


# ---------------------------------------------------------------------- methods
@dataclass
class Run:
    """One method on one series: test scores (NaN = unscored), flags, costs."""

    scores: np.ndarray
    flags: np.ndarray
    error: str | None = None
    stats: dict = field(default_factory=dict)


def failed(n_test: int, error: Exception) -> Run:
    return Run(np.zeros(n_test), np.zeros(n_test, dtype=bool), error=str(error))


def run_ours(
    model: str, arch: str, by_list: list[str], series: Series, args: argparse.Namespace
) -> dict[str, Run]:
    """Fit one SequenceDetector; score the test part once per ``by``."""
    n_test = len(series.y_test)
    det = SequenceDetector(
        model=model,
        arch=arch,
        window=args.window,
        hidden=args.hidden,
        epochs=args.epochs,
        patience=args.patience,
        denoise=args.denoise,
        max_gap=args.max_gap,
        seed=args.seed,
        device="cpu",
        progress=False,
    )
    started = time.perf_counter()
    try:
        det.fit(series.train_frame())
    except InputError as exc:
        return {by: failed(n_test, exc) for by in by_list}
    fit_s = time.perf_counter() - started
    frame, n_ctx = series.test_frame(args.window)
    n_windows = len(det.schema_.prepare(frame).window_starts(args.window))
    summary = det.training_summary_
    runs = {}
    for by in by_list:
        started = time.perf_counter()
        result = det.score(frame, by=by)
        score_s = time.perf_counter() - started
        stats = {
            "fit_s": fit_s,
            "train_s": summary["train_seconds"],
            "n_train": summary["n_train"],
            "epochs_run": summary["epochs_run"],
            "score_s": score_s,
            "windows_scored": n_windows,
        }
        runs[by] = Run(
            result["anomaly_score"].to_numpy(np.float64)[n_ctx:],
            result["is_anomaly"].to_numpy(bool)[n_ctx:],
            stats=stats,
        )
    return runs


def window_table(segments: Segments, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Windows (N, window * C) of ``segments`` and the sorted position each one ends at."""
    starts = segments.window_starts(window)
    x = segments.windows(starts, window)  # (N, C, W)
    return x.transpose(0, 2, 1).reshape(len(x), -1), starts + window - 1


def conformal_threshold(scores: np.ndarray, target_fpr: float = TARGET_FPR) -> float:
    """The ⌈(n+1)(1-α)⌉-th smallest score (the largest when n is too small); a score above
    it is flagged. The rule of ``anomaly.calibration.Calibrator`` (method "quantile")."""
    ordered = np.sort(np.asarray(scores, dtype=np.float64))
    rank = min(math.ceil((len(ordered) + 1) * (1.0 - target_fpr)), len(ordered))
    return float(ordered[rank - 1])


def zscore(x: np.ndarray) -> np.ndarray:
    """|last value - mean of the others| / their std, per window (one value column)."""
    past = x[:, :-1]
    return np.abs(x[:, -1] - past.mean(axis=1)) / np.maximum(past.std(axis=1), ZSCORE_STD_FLOOR)


def run_baseline(name: str, series: Series, args: argparse.Namespace) -> Run:
    """Fit a baseline on the normal probationary windows; score the test part."""
    window = args.window
    train = series.train_frame()
    schema = SequenceSchema.infer(train, timestamp="timestamp", max_gap=args.max_gap)
    seg = schema.prepare(train)
    n_fit = round((1.0 - BASELINE_CAL) * len(seg.values))
    fit_values = seg.values[:n_fit]
    mean, std = fit_values.mean(axis=0), fit_values.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    seg.values = ((seg.values - mean) / std).astype(np.float32)
    x_prob, ends = window_table(seg, window)
    is_fit = ends < n_fit
    frame, n_ctx = series.test_frame(window)
    test_seg = schema.prepare(frame)
    test_seg.values = ((test_seg.values - mean) / std).astype(np.float32)
    x_test, test_ends = window_table(test_seg, window)
    n_test = len(series.y_test)
    if is_fit.sum() < 2:
        return failed(n_test, InputError(f"{is_fit.sum()} fitting windows"))

    started = time.perf_counter()
    if name == "zscore":
        cal_scores, window_scores = zscore(x_prob), zscore(x_test)
    elif name == "iforest":
        forest = IsolationForest(random_state=args.seed).fit(x_prob[is_fit])
        cal_scores = -forest.score_samples(x_prob[~is_fit]) if (~is_fit).any() else None
        window_scores = -forest.score_samples(x_test)
    elif name == "pca":
        with np.errstate(invalid="ignore", divide="ignore"):  # a flat line has no variance
            pca = PCA(n_components=0.95, svd_solver="full").fit(x_prob[is_fit])

        def error(x: np.ndarray) -> np.ndarray:
            return ((x - pca.inverse_transform(pca.transform(x))) ** 2).mean(axis=1)

        cal_scores = error(x_prob[~is_fit]) if (~is_fit).any() else None
        window_scores = error(x_test)
    else:
        raise ValueError(f"unknown baseline {name!r}")
    seconds = time.perf_counter() - started
    if cal_scores is None:  # no window ends in the held-out part: not expected on NAB
        return failed(n_test, InputError("no calibration windows"))
    threshold = conformal_threshold(cal_scores)
    sorted_scores = np.full(len(test_seg.values), np.nan)
    sorted_scores[test_ends] = window_scores
    scores = test_seg.to_input_order(sorted_scores)[n_ctx:]
    flags = np.nan_to_num(scores, nan=-np.inf) > threshold
    return Run(scores, flags, stats={"seconds": seconds})


# ---------------------------------------------------------------------- metrics
def evaluate(series: Series, run: Run) -> dict:
    y = series.y_test
    scores = run.scores.copy()
    unscored = np.isnan(scores)
    if unscored.all():
        scores[:] = 0.0
    elif unscored.any():
        scores[unscored] = np.nanmin(scores)
    normal = ~y
    out = {
        "unscored": int(unscored.sum()),
        "false_alarms_per_1k": 1000.0 * float(run.flags[normal].sum()) / max(1, normal.sum()),
        "failed": run.error,
    }
    if y.any():
        events = series.test_events()
        found = sum(bool(run.flags[e].any()) for e in events)
        out |= {
            "auroc": float(roc_auc_score(y, scores)),
            "auprc": float(average_precision_score(y, scores)),
            "events": len(events),
            "events_found": found,
            "event_recall": found / len(events),
        }
    return out


# ---------------------------------------------------------------------- report
def method_labels(methods: list[str], by_list: list[str]) -> list[str]:
    labels = []
    for m in methods:
        if m in OURS:
            labels += [m if by == "point" else f"{m} ({by})" for by in by_list]
        else:
            labels.append(m)
    return labels


def report(results: dict, series: list[Series], labels: list[str], args, elapsed: float) -> str:
    labelled = [s for s in series if s.labels[s.n_prob :].any()]
    unlabelled = [s for s in series if not s.labels[s.n_prob :].any()]
    lines = [
        "## NAB: SequenceDetector vs rolling z-score, IsolationForest and PCA on windows\n",
        f"Command: `python -m benchmarks.nab {shlex.join(sys.argv[1:])}`\n",
        f"- {cpu_summary()}, torch threads {torch.get_num_threads()}",
        f"- Python {platform.python_version()}, torch {torch.__version__}, "
        f"scikit-learn {sklearn.__version__}",
        f"- Data: {len(series)} series, {sum(len(s.frame) for s in series):,} points; "
        f"{len(labelled)} with labelled windows in the test part, {len(unlabelled)} without. "
        f"Train: first {PROBATION:.0%} of each series less its labelled points "
        f"({sum(len(s.train_frame()) for s in series):,} points); test: the rest "
        f"({sum(len(s.y_test) for s in series):,} points, "
        f"{sum(int(s.y_test.sum()) for s in series):,} labelled anomalous)",
        "- Repeated timestamps (clock changes): every row whose timestamp repeats an earlier "
        "row's is dropped before anything else, for every method: "
        + (", ".join(f"{s.name} {s.n_repeated}" for s in series if s.n_repeated) or "none"),
        f"- Ours: window {args.window}, hidden {args.hidden}, epochs ≤ {args.epochs}, patience "
        f"{args.patience}, denoise {args.denoise}, max_gap {args.max_gap}, seed {args.seed}, "
        "otherwise SequenceDetector's defaults; the same for every series",
        f"- Baselines: windows of {args.window}; thresholds at the {TARGET_FPR:.0%} target "
        "(see the module docstring); total wall time "
        f"{elapsed / 60:.1f} min\n",
    ]

    def cell(value: float | None, fmt: str = ".3f") -> str:
        return "–" if value is None else format(value, fmt)

    lines += [
        f"**Means over the {len(labelled)} series with labelled windows** (a failed fit counts "
        "as a constant score):\n",
        "| method | AUROC | AUPRC | event recall | events found | false alarms / 1k normal "
        "| unscored test pts | failed fits |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for label in labels:
        rows = [results[s.key][label] for s in labelled]
        if not rows:
            continue
        found = sum(r["events_found"] for r in rows)
        total = sum(r["events"] for r in rows)
        lines.append(
            f"| {label} | {np.mean([r['auroc'] for r in rows]):.3f} "
            f"| {np.mean([r['auprc'] for r in rows]):.3f} "
            f"| {np.mean([r['event_recall'] for r in rows]):.3f} | {found}/{total} "
            f"| {np.mean([r['false_alarms_per_1k'] for r in rows]):.1f} "
            f"| {sum(r['unscored'] for r in rows):,} | {sum(bool(r['failed']) for r in rows)} |"
        )
    lines += [
        "",
        "**AUPRC per series** (positive rate = the AUPRC of a random score; `fail` = the "
        "method could not be fitted, scored as a constant):\n",
        "| series | test pts | positive rate | " + " | ".join(labels) + " |",
        "|---|--:|--:|" + "--:|" * len(labels),
    ]
    for s in labelled:
        cells = []
        for label in labels:
            r = results[s.key][label]
            cells.append("fail" if r["failed"] else f"{r['auprc']:.3f}")
        lines.append(
            f"| {s.name} | {len(s.y_test):,} | {s.y_test.mean():.3f} | " + " | ".join(cells) + " |"
        )
    if unlabelled:
        lines += [
            "",
            "**Series without labelled windows** (AUROC/AUPRC undefined; not in the means): "
            "false alarms per 1,000 test points\n",
            "| series | " + " | ".join(labels) + " |",
            "|---|" + "--:|" * len(labels),
        ]
        for s in unlabelled:
            cells = []
            for label in labels:
                r = results[s.key][label]
                cells.append("fail" if r["failed"] else f"{r['false_alarms_per_1k']:.1f}")
            lines.append(f"| {s.name} | " + " | ".join(cells) + " |")
    failures = [
        f"- {label} on {s.name}: {results[s.key][label]['failed']}"
        for s in series
        for label in labels
        if results[s.key][label]["failed"]
    ]
    if failures:
        lines += ["", "Failed fits:", *failures]

    ours = [label for label in labels if label.split(" ")[0] in OURS]
    if ours:
        lines += [
            "",
            f"**Throughput of ours, CPU, summed over the {len(series)} series:**\n",
            "| method | series fitted | training windows | epochs run (mean) | train loop s "
            "| train windows/s | fit s | windows scored | score s | score windows/s |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for label in ours:
            st = [results[s.key][label]["stats"] for s in series]
            st = [x for x in st if x]
            if not st:
                continue
            seen = sum(x["n_train"] * x["epochs_run"] for x in st)
            train_s = sum(x["train_s"] for x in st)
            scored = sum(x["windows_scored"] for x in st)
            score_s = sum(x["score_s"] for x in st)
            lines.append(
                f"| {label} | {len(st)} | {sum(x['n_train'] for x in st):,} "
                f"| {np.mean([x['epochs_run'] for x in st]):.1f} | {train_s:.1f} "
                f"| {seen / train_s:,.0f} | {sum(x['fit_s'] for x in st):.1f} | {scored:,} "
                f"| {score_s:.1f} | {scored / score_s:,.0f} |"
            )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("../shared/data/nab"), help="NAB folder.")
    p.add_argument("--window", type=int, default=32, help="Window length, every method.")
    p.add_argument(
        "--epochs", type=int, default=50, help="Our epochs (upper bound; the detector's is 100)."
    )
    p.add_argument(
        "--patience", type=int, default=5, help="Our early-stopping patience (the detector's: 10)."
    )
    p.add_argument("--hidden", type=int, default=32, help="Our channels / GRU state size.")
    p.add_argument("--denoise", type=float, default=0.0, help="Our training input noise.")
    p.add_argument("--max-gap", type=float, default=5.0, help="Gap policy, every method.")
    p.add_argument(
        "--methods",
        default=",".join(DEFAULT_METHODS),
        help=f"Comma-separated subset of: {', '.join(METHODS)}.",
    )
    p.add_argument(
        "--by", default="point,window", help="Our score(s), comma-separated: point, window."
    )
    p.add_argument("--series", help="Only series whose '<category>/<name>.csv' contains this.")
    p.add_argument("--threads", type=int, default=None, help="torch and BLAS threads.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="Write the per-series numbers here as JSON.")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    by_list = [b.strip() for b in args.by.split(",") if b.strip()]
    unknown = sorted(set(methods) - set(METHODS)) + sorted(set(by_list) - set(BY))
    if unknown or not methods or not by_list:
        sys.exit(f"error: unknown or missing method / by {unknown}; methods: {METHODS}, by: {BY}")
    if args.threads:
        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
    series = load_series(args.data, args.series)
    labels = method_labels(methods, by_list)
    started = time.perf_counter()

    if any(m in OURS for m in methods):  # one-off costs (thread pools, kernels) stay untimed
        SequenceDetector(epochs=1, window=args.window, device="cpu", progress=False).fit(
            series[0].frame
        )
    results: dict[str, dict[str, dict]] = {}
    for s in series:
        results[s.key] = {}
        for m in methods:
            t0 = time.perf_counter()
            if m in OURS:
                runs = run_ours(*OURS[m], by_list, s, args)
                named = {(m if by == "point" else f"{m} ({by})"): r for by, r in runs.items()}
            else:
                named = {m: run_baseline(m, s, args)}
            for label, run in named.items():
                results[s.key][label] = evaluate(s, run) | {"stats": run.stats}
            r = results[s.key][next(iter(named))]
            print(
                f"  {s.name} {m}: AUPRC {r.get('auprc', float('nan')):.3f} "
                f"({time.perf_counter() - t0:.1f} s){' FAILED' if r['failed'] else ''}",
                file=sys.stderr,
                flush=True,
            )
    elapsed = time.perf_counter() - started
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"command": sys.argv, "args": {k: str(v) for k, v in vars(args).items()}}
        args.out.write_text(json.dumps(doc | {"results": results}, indent=1, default=str))
    print(report(results, series, labels, args, elapsed), end="")


if __name__ == "__main__":
    main()
