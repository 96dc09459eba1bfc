"""Retraining: a challenger trained on new normal data, a gate against the champion, and the
decision, all recorded in MLflow.

    champion (models:/NAME@champion) ──┐
    new normal rows ── holdout ────────┼── gate: FPR at each one's threshold, score shift,
                    └─ train → challenger ┘        AUROC/AUPRC with labelled anomalies
                                                  → promote (champion → challenger,
                                                    previous → old champion) or keep

Tables, time series and images retrain alike. The holdout of a table or of images is a random
share of the new data; a time series' is the last share of each series in time, so the gate
sees what comes after the challenger's training data, as in production (its points are scored
by the windows inside the holdout).

The challenger is always registered (alias ``challenger``), so a refused one can be inspected
and promoted by hand; ``champion`` moves only when every rule passes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly import registry
from anomaly.data.images import ImageSource, load_images
from anomaly.data.tabular import TabularSchema, in_file, read_csv
from anomaly.detector import Detector
from anomaly.errors import AnomalyError, InputError, PromotionLocked, RegistryError
from anomaly.image import ImageDetector
from anomaly.persistence import load_detector_dir
from anomaly.sequence import SequenceDetector
from anomaly.training import this_process

log = logging.getLogger(__name__)

AnyDetector = Detector | SequenceDetector | ImageDetector
NewData = pd.DataFrame | ImageSource  # rows of a table or series, or images

MODES = ("fresh", "finetune", "append")
CHALLENGER = "challenger"


class SchemaMismatch(InputError):
    """New data that the champion's clients could not send: a trained column gone or changed."""


@dataclass
class GateRules:
    """When a challenger may replace the champion.

    max_fpr_ratio : the challenger's false-positive rate on the holdout of new normal rows must
        not be above this multiple of its target (its threshold holds on data it never saw)...
    fpr_significance : ...beyond what chance explains on a holdout of that size: refused when
        a model whose rate were that limit would flag as many holdout rows as the challenger
        did, or more, with a probability below this (a one-sided binomial test). Against a 2%
        limit it refuses from 3 flagged of 40 held-out images, 6 of 100, 29 of 1,000 and 224
        of 10,000 (2.24%): a small holdout cannot tell a 2% model from a 4% one. A time
        series' point scores average the windows over them, so one excursion flags a window's
        worth of neighbours: there flags and points are counted per window.
    max_auroc_drop, max_auprc_drop : with labelled anomalies, how far below the champion's the
        challenger's AUROC and AUPRC may be.
    """

    max_fpr_ratio: float = 2.0
    fpr_significance: float = 0.05
    max_auroc_drop: float = 0.01
    max_auprc_drop: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.fpr_significance < 1.0:
            raise InputError(f"fpr_significance must be in (0, 1), got {self.fpr_significance}")
        if not self.max_fpr_ratio > 0:
            raise InputError(f"max_fpr_ratio must be positive, got {self.max_fpr_ratio}")


@dataclass
class SchemaReport:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)  # "cpu: numeric -> categorical"
    new_categories: dict[str, list[str]] = field(default_factory=dict)

    @property
    def compatible(self) -> bool:
        return not self.removed and not self.changed

    def lines(self) -> list[str]:
        out = [f"column {c!r} is gone" for c in self.removed]
        out += [f"column {c} changed kind" for c in self.changed]
        out += [f"column {c!r} is new; it is not used (the model keeps its inputs)"
                for c in self.added]  # fmt: skip
        out += [f"column {c!r} has new levels: {', '.join(map(repr, levels[:5]))}"
                + (f" and {len(levels) - 5} more" if len(levels) > 5 else "")
                for c, levels in self.new_categories.items()]  # fmt: skip
        return out


@dataclass
class RetrainResult:
    promoted: bool
    reasons: list[str]
    figures: dict[str, float]
    schema: SchemaReport
    champion_version: str
    challenger_version: str
    run_id: str


def compare_schema(champion: Detector | SequenceDetector, frame: pd.DataFrame) -> SchemaReport:
    """How ``frame``'s columns differ from what ``champion`` reads."""
    schema = champion.schema_
    report = SchemaReport()
    report.removed = [c for c in schema.names if c not in frame.columns]
    if champion.kind == "sequence":  # it reads only its own columns; values are checked as read
        return report
    report.added = [c for c in frame.columns if c not in set(schema.names) | set(schema.ignored)]
    present = [c for c in schema.names if c in frame.columns]
    if present:
        fresh = TabularSchema.infer(frame[present], max_categories=champion.max_categories)
        by_name = {c.name: c for c in fresh.columns}
        for old in schema.columns:
            new = by_name.get(old.name)
            if new is None:
                continue
            if new.kind != old.kind:
                report.changed.append(f"{old.name!r}: {old.kind} -> {new.kind}")
            elif old.kind == "categorical":
                levels = [v for v in new.categories if v not in set(old.categories)]
                if levels:
                    report.new_categories[old.name] = levels
    return report


def retrain(
    name: str,
    new_data: NewData | str | Path,
    *,
    mode: str = "fresh",
    holdout: float = 0.2,
    anomalies: NewData | str | Path | None = None,
    rules: GateRules | None = None,
    epochs: int | None = None,
    data_source: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> RetrainResult:
    """Train a challenger for ``models:/NAME@champion`` on ``new_data``, gate it, decide.

    The champion is a table, time-series or image model; the challenger is of the same kind
    and settings.

    Parameters
    ----------
    new_data : DataFrame, images, or a path
        New normal data: rows of a table, points of time series (any order), or images (a
        folder, files or an array, as :func:`anomaly.data.images.load_images` reads). A path
        is read as the champion's kind reads: a CSV file, or images. It is then the
        ``data_source`` recorded, unless one is given.
    mode : {"fresh", "finetune", "append"}
        ``fresh``: the champion's settings, new weights. ``finetune``: continue from the
        champion's weights, schema and preprocessing. ``append``: fresh on the champion's
        training data (the file its run names) plus the new rows.
    holdout : float
        Share of ``new_data`` kept for the gate, never trained on: random rows of a table, the
        last share in time of each series.
    anomalies : DataFrame, images, or a path, optional
        Labelled anomalies, in the form of ``new_data``: the gate then compares AUROC and
        AUPRC as well. For a time series, stretches of series known to be anomalous
        (incidents): each of their scored points counts as an anomaly.

    Raises
    ------
    SchemaMismatch
        Before any training, when the new data lacks a column the champion reads or a column
        changed kind. Nothing is registered.
    InputError
        Before any training, too, when the gate could not score the holdout or the anomalies
        (a time series with no gap-free stretch of one window), or when appended points of a
        series do not come after the champion's.
    """
    if this_process().world > 1:  # each process would gate, register and promote its own
        raise AnomalyError(
            "retrain runs in one process; run it without torchrun (train a model under "
            "torchrun with `anomaly train --register`, then promote it)"
        )
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {MODES}")
    if not 0.0 < holdout < 1.0:
        raise InputError(f"holdout must be in (0, 1), got {holdout}")
    rules = rules or GateRules()
    champion_ref = registry.resolve(f"models:/{name}@{registry.CHAMPION}")
    champion = load_detector_dir(champion_ref.path)
    path = Path(new_data) if isinstance(new_data, str | Path) else None
    if path is not None and data_source is None:
        data_source = str(path.resolve())
    new_data = _read(champion, new_data)
    anomalies = None if anomalies is None else _read(champion, anomalies)
    report = SchemaReport()  # images are resized to the model's size: nothing to compare
    if champion.kind != "image":
        report = compare_schema(champion, new_data)
        if not report.compatible:
            raise SchemaMismatch(
                f"new data does not fit {name} v{champion_ref.version}: "
                + "; ".join(report.lines())
            )
        if anomalies is not None:
            missing = [c for c in champion.schema_.names if c not in anomalies.columns]
            if missing:
                raise InputError(f"anomalies: missing column {missing[0]!r}", column=missing[0])
            unknown = compare_schema(champion, anomalies).added
            if unknown:  # a labelled file given whole: its normal rows would count as anomalies
                log.warning(
                    "anomalies: every row counts as an anomaly; the model does not read %s",
                    ", ".join(map(repr, unknown)),
                )
    if champion.kind == "sequence":  # a bad value named by its row in the data, not the part
        try:
            champion.schema_.parse(new_data)
        except InputError as exc:
            raise (exc if path is None else in_file(exc, path)) from None

    train_rows, held_out = _split_holdout(champion, new_data, holdout, seed)
    # Scored first: data the gate cannot score stops the retrain before anything is trained.
    champion_scores = _scores(champion, held_out, anomalies)
    if mode == "append":
        earlier = _read(champion, _champion_data_source(champion_ref))
        overlap = champion.kind == "sequence" and champion.schema_.first_overlap(
            earlier, train_rows
        )
        if overlap:
            series, start, end = overlap
            which = f"series {series!r}" if champion.schema_.series else "the series"
            raise InputError(
                f"--mode append: the new points of {which} start at {start}, not "
                f"after the champion's training data, which ends at {end}; give only later "
                "points, or use --mode fresh"
            )
        train_rows = _concat(earlier, train_rows)

    params = champion.get_params() | {"seed": seed, "progress": progress, "device": "auto"}
    if champion.kind == "sequence":  # the same value columns, whatever else the data holds
        params["value_cols"], params["exclude"] = list(champion.schema_.values), ()
    elif champion.kind == "tabular":  # the champion's columns, none it ignored or never saw
        reads = set(champion.schema_.names)
        params["exclude"] = [c for c in train_rows.columns if c not in reads]
    if epochs is not None:
        params["epochs"] = epochs
    challenger = type(champion)(**params).fit(
        train_rows, warm_start_from=champion if mode == "finetune" else None
    )
    sample = train_rows if isinstance(train_rows, pd.DataFrame) else None
    logged = registry.log_detector(challenger, register=name, sample=sample,
                                   data_source=data_source)  # fmt: skip
    registry.promote(name, logged.version, alias=CHALLENGER)

    try:
        challenger_scores = _scores(challenger, held_out, anomalies)
    except InputError as exc:  # e.g. it splits series at gaps the champion did not see
        figures = {"holdout_rows": float(len(held_out))}
        failures, passes = [f"failed: the challenger could not score the gate's data: {exc}"], []
    else:
        scores = {"champion": champion_scores, "challenger": challenger_scores}
        figures = _gate_figures(champion, challenger, scores, len(held_out))
        failures, passes = apply_rules(rules, figures, challenger.target_fpr)
    if not failures:
        try:
            promoted, now = registry.promote_if_champion(name, logged.version, champion_ref.version)
        except PromotionLocked as exc:
            failures.append(f"failed: {exc}: retrain again once it is done")
        else:
            if not promoted:
                failures.append(
                    f"failed: the champion changed during this retrain (v{champion_ref.version} "
                    f"-> v{now}); the gate compared against v{champion_ref.version}: retrain again"
                )
    promoted = not failures
    reasons = failures + passes
    if anomalies is None:
        reasons.append("no labelled anomalies given: detection quality was not compared")
    if "challenger_score_shift_ks" in figures:  # no rule: how far new data moved the scores
        reasons.append(
            "reported: score shift (KS between calibration and holdout scores): champion "
            f"{figures['champion_score_shift_ks']:.4f}, challenger "
            f"{figures['challenger_score_shift_ks']:.4f}"
        )
    try:
        registry.log_gate(
            logged.run_id,
            promoted=promoted,
            reasons=reasons,
            figures=figures,
            rules=vars(rules) | {"mode": mode, "holdout": holdout},
            schema_notes=report.lines(),
            champion_version=champion_ref.version,
        )
    except (RegistryError, OSError) as exc:  # an artifact store's own error, too
        # The decision stands (the aliases say it): failing now would have a scheduler retry,
        # retraining against a champion this run may have just promoted.
        log.warning("the gate's record was not logged to run %s: %s", logged.run_id, exc)
        reasons.append(f"the gate's record was not logged to run {logged.run_id}: {exc}")
    return RetrainResult(promoted, reasons, figures, report, str(champion_ref.version),
                         str(logged.version), logged.run_id)  # fmt: skip


def _read(champion: AnyDetector, data: NewData | str | Path) -> pd.DataFrame | np.ndarray:
    """Data as the champion's kind takes it: a DataFrame, or an array of images."""
    if champion.kind == "image":
        return load_images(data, champion.image_size_, champion.channels)[0]
    if isinstance(data, str | Path):  # as the champion's batch scorer reads the file
        if champion.kind == "tabular":
            return read_csv(data, schema=champion.schema_)
        return read_csv(data, as_text=champion.schema_.text_columns)
    if not isinstance(data, pd.DataFrame):
        raise InputError(f"expected a DataFrame or a CSV path, got {type(data).__name__}")
    return data


def _split_holdout(
    champion: AnyDetector, new_data: pd.DataFrame | np.ndarray, holdout: float, seed: int
) -> tuple:
    """(data to train on, data held out for the gate)."""
    if champion.kind != "sequence":
        order = np.random.default_rng(seed).permutation(len(new_data))
        n_holdout = max(1, round(holdout * len(new_data)))
        return _take(new_data, order[n_holdout:]), _take(new_data, order[:n_holdout])
    return champion.schema_.split_in_time(new_data, holdout)


def _take(data: pd.DataFrame | np.ndarray, idx: np.ndarray) -> pd.DataFrame | np.ndarray:
    return data.iloc[idx] if isinstance(data, pd.DataFrame) else data[np.sort(idx)]


def _concat(old: pd.DataFrame | np.ndarray, new: pd.DataFrame | np.ndarray):
    if isinstance(old, pd.DataFrame):
        return pd.concat([old, new], ignore_index=True)
    return np.concatenate([old, new])


def _champion_data_source(ref: registry.ModelRef) -> str:
    source = registry.run_param(ref.run_id, "data") if ref.run_id else None
    if not source or not Path(source).exists():
        raise InputError(
            f"--mode append needs the champion's training data, but its run names "
            f"{source!r}, which is not readable here; use --mode fresh or finetune"
        )
    return source


@dataclass
class _Scores:
    """One model's scores of the holdout (normal) and of the labelled anomalies, if any."""

    normal: np.ndarray
    anomalies: np.ndarray | None


def _scores(detector: AnyDetector, held_out, anomalies) -> _Scores:
    normal = _scored(detector, held_out, "the holdout", "give more data or a larger holdout")
    if anomalies is None:
        return _Scores(normal, None)
    return _Scores(normal, _scored(detector, anomalies, "the anomalies", "give longer stretches"))


def _scored(detector: AnyDetector, data, what: str, remedy: str) -> np.ndarray:
    """Scores of ``data``; a time series' points that no window covers have none."""
    scores = detector.score_samples(data)
    if detector.kind != "sequence":
        if len(scores) == 0:
            raise InputError(f"{what}: nothing to score")
        return scores
    scores = scores[~np.isnan(scores)]
    if len(scores) == 0:
        raise InputError(
            f"no point of {what} can be scored: no stretch of a series there, between gaps, "
            f"holds one window ({detector.window} points); {remedy}"
        )
    return scores


def _gate_figures(
    champion: AnyDetector, challenger: AnyDetector, scores: dict[str, _Scores], n_holdout: int
) -> dict[str, float]:
    from scipy.stats import ks_2samp
    from sklearn.metrics import average_precision_score, roc_auc_score

    figures: dict[str, float] = {"holdout_rows": float(n_holdout)}
    if champion.kind == "sequence":  # a point's score averages the windows over it
        figures["score_span"] = float(champion.window)
    for role, detector in (("champion", champion), ("challenger", challenger)):
        normal, flagged = scores[role].normal, scores[role].anomalies
        false_positive = normal > detector.threshold_
        figures["holdout_scored"] = float(len(normal))  # a series' too short stretches: none
        figures[f"{role}_false_positives"] = float(false_positive.sum())
        figures[f"{role}_fpr"] = float(false_positive.mean())
        # How far new normal scores moved from the scores the threshold was calibrated on.
        figures[f"{role}_score_shift_ks"] = float(
            ks_2samp(detector.calibrator_.scores_, normal).statistic
        )
        if flagged is not None:
            both = np.concatenate([normal, flagged])
            labels = np.r_[np.zeros(len(normal)), np.ones(len(flagged))]
            figures[f"{role}_auroc"] = float(roc_auc_score(labels, both))
            figures[f"{role}_auprc"] = float(average_precision_score(labels, both))
            figures[f"{role}_recall"] = float(np.mean(flagged > detector.threshold_))
    return figures


def apply_rules(rules: GateRules, f: dict[str, float], target_fpr: float) -> tuple[list, list]:
    """The gate's verdicts on the figures of a retrain: (failed rules, passed rules), each a
    line saying what was compared. AUROC and AUPRC are compared when ``f`` has them."""
    from scipy.stats import binom

    failures, passes = [], []

    def check(ok: bool, text: str) -> None:
        (passes if ok else failures).append(("passed: " if ok else "failed: ") + text)

    limit = min(rules.max_fpr_ratio * target_fpr, 1.0)
    k, n = int(f["challenger_false_positives"]), int(f["holdout_scored"])
    counted = f"{k} of {n}"
    span = int(f.get("score_span", 1))
    if span > 1:  # a series' neighbouring point scores share windows: one flag in ~span counts
        k, n = math.ceil(k / span), max(1, n // span)
        counted += f", counted as {k} of {n} windows of {span} points"
    chance = float(binom.sf(k - 1, n, limit))  # P(at least k of n flagged at the limit's rate)
    check(chance >= rules.fpr_significance,
          f"challenger FPR on the holdout {f['challenger_fpr']:.4f} ({counted}) vs "
          f"{limit:.4f} ({rules.max_fpr_ratio:g} x target {target_fpr:g}): a model at that "
          f"rate flags as many with probability {chance:.3g} "
          f"({'>=' if chance >= rules.fpr_significance else '<'} {rules.fpr_significance:g}); "
          f"champion's FPR is {f['champion_fpr']:.4f}")  # fmt: skip
    if "challenger_auroc" in f:
        check(f["challenger_auroc"] >= f["champion_auroc"] - rules.max_auroc_drop,
              f"challenger AUROC {f['challenger_auroc']:.4f} >= champion's "
              f"{f['champion_auroc']:.4f} - {rules.max_auroc_drop:g}")  # fmt: skip
        check(f["challenger_auprc"] >= f["champion_auprc"] - rules.max_auprc_drop,
              f"challenger AUPRC {f['challenger_auprc']:.4f} >= champion's "
              f"{f['champion_auprc']:.4f} - {rules.max_auprc_drop:g}")  # fmt: skip
    return failures, passes
