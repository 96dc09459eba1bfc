"""Training for schedulers: fit a detector on a CSV of normal rows and save it.

    python -m pipelines.train --data NORMAL.csv --out MODEL_DIR [--model ae] [--exclude COL ...]

Exit codes: 0 trained, 2 bad input (the reason on stderr), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys

from anomaly import AnomalyError, Detector
from anomaly.data import read_csv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CSV of normal rows")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--model", default="ae", choices=["ae", "vae", "linear"])
    parser.add_argument("--exclude", action="append", default=[], help="column to ignore")
    parser.add_argument("--target-fpr", type=float, default=0.01)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        detector = Detector(
            model=args.model, exclude=args.exclude, target_fpr=args.target_fpr,
            device=args.device,
        ).fit(read_csv(args.data))  # fmt: skip
        detector.save(args.out)
    except AnomalyError as exc:
        logging.error("%s", exc)
        return 2
    logging.info("trained %s; threshold %.6g; saved to %s", args.model, detector.threshold_,
                 args.out)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
