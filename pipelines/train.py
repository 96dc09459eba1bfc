"""Training for schedulers: fit a detector on a CSV of normal rows and save it.

    python -m pipelines.train --data NORMAL.csv (--out MODEL_DIR | --register NAME) [--model vae]
        [--exclude COL ...] [--target-fpr 0.01] [--device auto]

With --register, the run and the model go to MLflow (MLFLOW_TRACKING_URI, or ./mlflow.db).
Under torchrun (`torchrun --nproc-per-node N -m pipelines.train ...`) the processes train one
model together, data-parallel; the first saves and registers it. torchrun itself exits 1 when
a process fails, whatever the process's code below.

Exit codes: 0 trained, 2 bad input (the reason on stderr), 75 the MLflow server unreachable
or failing (retry), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from anomaly import AnomalyError, Detector, registry
from anomaly.data import read_csv
from anomaly.persistence import check_target
from anomaly.training import this_process
from pipelines import stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CSV of normal rows")
    parser.add_argument("--out", help="model directory to write")
    parser.add_argument("--register", metavar="NAME", help="log to MLflow and register as NAME")
    parser.add_argument("--model", default="vae", choices=["ae", "vae", "linear"])
    parser.add_argument("--exclude", action="append", default=[], help="column to ignore")
    parser.add_argument("--target-fpr", type=float, default=0.01)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.out is None and args.register is None:
        parser.error("give --out, --register, or both")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        main = this_process().is_main  # under torchrun the first process speaks for all
        if not main:
            logging.getLogger().setLevel(logging.ERROR)
        # Whatever would refuse the result is asked before training, not after it.
        if args.out:
            check_target(args.out)
        if args.register and main:
            registry.check_store()
        detector = Detector(
            model=args.model, exclude=args.exclude, target_fpr=args.target_fpr,
            device=args.device,
        ).fit(frame := read_csv(args.data))  # fmt: skip
        if not main:  # every process holds the same model
            return 0
        if args.out:
            detector.save(args.out)
        if args.register:
            logged = registry.log_detector(
                detector,
                register=args.register,
                sample=frame,
                data_source=str(Path(args.data).resolve()),
            )
            logging.info("registered %s version %s", args.register, logged.version)
    except (AnomalyError, OSError) as exc:
        return stopped(exc)
    logging.info("trained %s; threshold %.6g", args.model, detector.threshold_)
    return 0


if __name__ == "__main__":
    sys.exit(main())
