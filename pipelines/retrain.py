"""Retraining for schedulers (cron, Airflow, a Kubernetes CronJob).

    python -m pipelines.retrain --name NAME --data NEW_NORMAL [--mode fresh|finetune|append]
        [--holdout 0.2] [--anomalies ANOMALIES] [--epochs N]

NEW_NORMAL and ANOMALIES are read as the champion reads: a CSV file of table rows or time
series, or images (a folder or array file).

Trains a challenger on the new normal rows and promotes it to ``champion`` only when it passes
the gate (see ``anomaly.retraining``). Runs and registry: ``MLFLOW_TRACKING_URI`` or ./mlflow.db.

Exit codes: 0 promoted, 3 kept the champion (the gate refused), 2 bad input (incompatible
schema, unknown model), 75 the MLflow server unreachable or failing (retry), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from anomaly import AnomalyError
from anomaly.retraining import MODES, retrain
from pipelines import stopped

PROMOTED, KEPT = 0, 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="registered model")
    parser.add_argument("--data", required=True, help="new normal data (CSV, or images)")
    parser.add_argument("--mode", default="fresh", choices=MODES)
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--anomalies", help="known anomalies for the gate, like --data")
    parser.add_argument("--epochs", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        result = retrain(
            args.name,
            Path(args.data),
            mode=args.mode,
            holdout=args.holdout,
            anomalies=Path(args.anomalies) if args.anomalies else None,
            epochs=args.epochs,
        )
    except (AnomalyError, OSError) as exc:
        return stopped(exc)
    for line in [*result.schema.lines(), *result.reasons]:
        logging.info("%s", line)
    decision = "promoted" if result.promoted else "kept the champion"
    logging.info("%s: challenger v%s, champion was v%s, run %s", decision,
                 result.challenger_version, result.champion_version, result.run_id)  # fmt: skip
    return PROMOTED if result.promoted else KEPT


if __name__ == "__main__":
    sys.exit(main())
