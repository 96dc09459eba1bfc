"""Batch scoring for schedulers (cron, Airflow, a Kubernetes Job).

    python -m pipelines.batch_score --model URI --input IN.csv --output OUT.csv [--device cpu]

URI: a model directory, models:/NAME@ALIAS, models:/NAME/VERSION, models:/MODEL_ID or
runs:/RUN_ID/model.

Exit codes: 0 scored, 2 bad input or model (the reason on stderr), 75 the MLflow server
unreachable or failing (retry), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys

from anomaly import AnomalyError
from anomaly.batch import score_csv
from anomaly.registry import load_detector
from pipelines import stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory or MLflow model URI")
    parser.add_argument("--input", required=True, help="CSV to score")
    parser.add_argument("--output", required=True, help="CSV to write (atomically)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        detector = load_detector(args.model, device=args.device)
        summary = score_csv(detector, args.input, args.output, progress=False)
    except (AnomalyError, OSError) as exc:
        return stopped(exc)
    logging.info(
        "scored %d rows, flagged %d, in %.1f s -> %s",
        summary.rows, summary.flagged, summary.seconds, summary.output,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
