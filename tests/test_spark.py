"""Spark batch scoring through MLflow's spark_udf, on a local Spark session (needs Java)."""

import os
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

from anomaly import registry
from anomaly.batch import score_csv
from anomaly.datasets import make_service_metrics
from anomaly.errors import InputError
from pipelines import spark_score


@pytest.fixture(scope="module")
def spark():
    if shutil.which("java") is None:
        pytest.fail("Spark needs Java: run tests/system-deps.sh (make test does)")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .appName("anomaly-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "2")
        .getOrCreate()
    )
    yield session
    session.stop()


@pytest.fixture(scope="module")
def model_uri(fitted_ae):
    name = "spark-svc"
    registry.log_detector(fitted_ae, register=name)
    return f"models:/{name}@champion"


@pytest.fixture(scope="module")
def rows_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("spark") / "rows.csv"
    make_service_metrics(3000, 300, seed=3).to_csv(path, index=False)
    return path


def read_parts(path) -> pd.DataFrame:
    return pd.read_parquet(path).sort_values(["host_id", "timestamp"]).reset_index(drop=True)


def test_spark_scores_equal_anomaly_score(spark, model_uri, rows_csv, fitted_ae, tmp_path):
    score_csv(registry.load_detector(model_uri), rows_csv, tmp_path / "cli.csv", progress=False)
    expected = (
        pd.read_csv(tmp_path / "cli.csv")
        .sort_values(["host_id", "timestamp"])
        .reset_index(drop=True)
    )
    spark_score.score(spark, model_uri, str(rows_csv), str(tmp_path / "from-csv"))
    from_csv = read_parts(tmp_path / "from-csv")
    assert len(from_csv) == len(expected) == 3300
    assert np.array_equal(
        from_csv["anomaly_score"].to_numpy(), expected["anomaly_score"].to_numpy("float32")
    )
    for column in ("is_anomaly", "p_value", "top_features"):
        assert (from_csv[column].to_numpy() == expected[column].to_numpy()).all(), column
    assert list(from_csv.columns[-4:]) == ["anomaly_score", "is_anomaly", "p_value", "top_features"]

    # Parquet in: typed columns instead of text, the same scores.
    pd.read_csv(rows_csv).to_parquet(tmp_path / "rows.parquet")
    spark_score.score(spark, model_uri, str(tmp_path / "rows.parquet"), str(tmp_path / "from-pq"))
    from_parquet = read_parts(tmp_path / "from-pq")
    assert np.array_equal(from_parquet["anomaly_score"], from_csv["anomaly_score"])


def test_spark_bad_value_names_the_column(spark, model_uri, tmp_path):
    rows = make_service_metrics(200, seed=4).astype({"cpu": object})
    rows.loc[17, "cpu"] = "fast"
    rows.to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match="column 'cpu', row 17: 'fast' is not a number"):
        spark_score.score(spark, model_uri, str(tmp_path / "bad.csv"), str(tmp_path / "out"))
    with pytest.raises(InputError, match="missing column 'cpu'"):
        rows.drop(columns=["cpu"]).to_csv(tmp_path / "nocpu.csv", index=False)
        spark_score.score(spark, model_uri, str(tmp_path / "nocpu.csv"), str(tmp_path / "out"))
    with pytest.raises(InputError, match="no such file or folder"):
        spark_score.score(spark, model_uri, str(tmp_path / "absent.csv"), str(tmp_path / "out"))


def test_spark_reads_and_writes_csv_as_anomaly_score_does(spark, model_uri, tmp_path):
    """Quoted line breaks, doubled quotes and missing-value tokens: the same rows, values and
    scores as `anomaly score`, and CSV written with RFC 4180 quotes."""
    rows = make_service_metrics(200, 20, seed=5).astype({"cpu": object, "cached": object})
    rows["note"] = ""
    rows.loc[5, "note"] = "rebooted\nat 3am"
    rows.loc[6, "note"] = 'say "hi", twice'
    rows.loc[3, "cpu"], rows.loc[4, "cached"] = "NA", "nan"  # missing, as read_csv reads them
    rows.loc[7, "note"], rows.loc[8, "region"] = "  padded  ", f" {rows.loc[8, 'region']}"
    rows.to_csv(tmp_path / "in.csv", index=False)
    score_csv(registry.load_detector(model_uri), tmp_path / "in.csv", tmp_path / "cli.csv",
              progress=False)  # fmt: skip
    spark_score.score(spark, model_uri, str(tmp_path / "in.csv"), str(tmp_path / "out"), "csv")
    parts = sorted((tmp_path / "out").glob("part-*.csv"))
    keys = ["host_id", "timestamp"]
    from_spark = pd.concat(pd.read_csv(p) for p in parts).sort_values(keys, ignore_index=True)
    expected = pd.read_csv(tmp_path / "cli.csv").sort_values(keys, ignore_index=True)
    assert len(from_spark) == len(expected) == 220
    np.testing.assert_array_equal(
        from_spark["anomaly_score"].to_numpy("float32"),
        expected["anomaly_score"].to_numpy("float32"),
    )
    for name in ("note", "region"):  # spaces kept: " eu-west" is an unseen level as scored
        assert from_spark[name].fillna("").tolist() == expected[name].fillna("").tolist()
    assert "  padded  " in set(from_spark["note"])
    assert {"rebooted\nat 3am", 'say "hi", twice'} <= set(from_spark["note"].dropna())


def test_a_ragged_row_is_named_and_a_failed_job_keeps_the_last_output(spark, model_uri, tmp_path):
    rows = make_service_metrics(100, seed=6)
    rows.to_csv(tmp_path / "good.csv", index=False)
    spark_score.score(spark, model_uri, str(tmp_path / "good.csv"), str(tmp_path / "out"))
    before = read_parts(tmp_path / "out")
    lines = (tmp_path / "good.csv").read_text().splitlines()
    lines[12] = ",".join(lines[12].split(",")[:8])  # line 13, data row 11, loses 3 fields
    (tmp_path / "short.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(
        InputError, match=r"short\.csv: row 11 has 8 fields, the header 11 names; .* \(line 13 of"
    ):
        spark_score.score(spark, model_uri, str(tmp_path / "short.csv"), str(tmp_path / "out"))
    rows.astype({"cpu": object}).assign(cpu="fast").to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError, match="'fast' is not a number"):
        spark_score.score(spark, model_uri, str(tmp_path / "bad.csv"), str(tmp_path / "out"))
    pd.testing.assert_frame_equal(read_parts(tmp_path / "out"), before)
    # Files by a glob are CSV files (read in parallel), not a path that does not exist.
    spark_score.score(spark, model_uri, str(tmp_path / "go*.csv"), str(tmp_path / "out"))
    pd.testing.assert_frame_equal(read_parts(tmp_path / "out"), before)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "bad.csv", "good.csv", "out", "short.csv"
    ]  # fmt: skip


def test_headers_are_read_as_anomaly_score_reads_them(spark, model_uri, tmp_path):
    """Spark would rename a repeated or empty name and match names whatever their case; a
    name with a dot is a column, not a field of one."""
    rows = make_service_metrics(50, seed=7)
    lines = rows.to_csv(index=False).splitlines()
    for header, message in [
        (lines[0].replace("cpu", "timestamp"), "column 'timestamp' appears twice"),
        (lines[0].rsplit(",", 1)[0] + ",", "of the header has no name"),
    ]:
        (tmp_path / "odd.csv").write_text("\n".join([header, *lines[1:]]) + "\n")
        with pytest.raises(InputError, match=message):
            spark_score.score(spark, model_uri, str(tmp_path / "odd.csv"), str(tmp_path / "o"))
    with pytest.raises(InputError, match="no file matches"):
        spark_score.score(spark, model_uri, str(tmp_path / "none*.csv"), str(tmp_path / "o"))
    extra = rows.assign(**{"CPU": "loud", "note.x": "a.b"})
    extra.to_csv(tmp_path / "extra.csv", index=False)
    spark_score.score(spark, model_uri, str(tmp_path / "extra.csv"), str(tmp_path / "o"))
    scored = read_parts(tmp_path / "o")
    assert (scored["CPU"] == "loud").all() and (scored["note.x"] == "a.b").all()
    score_csv(registry.load_detector(model_uri), tmp_path / "extra.csv", tmp_path / "cli.csv",
              progress=False)  # fmt: skip
    expected = pd.read_csv(tmp_path / "cli.csv").sort_values(["host_id", "timestamp"])
    np.testing.assert_array_equal(
        scored["anomaly_score"].to_numpy("float32"), expected["anomaly_score"].to_numpy("float32")
    )
    assert spark.conf.get("spark.sql.caseSensitive") == "false"  # the session's, restored
    # A glob as Spark reads it: its markers and empty parts skipped, compressed files read;
    # every header must be the first one's, as Spark reads each file by it.
    import gzip

    parts = tmp_path / "parts"
    parts.mkdir()
    rows.head(20).to_csv(parts / "a.csv", index=False)
    (parts / "b.csv.gz").write_bytes(gzip.compress(rows.tail(30).to_csv(index=False).encode()))
    (parts / "c.csv").write_text("")
    (parts / "_SUCCESS").write_text("")
    spark_score.score(spark, model_uri, str(parts / "*"), str(tmp_path / "o"))
    assert len(read_parts(tmp_path / "o")) == 50
    swapped = rows.head(5)[[rows.columns[1], rows.columns[0], *rows.columns[2:]]]
    swapped.to_csv(parts / "d.csv", index=False)
    with pytest.raises(InputError, match=r"d\.csv: its header is not that of .*a\.csv"):
        spark_score.score(spark, model_uri, str(parts / "*"), str(tmp_path / "o"))
    (tmp_path / "afile").write_text("")
    with pytest.raises(InputError, match=r"afile is a file; the output folder .* cannot be made"):
        spark_score.score(spark, model_uri, str(parts / "a.csv"), str(tmp_path / "afile" / "o"))
