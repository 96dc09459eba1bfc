"""Retraining: a challenger trained on new normal data, a gate against the champion, and the
decision, all recorded in MLflow.

    champion (models:/NAME@champion) ──┐
    new normal rows ── holdout ────────┼── gate: FPR at each one's threshold, score shift,
                    └─ train → challenger ┘        AUROC/AUPRC with labelled anomalies
                                                  → promote (champion → challenger,
                                                    previous → old champion) or keep

The challenger is always registered (alias ``challenger``), so a refused one can be inspected
and promoted by hand; ``champion`` moves only when every rule passes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from anomaly import registry
from anomaly.data.tabular import TabularSchema, read_csv
from anomaly.detector import Detector
from anomaly.errors import InputError

MODES = ("fresh", "finetune", "append")
CHALLENGER = "challenger"


class SchemaMismatch(InputError):
    """New data that the champion's clients could not send: a trained column gone or changed."""


@dataclass
class GateRules:
    """When a challenger may replace the champion.

    max_fpr_ratio : the challenger's false-positive rate on the holdout of new normal rows must
        not exceed this multiple of its target (its threshold holds on data it never saw).
    max_auroc_drop, max_auprc_drop : with labelled anomalies, how far below the champion's the
        challenger's AUROC and AUPRC may be.
    """

    max_fpr_ratio: float = 2.0
    max_auroc_drop: float = 0.01
    max_auprc_drop: float = 0.05


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


def compare_schema(champion: Detector, frame: pd.DataFrame) -> SchemaReport:
    """How ``frame``'s columns differ from what ``champion`` reads."""
    schema = champion.schema_
    report = SchemaReport()
    report.removed = [c for c in schema.names if c not in frame.columns]
    known = set(schema.names) | set(schema.ignored)
    report.added = [c for c in frame.columns if c not in known]
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
    new_data: pd.DataFrame,
    *,
    mode: str = "fresh",
    holdout: float = 0.2,
    anomalies: pd.DataFrame | None = None,
    rules: GateRules | None = None,
    epochs: int | None = None,
    data_source: str | None = None,
    seed: int = 0,
    progress: bool = False,
) -> RetrainResult:
    """Train a challenger for ``models:/NAME@champion`` on ``new_data``, gate it, decide.

    Parameters
    ----------
    mode : {"fresh", "finetune", "append"}
        ``fresh``: the champion's settings, new weights. ``finetune``: continue from the
        champion's weights, schema and preprocessing. ``append``: fresh on the champion's
        training data (the file its run names) plus the new rows.
    holdout : float
        Share of ``new_data`` kept for the gate, never trained on.
    anomalies : DataFrame, optional
        Labelled anomalies: the gate then compares AUROC and AUPRC as well.

    Raises
    ------
    SchemaMismatch
        Before any training, when the new data lacks a column the champion reads or a column
        changed kind. Nothing is registered.
    """
    if mode not in MODES:
        raise InputError(f"unknown mode {mode!r}; choose one of {MODES}")
    if not 0.0 < holdout < 1.0:
        raise InputError(f"holdout must be in (0, 1), got {holdout}")
    rules = rules or GateRules()
    champion_ref = registry.resolve(f"models:/{name}@{registry.CHAMPION}")
    champion = Detector.load(champion_ref.path)
    report = compare_schema(champion, new_data)
    if not report.compatible:
        raise SchemaMismatch(
            f"new data does not fit {name} v{champion_ref.version}: " + "; ".join(report.lines())
        )
    if anomalies is not None:
        missing = [c for c in champion.schema_.names if c not in anomalies.columns]
        if missing:
            raise InputError(f"anomalies: missing column {missing[0]!r}", column=missing[0])

    order = np.random.default_rng(seed).permutation(len(new_data))
    n_holdout = max(1, round(holdout * len(new_data)))
    held_out = new_data.iloc[order[:n_holdout]]
    train_rows = new_data.iloc[order[n_holdout:]]
    if mode == "append":
        train_rows = pd.concat([_champion_training_data(champion_ref), train_rows],
                               ignore_index=True)  # fmt: skip

    params = champion.get_params() | {"seed": seed, "progress": progress, "device": "auto"}
    params["exclude"] = [*champion.exclude, *report.added]
    if epochs is not None:
        params["epochs"] = epochs
    challenger = Detector(**params).fit(
        train_rows, warm_start_from=champion if mode == "finetune" else None
    )
    logged = registry.log_detector(challenger, register=name, sample=train_rows,
                                   data_source=data_source)  # fmt: skip
    registry.promote(name, logged.version, alias=CHALLENGER)

    figures = _gate_figures(champion, challenger, held_out, anomalies)
    failures, passes = _apply(rules, figures, challenger.target_fpr, anomalies is not None)
    if not failures:
        promoted, now = registry.promote_if_champion(name, logged.version, champion_ref.version)
        if not promoted:
            failures.append(
                f"failed: the champion changed during this retrain (v{champion_ref.version} -> "
                f"v{now}); the gate compared against v{champion_ref.version}: retrain again"
            )
    promoted = not failures
    reasons = failures + passes
    if anomalies is None:
        reasons.append("no labelled anomalies given: detection quality was not compared")
    registry.log_gate(
        logged.run_id,
        promoted=promoted,
        reasons=reasons,
        figures=figures,
        rules=vars(rules) | {"mode": mode, "holdout": holdout},
        schema_notes=report.lines(),
        champion_version=champion_ref.version,
    )
    return RetrainResult(promoted, reasons, figures, report, str(champion_ref.version),
                         str(logged.version), logged.run_id)  # fmt: skip


def _champion_training_data(ref: registry.ModelRef) -> pd.DataFrame:
    source = registry.run_param(ref.run_id, "data") if ref.run_id else None
    if not source or not Path(source).is_file():
        raise InputError(
            f"--mode append needs the champion's training data, but its run names "
            f"{source!r}, which is not a readable file here; use --mode fresh or finetune"
        )
    return read_csv(source)


def _gate_figures(
    champion: Detector, challenger: Detector, held_out: pd.DataFrame, anomalies: pd.DataFrame | None
) -> dict[str, float]:
    from scipy.stats import ks_2samp
    from sklearn.metrics import average_precision_score, roc_auc_score

    figures: dict[str, float] = {"holdout_rows": float(len(held_out))}
    for role, detector in (("champion", champion), ("challenger", challenger)):
        normal = detector.score_samples(held_out)
        figures[f"{role}_fpr"] = float(np.mean(normal > detector.threshold_))
        # How far new normal scores moved from the scores the threshold was calibrated on.
        figures[f"{role}_score_shift_ks"] = float(
            ks_2samp(detector.calibrator_.scores_, normal).statistic
        )
        if anomalies is not None:
            scores = np.concatenate([normal, detector.score_samples(anomalies)])
            labels = np.r_[np.zeros(len(normal)), np.ones(len(anomalies))]
            figures[f"{role}_auroc"] = float(roc_auc_score(labels, scores))
            figures[f"{role}_auprc"] = float(average_precision_score(labels, scores))
            figures[f"{role}_recall"] = float(np.mean(scores[len(normal) :] > detector.threshold_))
    return figures


def _apply(rules: GateRules, f: dict, target_fpr: float, labelled: bool) -> tuple[list, list]:
    failures, passes = [], []

    def check(ok: bool, text: str) -> None:
        (passes if ok else failures).append(("passed: " if ok else "failed: ") + text)

    limit = rules.max_fpr_ratio * target_fpr
    check(f["challenger_fpr"] <= limit,
          f"challenger FPR on the holdout {f['challenger_fpr']:.4f} <= {limit:.4f} "
          f"({rules.max_fpr_ratio:g} x target {target_fpr:g}); champion's is "
          f"{f['champion_fpr']:.4f}")  # fmt: skip
    if labelled:
        check(f["challenger_auroc"] >= f["champion_auroc"] - rules.max_auroc_drop,
              f"challenger AUROC {f['challenger_auroc']:.4f} >= champion's "
              f"{f['champion_auroc']:.4f} - {rules.max_auroc_drop:g}")  # fmt: skip
        check(f["challenger_auprc"] >= f["champion_auprc"] - rules.max_auprc_drop,
              f"challenger AUPRC {f['challenger_auprc']:.4f} >= champion's "
              f"{f['champion_auprc']:.4f} - {rules.max_auprc_drop:g}")  # fmt: skip
    return failures, passes
