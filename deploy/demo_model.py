"""Register a demo model when NAME has no champion yet, so that a new stack has one to serve.

    python deploy/demo_model.py --name NAME --data-dir DIR [--rows 4000] [--epochs 20]

What `deploy/local.sh up --demo` and the compose stack's `seed` service run. It trains a small
autoencoder on generated server metrics (``anomaly.datasets``), keeps the rows in
DIR/normal.csv (a retrain in ``append`` mode reads the file its champion was trained on) and
registers the model in MLflow (``MLFLOW_TRACKING_URI``); the first version of a name becomes
champion. When NAME already has a champion it does nothing, so a stack can run it on every start.

Exit codes: 0 registered or already there, 2 the registry or the data refused, 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from anomaly import AnomalyError, Detector, registry
from anomaly.datasets import make_service_metrics

EXCLUDE = ["host_id", "timestamp", "label"]  # an identifier, a time, the generator's truth


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True, help="registered model name")
    parser.add_argument("--data-dir", required=True, type=Path, help="where normal.csv goes")
    parser.add_argument("--rows", type=int, default=4000, help="normal rows to train on")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        if any(m["name"] == args.name and registry.CHAMPION in m["aliases"]
               for m in registry.list_models()):  # fmt: skip
            logging.info("%s already has a champion; nothing to do", args.name)
            return 0
        args.data_dir.mkdir(parents=True, exist_ok=True)
        data = args.data_dir / "normal.csv"
        frame = make_service_metrics(args.rows, seed=0)
        frame.to_csv(data, index=False)
        detector = Detector(model="ae", exclude=EXCLUDE, epochs=args.epochs, seed=0).fit(frame)
        logged = registry.log_detector(
            detector, register=args.name, sample=frame, data_source=str(data.resolve())
        )
    except AnomalyError as exc:
        logging.error("%s", exc)
        return 2
    logging.info("registered %s version %s (aliases: %s)", args.name, logged.version,
                 ", ".join(logged.aliases) or "none")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
