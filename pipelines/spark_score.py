"""Batch scoring on Spark, through the model's MLflow ``spark_udf``.

    python -m pipelines.spark_score --model URI --input IN --output OUT_DIR
        [--format parquet|csv] [--master local[*]]

IN: a CSV file, a glob of CSV files (quoted: 'rows/*.csv'), or Parquet (a file or a folder).

Each executor loads the same MLflow pyfunc that ``mlflow.pyfunc.load_model`` gives, and so the
same :meth:`Detector.score`: the rows come out with the scores ``anomaly score`` writes. CSV input
is read as text, as ``anomaly score`` reads it (RFC 4180: quoted line breaks, doubled quotes; a
row with fields missing or extra is an error), so both parse values the same way. A CSV file with
quotes in it is read by one task, as a quoted line break cannot be found from the middle of the
file: give Parquet, or several files by a glob, for parallel reading. The output is every input
column plus ``anomaly_score``, ``is_anomaly``, ``p_value`` and ``top_features``; an output
folder on this machine's disk (Spark running locally) is replaced only when the job succeeds.

Exit codes: 0 scored, 2 bad input or model (the reason on stderr), 75 the MLflow server
unreachable or failing (retry), 1 anything else.
"""

from __future__ import annotations

import argparse
import bz2
import glob
import gzip
import io
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from anomaly import AnomalyError, registry
from anomaly.data.tabular import csv_header, first_ragged_row, line_of, ragged_row_error
from anomaly.detector import RESULT_COLUMNS
from anomaly.errors import InputError
from anomaly.persistence import hidden_sibling, replace_dir
from pipelines import stopped

RESULT_TYPE = "anomaly_score float, is_anomaly boolean, p_value double, top_features string"


def score(spark, model_uri: str, input_path: str, output_path: str, fmt: str = "parquet") -> None:
    """Score ``input_path`` (CSV or Parquet) into ``output_path`` (a directory of parts).

    A bad value fails the Spark job; the detector's message (column, and the row counted within
    the failing Arrow batch) is raised as an :class:`InputError`. Column names are matched
    with their case, as the detector matches them (Spark's setting is restored after).
    """
    case_sensitive = spark.conf.get("spark.sql.caseSensitive")
    spark.conf.set("spark.sql.caseSensitive", "true")  # "cpu" and "CPU": two columns
    try:
        _score(spark, model_uri, input_path, output_path, fmt)
    finally:
        spark.conf.set("spark.sql.caseSensitive", case_sensitive)


def _score(spark, model_uri: str, input_path: str, output_path: str, fmt: str) -> None:
    import mlflow
    from pyspark.sql import functions as F

    ref = registry.resolve(model_uri)
    detector = registry.load_detector(ref.path)
    if detector.kind != "tabular":  # Spark's batches would cut a series; images are no rows
        raise InputError(f"Spark scores table models; {model_uri} holds a {detector.kind} one")
    local = _on_this_disk(spark)
    if local(input_path) and not glob.has_magic(input_path) and not Path(input_path).exists():
        raise InputError(f"no such file or folder: {input_path}")
    # A local output is written beside its place and renamed in: a failed job leaves the
    # previous output as it was (Spark's overwrite would have deleted it first).
    target = Path(os.path.realpath(output_path)) if local(output_path) else None
    if target is not None and target.exists() and not target.is_dir():
        raise InputError(f"{output_path} is a file; Spark writes a folder of parts")
    if target is not None and not (above := next(p for p in target.parents if p.exists())).is_dir():
        raise InputError(f"{above} is a file; the output folder {output_path} cannot be made")
    written = str(hidden_sibling(target)) if target is not None else output_path
    try:
        frame = _read(spark, input_path, local(input_path))
    except Exception as exc:  # Spark's own, for a path it cannot find (off this machine)
        if "PATH_NOT_FOUND" not in str(exc):
            raise
        raise InputError(f"no such file or folder: {input_path}") from None
    missing = [c for c in detector.schema_.names if c not in frame.columns]
    if missing:
        raise InputError(f"{input_path}: missing column {missing[0]!r}", column=missing[0])
    with tempfile.TemporaryDirectory() as tmp:
        udf = mlflow.pyfunc.spark_udf(
            spark, _mlflow_model(ref, Path(tmp)), result_type=RESULT_TYPE, env_manager="local"
        )
        # Quoted: a name may hold a dot ("cpu.pct"), which Spark reads as a field of a struct.
        kept = [_quoted(c) for c in frame.columns if c not in RESULT_COLUMNS]
        # A struct keeps the column names: the model sees the rows as a user's DataFrame.
        scored = frame.select(*kept, udf(F.struct(*kept)).alias("_scores"))
        scored = scored.select(*kept, *(F.col(f"_scores.{c}").alias(c) for c in RESULT_COLUMNS))
        writer = scored.write.mode("overwrite")
        try:
            if fmt == "csv":  # RFC 4180 quotes, as `anomaly score` writes (Spark's: backslashes)
                # and every value as it came: Spark's writer trims spaces by default, which
                # would show " NL", an unseen level as scored, as the known "NL".
                (writer.option("header", True).option("escape", '"')
                 .option("ignoreLeadingWhiteSpace", False)
                 .option("ignoreTrailingWhiteSpace", False)
                 .csv(written))  # fmt: skip
            else:
                writer.parquet(written)
        except Exception as exc:  # Spark wraps the worker's exception in its own
            if target is not None:
                shutil.rmtree(written, ignore_errors=True)
            reason = _input_error_in(str(exc), input_path, frame.columns, local(input_path))
            if reason is None:
                raise
            raise InputError(f"{input_path}: {reason}") from None
    if target is not None:
        replace_dir(Path(written), target)


def _input_error_in(text: str, input_path: str, header: list[str], local: bool) -> str | None:
    """The detector's message in a failed job's error, or the row that does not fit the
    header (Spark's FAILFAST names none)."""
    marker = "anomaly.errors.InputError: "
    for line in text.splitlines():
        if marker in line:
            return line.split(marker, 1)[1].strip()
    if "Malformed records are detected" in text:
        one_file = local and not glob.has_magic(input_path)
        ragged = first_ragged_row(Path(input_path), len(header)) if one_file else None
        if ragged is None:
            return "a row's fields do not match the header"
        # as `anomaly score` words it (the path is added where the reason is raised)
        line = line_of(Path(input_path), ragged[0])
        return f"{ragged_row_error(*ragged, header)} (line {line} of the file)"
    return None


def _quoted(name: str):
    from pyspark.sql import functions as F

    return F.col("`" + name.replace("`", "``") + "`")


def _read(spark, path: str, local: bool):
    if path.endswith(".parquet") or (local and Path(path).is_dir()):
        return spark.read.parquet(path)
    # Headers checked as `anomaly score` checks them (Spark would rename a repeated or empty
    # name, "cpu1", "_c7"); off this machine, the first file's.
    if local:
        _check_headers(path)
    else:
        first = spark.read.text(path).first()
        if first is None:
            raise InputError(f"{path} is empty")
        csv_header(io.BytesIO(first.value.encode()), name=path)
    # Text, like `anomaly score`: the detector parses values itself and names bad ones.
    quoted = not local or any(_has_quotes(Path(p)) for p in glob.glob(path))
    return (
        spark.read.option("header", True)
        .option("inferSchema", False)
        .option("escape", '"')  # a quote inside a quoted value is doubled (RFC 4180)
        .option("multiLine", quoted)
        .option("mode", "FAILFAST")  # a row with fields missing or extra is an error
        .csv(path)
    )


def _check_headers(path: str) -> None:
    """Check the header of each local file that Spark reads for ``path`` (a file or a glob):
    as ``anomaly score`` checks one, and the same in every file, as Spark reads every file
    by the first one's header (columns in another order would be read as the wrong ones)."""
    files = sorted(glob.glob(path)) if glob.has_magic(path) else [path]
    # Spark skips hidden files and its own markers (_SUCCESS), and reads no row from an
    # empty file.
    files = [Path(f) for f in files if not Path(f).name.startswith(("_", "."))]
    if not files:
        raise InputError(f"no file matches {path}")
    files = [f for f in files if f.is_file() and f.stat().st_size > 0]
    if not files:
        raise InputError(f"{path} is empty")
    first = None
    for file in files:
        opener = _DECOMPRESSING.get(file.suffix, open)
        if file.suffix in _OTHER_CODECS:
            continue  # Spark reads it; Python here cannot
        with opener(file, "rb") as raw:
            header = csv_header(raw, name=str(file))
        if first is None:
            first = (file, header)
        elif header != first[1]:
            raise InputError(
                f"{file}: its header is not that of {first[0]}; Spark reads every file by the "
                "first one's header, so give files whose columns come in the same order"
            )


_DECOMPRESSING = {".gz": gzip.open, ".bz2": bz2.open}
_OTHER_CODECS = {".deflate", ".lz4", ".snappy", ".zst", ".xz"}


def _on_this_disk(spark) -> Callable[[str], bool]:
    """Whether a path is on this machine's disk: no scheme, and Spark running here (on a
    cluster, a bare path is on its default file system, HDFS say)."""
    here = spark.sparkContext.master.startswith("local")
    return lambda path: here and "://" not in path


def _has_quotes(path: Path) -> bool:
    """Whether a file has a quote anywhere: only then can a value hold a line break (a scan at
    disk speed, which saves reading the whole file in one task when it has none)."""
    with open(path, "rb") as raw:
        return any(b'"' in block for block in iter(lambda: raw.read(1 << 20), b""))


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
    parser.add_argument(
        "--input", required=True, help="CSV file, glob of CSV files, or Parquet file or folder"
    )
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
    except (AnomalyError, OSError) as exc:
        return stopped(exc)
    finally:
        spark.stop()
    logging.info("scored %s -> %s", args.input, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
