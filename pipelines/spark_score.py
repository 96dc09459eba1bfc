"""Batch scoring on Spark, through the model's MLflow ``spark_udf``.

    python -m pipelines.spark_score --model URI --input IN.{csv,parquet} --output OUT_DIR
        [--format parquet|csv] [--master local[*]]

Each executor loads the same MLflow pyfunc that ``mlflow.pyfunc.load_model`` gives, and so the
same :meth:`Detector.score`: the rows come out with the scores ``anomaly score`` writes. CSV input
is read as text, as ``anomaly score`` reads it, so both parse values the same way. The output is
every input column plus ``anomaly_score``, ``is_anomaly``, ``p_value`` and ``top_features``.

Exit codes: 0 scored, 2 bad input or model (the reason on stderr), 75 the MLflow server
unreachable or failing (retry), 1 anything else.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
from pathlib import Path

from anomaly import AnomalyError, registry
from anomaly.detector import RESULT_COLUMNS
from anomaly.errors import InputError
from pipelines import exit_code

RESULT_TYPE = "anomaly_score float, is_anomaly boolean, p_value double, top_features string"


def score(spark, model_uri: str, input_path: str, output_path: str, fmt: str = "parquet") -> None:
    """Score ``input_path`` (CSV or Parquet) into ``output_path`` (a directory of parts).

    A bad value fails the Spark job; the detector's message (column, and the row counted within
    the failing Arrow batch) is raised as an :class:`InputError`.
    """
    import mlflow
    from pyspark.sql import functions as F

    ref = registry.resolve(model_uri)
    detector = registry.load_detector(ref.path)
    if detector.kind != "tabular":  # Spark's batches would cut a series; images are no rows
        raise InputError(f"Spark scores table models; {model_uri} holds a {detector.kind} one")
    if "://" not in input_path and not Path(input_path).exists():
        raise InputError(f"no such file or folder: {input_path}")
    frame = _read(spark, input_path)
    missing = [c for c in detector.schema_.names if c not in frame.columns]
    if missing:
        raise InputError(f"{input_path}: missing column {missing[0]!r}", column=missing[0])
    with tempfile.TemporaryDirectory() as tmp:
        udf = mlflow.pyfunc.spark_udf(
            spark, _mlflow_model(ref, Path(tmp)), result_type=RESULT_TYPE, env_manager="local"
        )
        kept = [c for c in frame.columns if c not in RESULT_COLUMNS]
        # A struct keeps the column names: the model sees the rows as a user's DataFrame.
        scored = frame.select(*kept, udf(F.struct(*kept)).alias("_scores"))
        scored = scored.select(*kept, *(F.col(f"_scores.{c}").alias(c) for c in RESULT_COLUMNS))
        writer = scored.write.mode("overwrite")
        try:
            if fmt == "csv":
                writer.option("header", True).csv(output_path)
            else:
                writer.parquet(output_path)
        except Exception as exc:  # Spark wraps the worker's exception in its own
            reason = _input_error_in(str(exc))
            if reason is None:
                raise
            raise InputError(f"{input_path}: {reason}") from None


def _input_error_in(text: str) -> str | None:
    marker = "anomaly.errors.InputError: "
    for line in text.splitlines():
        if marker in line:
            return line.split(marker, 1)[1].strip()
    return None


def _read(spark, path: str):
    if path.endswith(".parquet") or Path(path).is_dir():
        return spark.read.parquet(path)
    # Text, like `anomaly score`: the detector parses values itself and names bad ones.
    return spark.read.option("header", True).option("inferSchema", False).csv(path)


def _mlflow_model(ref: registry.ModelRef, scratch: Path) -> str:
    """The MLflow model root of ``ref``; a plain model directory is wrapped in one."""
    root = ref.path.parent.parent
    if (root / "MLmodel").is_file():
        return str(root)
    import mlflow

    wrapped = scratch / "mlflow-model"
    mlflow.pyfunc.save_model(wrapped, loader_module=registry.LOADER_MODULE, data_path=str(ref.path))
    return str(wrapped)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory or MLflow model URI")
    parser.add_argument("--input", required=True, help="CSV file, or Parquet file or directory")
    parser.add_argument("--output", required=True, help="output directory (Spark writes parts)")
    parser.add_argument("--format", choices=["parquet", "csv"], default="parquet")
    parser.add_argument("--master", default="local[*]", help="Spark master (default local[*])")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from pyspark.sql import SparkSession

    if args.master.startswith("local"):  # workers run this interpreter, with anomaly installed
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark = SparkSession.builder.master(args.master).appName("anomaly-score").getOrCreate()
    try:
        score(spark, args.model, args.input, args.output, args.format)
    except AnomalyError as exc:
        logging.error("%s", exc)
        return exit_code(exc)
    finally:
        spark.stop()
    logging.info("scored %s -> %s", args.input, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
