"""Time series: data policy, window models, per-point and per-window scores, save/load."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from anomaly.batch import score_csv
from anomaly.data.sequence import SequenceSchema
from anomaly.datasets import make_metric_series
from anomaly.detector import Detector
from anomaly.errors import InputError, ModelFormatError
from anomaly.sequence import SequenceDetector
from anomaly.streams import push

GAP = "a gap in time: the window restarts"


@pytest.fixture(scope="module")
def train_rows() -> pd.DataFrame:
    return make_metric_series(1200, 2)


@pytest.fixture(scope="module")
def test_rows() -> pd.DataFrame:
    return make_metric_series(600, 2, anomalies=(200, 450), seed=1)


@pytest.fixture(scope="module")
def fitted(train_rows) -> SequenceDetector:
    return SequenceDetector(series_col="host", exclude=["label"], window=24, epochs=15).fit(
        train_rows
    )


def test_schema_infers_value_columns_and_the_typical_step(train_rows):
    schema = SequenceSchema.infer(
        train_rows, timestamp="timestamp", series="host", exclude=["label"]
    )
    assert schema.values == ("value",)
    assert schema.step == 60.0
    assert SequenceSchema.from_dict(schema.to_dict()) == schema


def test_prepare_orders_fills_and_splits_at_gaps():
    frame = pd.DataFrame(
        {
            "t": [3, 1, 2, 4, 50, 51, 52],
            "v": [3.0, 1.0, np.nan, 4.0, 50.0, np.nan, 52.0],
        }
    )
    schema = SequenceSchema.infer(frame, timestamp="t")
    assert schema.timestamp_kind == "number" and schema.step == 1.0
    seg = schema.prepare(frame, window=2)
    # one gap of 46 steps > 5: two segments; NaNs interpolated in time
    assert seg.bounds.tolist() == [[0, 4], [4, 7]]
    np.testing.assert_allclose(seg.values[:, 0], [1, 2, 3, 4, 50, 51, 52])
    np.testing.assert_allclose(seg.to_input_order(seg.values[:, 0]), [3, 1, 2, 4, 50, 51, 52])


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (pd.DataFrame({"t": [1, 2, 2], "v": [1.0, 2.0, 3.0]}), "row 2: timestamp 2 repeats"),
        (pd.DataFrame({"t": [1, 2, 3], "v": [1.0, "x", 3.0]}), "column 'v', row 1"),
        (
            pd.DataFrame({"t": [3, 1, 2], "v": [np.nan] * 3}),
            "column 'v' has no values in the 3 points from row 1, time 1 on",
        ),
        (pd.DataFrame({"t": [1, np.nan], "v": [1.0, 2.0]}), "column 't', row 1: the timestamp is"),
        (pd.DataFrame({"t": [1, 2, 3]}), "missing column 'v'"),
    ],
)
def test_bad_series_name_the_column_and_row(frame, message):
    schema = SequenceSchema(timestamp="t", values=("v",), timestamp_kind="number")
    with pytest.raises(InputError, match=message):
        schema.prepare(frame, window=2)


def test_bad_timestamp_names_the_row():
    schema = SequenceSchema(timestamp="t", values=("v",))
    frame = pd.DataFrame({"t": ["2024-01-01", "soon"], "v": [1.0, 2.0]})
    with pytest.raises(InputError, match="column 't', row 1: 'soon' is not a timestamp"):
        schema.prepare(frame, window=2)


def test_evaluate_says_it_measures_table_models(fitted, test_rows, tmp_path):
    from typer.testing import CliRunner

    from anomaly.cli import app

    test_rows.head(50).to_csv(tmp_path / "rows.csv", index=False)
    args = ["evaluate", str(tmp_path / "rows.csv"), "--model", str(fitted.save(tmp_path / "m")),
            "--label-col", "label", "--no-log"]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 2
    assert "evaluate measures table models;" in done.output
    assert "holds a sequence one" in done.output


def test_dates_far_from_1970_are_seconds_too():
    """Past 2262 a date overflows nanoseconds; it is read in its own unit."""
    schema = SequenceSchema(timestamp="t", values=("v",))
    seconds = schema.seconds(pd.Series(["9999-12-31", "1000-01-01T00:00:00Z"]))
    assert seconds.tolist() == [253402214400.0, -30610224000.0]
    assert schema.shown(seconds[0]) == "9999-12-31T00:00:00+00:00"


def test_point_scores_find_level_shifts_and_keep_row_order(fitted, test_rows):
    result = fitted.score(test_rows)
    assert list(result.columns) == ["anomaly_score", "is_anomaly", "p_value"]
    assert result.index.equals(test_rows.index)
    assert result["anomaly_score"].notna().all()  # every point of a long segment is covered
    assert roc_auc_score(test_rows["label"], result["anomaly_score"]) > 0.95
    assert result.loc[test_rows["label"] == 1, "is_anomaly"].mean() > 0.8
    # normal points far from both shifts are flagged near the target rate
    t = (test_rows["timestamp"] - test_rows["timestamp"].min()).dt.total_seconds() / 60
    far = ((t - 200).abs() > 40) & ((t - 450).abs() > 40)
    assert result.loc[far, "is_anomaly"].mean() < 0.05


def test_a_wild_value_is_flagged_not_lost(fitted, test_rows):
    rows = test_rows[test_rows["host"] == test_rows["host"].iloc[0]]
    rows = rows.sort_values("timestamp").head(100).copy()
    value = next(c for c in rows.columns if c not in ("host", "timestamp", "label"))
    rows.loc[rows.index[50], value] = 1e39  # past float32's range: once inf, and a NaN score
    result = fitted.score(rows)
    assert result["anomaly_score"].notna().all() and result.loc[rows.index[50], "is_anomaly"]


def test_window_scores_are_what_a_stream_gets(fitted, test_rows):
    """by='window' gives each point its window's score: the same numbers as score_windows on
    the raw window ending there, NaN before a window is full."""
    result = fitted.score(test_rows, by="window")
    host = test_rows[test_rows["host"] == "h0"].sort_values("timestamp")
    per_point = result.loc[host.index]
    assert per_point["anomaly_score"].iloc[:23].isna().all()
    assert per_point["anomaly_score"].iloc[23:].notna().all()
    values = host["value"].to_numpy()
    windows = np.lib.stride_tricks.sliding_window_view(values, 24)[:, :, None]
    direct = fitted.score_windows(windows)
    np.testing.assert_array_equal(direct["anomaly_score"], per_point["anomaly_score"].iloc[23:])
    np.testing.assert_array_equal(direct["is_anomaly"], per_point["is_anomaly"].iloc[23:])


def test_same_input_same_scores_and_save_load_round_trip(fitted, test_rows, tmp_path):
    first = fitted.score(test_rows)
    pd.testing.assert_frame_equal(first, fitted.score(test_rows))
    fitted.save(tmp_path / "m")
    loaded = SequenceDetector.load(tmp_path / "m")
    pd.testing.assert_frame_equal(loaded.score(test_rows), first)
    assert loaded.threshold_ == fitted.threshold_
    assert loaded.get_params() == {**fitted.get_params(), "device": "cpu"}
    with pytest.raises(ModelFormatError, match="holds a 'sequence' model, not a 'tabular' one"):
        Detector.load(tmp_path / "m")


@pytest.mark.parametrize(("model", "arch"), [("vae", "conv"), ("ae", "gru")])
def test_vae_and_gru_options_detect_too(model, arch, train_rows, test_rows):
    det = SequenceDetector(
        series_col="host",
        exclude=["label"],
        model=model,
        arch=arch,
        window=16,
        hidden=16,
        epochs=6,
        stride=2,
    ).fit(train_rows)
    scores = det.score_samples(test_rows)
    assert roc_auc_score(test_rows["label"], scores) > 0.9


def test_short_series_get_nan_scores_and_short_training_data_is_refused(fitted, test_rows):
    short = test_rows[test_rows["host"] == "h0"].sort_values("timestamp").iloc[:10]
    result = fitted.score(short)
    assert result["anomaly_score"].isna().all() and not result["is_anomaly"].any()
    with pytest.raises(InputError, match="too few"):
        SequenceDetector(window=24, epochs=1).fit(short[["timestamp", "value"]])


def _days(first: str, n: int, fmt: str) -> pd.DataFrame:
    """``n`` daily points from ``first``, their times written in ``fmt``."""
    days = pd.date_range(first, periods=n, freq="D")
    return pd.DataFrame({"t": days.strftime(fmt), "v": np.arange(n, dtype=float)})


def test_times_are_read_in_the_one_format_found_at_fit():
    """Day-first text is not read month-first where it could be: "12/01" is 12 January, as
    "13/01" is, so the series stays in order (pandas' per-value guess read 1 December)."""
    schema = SequenceSchema.infer(_days("2024-01-05", 20, "%d/%m/%Y"), timestamp="t")
    assert schema.time_format == "%d/%m/%Y" and schema.step == 86400.0
    assert SequenceSchema.from_dict(schema.to_dict()) == schema
    times = schema.seconds(pd.Series(["12/01/2024", "13/01/2024"]))
    assert [schema.shown(t)[:10] for t in times] == ["2024-01-12", "2024-01-13"]
    with pytest.raises(InputError, match=r"row 1: '2024-01-14' is not a timestamp in the format"):
        schema.seconds(pd.Series(["14/01/2024", "2024-01-14"]))
    iso = SequenceSchema.infer(_days("2024-01-05", 3, "%Y-%m-%dT%H:%M"), timestamp="t")
    assert iso.time_format == "ISO8601"
    assert iso.seconds(pd.Series(["2024-01-05 00:00:00Z"])).tolist() == [1704412800.0]


def test_times_in_no_one_format_are_read_as_they_look_day_first_as_found():
    """An export that writes midnight as a bare date: no one format reads every time, so each
    is read as it looks, with the day first as the format reading the most has it."""
    hours = pd.date_range("2024-03-11", periods=96, freq="h")
    text = [t.strftime("%d/%m/%Y" if t.hour == 0 else "%d/%m/%Y %H:%M") for t in hours]
    schema = SequenceSchema.infer(pd.DataFrame({"t": text, "v": 1.0}), timestamp="t")
    assert schema.time_format == "mixed, day first" and schema.step == 3600.0
    times = schema.seconds(pd.Series(text))
    assert (np.diff(times) == 3600.0).all()  # "12/03/2024" is 12 March, as "13/03/2024" is
    assert schema.shown(schema.seconds(pd.Series(["12/03/2024"]))[0])[:10] == "2024-03-12"


def test_ambiguous_times_follow_the_format_found_and_old_models_read_as_they_did(caplog):
    with caplog.at_level(logging.WARNING):
        schema = SequenceSchema.infer(_days("2024-02-01", 10, "%d/%m/%Y"), timestamp="t")
    assert schema.time_format == "%m/%d/%Y" and "%m/%d/%Y and %d/%m/%Y" in caplog.text
    assert schema.shown(schema.seconds(pd.Series(["12/01/2024"]))[0])[:10] == "2024-12-01"
    with pytest.raises(InputError, match="row 0: '13/01/2024' is not a timestamp in the format"):
        schema.seconds(pd.Series(["13/01/2024"]))
    old = {k: v for k, v in schema.to_dict().items() if k != "time_format"}
    legacy = SequenceSchema.from_dict(old)  # saved before formats were kept
    assert legacy.time_format is None
    assert legacy.shown(legacy.seconds(pd.Series(["13/01/2024"]))[0])[:10] == "2024-01-13"


@pytest.mark.parametrize(
    "times",
    [[1704067200, 1704067260], ["2024-01-01T00:00:00", 1704067260.0]],
    ids=["ints", "mixed"],
)
def test_numbers_are_not_read_as_dates(times):
    """An epoch number would be read as nanoseconds since 1970: 1970-01-01T00:00:01.7."""
    schema = SequenceSchema(timestamp="t", values=("v",), time_format="ISO8601")
    row = 0 if isinstance(times[0], int) else 1
    with pytest.raises(InputError, match=f"column 't', row {row}: .* is a number"):
        schema.seconds(pd.Series(times, dtype=object if row else None))


@pytest.mark.parametrize("missing", [None, np.nan, ""], ids=["None", "NaN", "empty"])
def test_a_missing_series_id_is_refused(missing):
    """As the CLI reads an empty id (""): no series "None", "nan" or "" of their own."""
    frame = pd.DataFrame({"t": [1, 2, 3], "host": ["a", missing, "a"], "v": [1.0, 2.0, 3.0]})
    schema = SequenceSchema(timestamp="t", values=("v",), series="host", timestamp_kind="number")
    with pytest.raises(InputError, match="column 'host', row 1: the series id is missing"):
        schema.prepare(frame, window=2)
    with pytest.raises(InputError, match="column 'host', row 1: the series id is missing"):
        SequenceSchema.infer(frame, timestamp="t", series="host")


def test_a_column_of_numbers_with_a_stray_word_is_refused_and_text_is_logged(caplog):
    frame = pd.DataFrame(
        {"t": [1, 2, 3], "v": [1.0, 2.0, 3.0], "note": ["a", "b", "c"], "mem": [0.5, "ERR", 0.7]}
    )
    with pytest.raises(InputError, match="column 'mem', row 1: 'ERR' is not a number"):
        SequenceSchema.infer(frame, timestamp="t")
    with caplog.at_level(logging.WARNING):
        schema = SequenceSchema.infer(frame.drop(columns="mem"), timestamp="t")
    assert schema.values == ("v",) and "as not numeric: 'note' (" in caplog.text


def test_a_short_segment_without_values_gets_no_score(fitted, test_rows):
    """A lone point after a gap, without a value: no window reads it, so it is not scored,
    and the rest of the file is."""
    rows = test_rows[test_rows["host"] == "h0"].sort_values("timestamp").head(60)
    lone = rows.iloc[[-1]].assign(timestamp=rows["timestamp"].max() + pd.Timedelta("1h"))
    result = fitted.score(pd.concat([rows, lone.assign(value=np.nan)], ignore_index=True))
    assert result["anomaly_score"].iloc[:60].notna().all()
    assert np.isnan(result["anomaly_score"].iloc[60]) and not result["is_anomaly"].iloc[60]


def test_a_window_long_segment_without_values_names_its_row(fitted, test_rows, tmp_path, caplog):
    rows = test_rows[test_rows["host"] == "h0"].sort_values("timestamp").head(60).copy()
    rows["value"] = rows["value"].astype(object)
    rows.iloc[30:, rows.columns.get_loc("value")] = None
    rows.iloc[30:, rows.columns.get_loc("timestamp")] += pd.Timedelta("1h")  # a gap before
    message = "column 'value' has no values in series 'h0' in the 30 points from row 30, time"
    with pytest.raises(InputError, match=message):
        fitted.score(rows.reset_index(drop=True))
    path = tmp_path / "rows.csv"
    rows.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING), pytest.raises(InputError, match=r"\(line 32 of"):
        score_csv(fitted, path, tmp_path / "out.csv", block_size=4096, progress=False)
    assert "whole" not in caplog.text  # named as the file is streamed, not read again whole


def test_a_wild_training_value_keeps_a_finite_scale():
    """Its square overflows float32: the scale was inf, every window scored alike and nothing
    was flagged, not even the wild value itself."""
    n = 160
    frame = pd.DataFrame({"t": np.arange(n), "v": np.sin(np.arange(n) / 3)})
    frame.loc[5, "v"] = 1e30
    det = SequenceDetector(timestamp_col="t", window=4, hidden=4, epochs=1).fit(frame)
    assert np.isfinite(det.std_).all()
    later = frame.assign(t=frame["t"] + n).iloc[:40].copy()
    later.loc[20, "v"] = 1e30
    assert det.score(later)["is_anomaly"].iloc[20]


def test_evt_without_enough_calibration_windows_is_refused_before_training(monkeypatch):
    import anomaly.estimator

    def no_training(*args, **kwargs):
        raise AssertionError("trained before the settings were refused")

    monkeypatch.setattr(anomaly.estimator, "train", no_training)
    det = SequenceDetector(series_col="host", exclude=["label"], threshold_method="evt",
                           target_fpr=0.001, window=16)  # fmt: skip
    with pytest.raises(InputError, match="needs at least 100 calibration rows"):
        det.fit(make_metric_series(300, 2))


def test_times_written_as_numbers_are_numbers_and_clock_words_no_times():
    """A CSV file's epoch seconds arrive as text ("1709251200"): numbers, as pandas' own read
    of the file has them; pandas reads "now" and "today" as the clock's time, in any format."""
    text = pd.DataFrame({"t": ["1709251200", "1709254800", "1709258400"], "v": 1.0})
    schema = SequenceSchema.infer(text, timestamp="t")
    assert schema.timestamp_kind == "number" and schema.step == 3600.0
    with pytest.raises(InputError, match="column 't', row 2: 'x' is not a number"):
        SequenceSchema.infer(text.assign(t=["1", "2", "x"]), timestamp="t")
    # digits that a date format reads whole are dates: 31 January is a day before 1 February
    compact = SequenceSchema.infer(_days("2024-01-25", 20, "%Y%m%d"), timestamp="t")
    assert compact.timestamp_kind == "datetime" and compact.step == 86400.0
    iso = SequenceSchema.infer(_days("2024-01-05", 5, "%Y-%m-%d"), timestamp="t")
    dmy = SequenceSchema.infer(_days("2024-01-13", 5, "%d/%m/%Y"), timestamp="t")
    for schema, first in [(iso, "2024-01-01"), (dmy, "13/01/2024")]:
        for word in ["now", "today"]:
            with pytest.raises(InputError, match=f"row 1: '{word}' is not a timestamp"):
                schema.seconds(pd.Series([first, word]))


def test_a_tie_between_day_and_month_first_in_times_of_no_one_format_is_warned(caplog):
    """Midnight written as a bare date, and no day past the 12th: the day-first and
    month-first readings read as many times, so which one is taken is said."""
    hours = pd.date_range("2024-03-01", periods=12 * 24, freq="h")
    text = [t.strftime("%d/%m/%Y" if t.hour == 0 else "%d/%m/%Y %H:%M") for t in hours]
    with caplog.at_level(logging.WARNING):
        schema = SequenceSchema.infer(pd.DataFrame({"t": text, "v": 1.0}), timestamp="t")
    assert schema.time_format == "mixed"
    assert "%m/%d/%Y %H:%M and %d/%m/%Y %H:%M" in caplog.text and "month first" in caplog.text


def _two_rates(fast: int, slow: int) -> pd.DataFrame:
    """Series sampled every minute and every ten minutes, in one file."""
    rng = np.random.default_rng(0)
    parts = [
        pd.DataFrame({"timestamp": pd.date_range("2024-01-01", periods=n, freq=freq), "host": host})
        for host, n, freq in [("fast", fast, "1min"), ("slow", slow, "10min")]
    ]
    frame = pd.concat(parts, ignore_index=True)
    frame["value"] = np.sin(np.arange(len(frame)) / 8) + rng.normal(0, 0.1, len(frame))
    return frame


def test_each_series_keeps_its_own_typical_step(caplog, tmp_path):
    """A series sampled ten times slower than the rest is not all gaps: each series' steps
    are its own (a series not seen at fit has the median over all)."""
    frame = _two_rates(1500, 300)
    schema = SequenceSchema.infer(frame, timestamp="timestamp", series="host")
    assert schema.step == 60.0 and schema.steps == {"fast": 60.0, "slow": 600.0}
    assert SequenceSchema.from_dict(schema.to_dict()) == schema
    assert schema.step_of("slow") == 600.0 and schema.step_of("new") == 60.0
    # a series seen too briefly to tell its step has the median over all
    brief = frame.head(4).assign(
        host="brief", timestamp=pd.date_range("2024-01-01", periods=4, freq="s")
    )
    brief = SequenceSchema.infer(pd.concat([frame, brief]), timestamp="timestamp", series="host")
    assert brief.step_of("brief") == 60.0 and "brief" not in brief.steps
    # a model of one series saves no steps (older versions read it as before)
    assert "steps" not in SequenceSchema.infer(frame.head(50), timestamp="timestamp").to_dict()
    with caplog.at_level(logging.WARNING):
        det = SequenceDetector(series_col="host", window=16, epochs=2).fit(frame)
    assert "not trained on" not in caplog.text
    scores = det.score(frame)["anomaly_score"]
    assert scores.notna().groupby(frame["host"]).all().all()
    # A stream named as a series has its step; another, the median over all.
    slow = frame[frame["host"] == "slow"].head(3)
    times = det.schema_.seconds(slow["timestamp"])
    values = slow[["value"]].to_numpy()
    assert GAP not in push(det, None, times, values, "slow")[1].reasons
    assert push(det, None, times, values, "other")[1].reasons[1:] == [GAP, GAP]
    # A series that no window fits in is said to be left out, and the rows without a score
    # are counted where a file is scored.
    short = pd.concat([frame, frame.head(5).assign(host="brief")], ignore_index=True)
    with caplog.at_level(logging.WARNING):
        SequenceDetector(series_col="host", window=16, epochs=1).fit(short)
    assert "1 of 3 series have no stretch of 16 points without a gap" in caplog.text
    assert "'brief'" in caplog.text
    short.to_csv(tmp_path / "short.csv", index=False)
    summary = score_csv(det, tmp_path / "short.csv", tmp_path / "out.csv", progress=False)
    assert summary.unscored == 5


def test_the_cli_trains_on_epoch_seconds_and_counts_the_rows_it_cannot_score(tmp_path):
    """The CLI reads times as written (text): epoch seconds are numbers there too."""
    from typer.testing import CliRunner

    from anomaly.cli import app

    rows = make_metric_series(400, 1, shuffle=False)
    rows["timestamp"] = (rows["timestamp"] - pd.Timestamp(0)) // pd.Timedelta(1, "s")
    rows.drop(columns=["host", "label"]).to_csv(tmp_path / "epoch.csv", index=False)
    args = ["train", str(tmp_path / "epoch.csv"), "--modality", "sequence", "--window", "16",
            "--epochs", "1", "--no-progress", "--out", str(tmp_path / "m")]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    meta = json.loads((tmp_path / "m" / "detector.json").read_text())
    assert meta["schema"]["timestamp_kind"] == "number" and meta["schema"]["step"] == 60.0
    point, window = meta["calibration"]["point"], meta["calibration"]["window"]
    said = (  # each threshold with its own count: points and windows differ
        f"{point['threshold']:.6g} for points (from {point['n_calibration']} calibration "
        f"points), {window['threshold']:.6g} for windows, as streams flag them (from "
        f"{window['n_calibration']})"
    )
    assert said in " ".join(done.output.split())
    lines = (tmp_path / "epoch.csv").read_text().splitlines()
    later = [f"{int(line.split(',')[0]) + 86400},{line.split(',', 1)[1]}" for line in lines[1:6]]
    (tmp_path / "new.csv").write_text("\n".join([*lines, *later]) + "\n")
    args = ["score", str(tmp_path / "new.csv"), "-m", str(tmp_path / "m"), "-o",
            str(tmp_path / "out.csv"), "--no-progress"]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "5 rows have no score: no window of 16 points covers them" in done.output


def test_arrow_backed_frames_and_numbers_for_names_read_as_numpy_ones(fitted, test_rows):
    """What pd.read_csv(engine="pyarrow", dtype_backend="pyarrow") and read_parquet give:
    Arrow timestamps, strings and booleans; and pd.DataFrame(array)'s names 0, 1, ..."""
    arrow = test_rows.convert_dtypes(dtype_backend="pyarrow")
    assert isinstance(arrow["timestamp"].dtype, pd.ArrowDtype)
    pd.testing.assert_frame_equal(fitted.score(arrow), fitted.score(test_rows))
    rows = test_rows.assign(flag=test_rows["value"] > 0).drop(columns="label")
    named = rows.set_axis(["timestamp", "host", 0, 1], axis=1)  # value as 0, flag as 1
    for frame in (named, named.convert_dtypes(dtype_backend="pyarrow")):
        det = SequenceDetector(series_col="host", window=8, epochs=1).fit(frame)
        assert det.schema_.values == ("0", "1")  # true/false too, Arrow's or numpy's
        assert det.score(frame)["anomaly_score"].notna().any()


def test_true_and_false_are_one_and_zero_in_any_form(tmp_path):
    """An on/off sensor reads alike from a DataFrame's bool, a file's "true" or "No", and a
    stream's JSON true; anything else in it is refused, naming its row."""
    from anomaly.streams import parse_points

    rows = make_metric_series(400, 1, seed=3).drop(columns="label").reset_index(drop=True)
    rows["busy"] = rows["value"] > 0
    det = SequenceDetector(series_col="host", window=8, epochs=1).fit(rows)
    assert det.schema_.values == ("value", "busy")
    expected = det.score(rows)["anomaly_score"]
    words = rows.assign(busy=rows["busy"].map({True: "true", False: " No"}))
    pd.testing.assert_series_equal(det.score(words)["anomaly_score"], expected)
    words.to_csv(tmp_path / "in.csv", index=False)
    score_csv(det, tmp_path / "in.csv", tmp_path / "out.csv", progress=False)
    from_file = pd.read_csv(tmp_path / "out.csv")["anomaly_score"].to_numpy(np.float32)
    np.testing.assert_array_equal(from_file, expected.to_numpy(np.float32))
    fitted_on_words = SequenceDetector(series_col="host", window=8, epochs=1).fit(words)
    assert fitted_on_words.schema_.values == ("value", "busy")
    point = {"timestamp": "2030-01-01T00:00:00Z", "value": 0.5, "busy": True}
    assert parse_points(det, [point])[1].tolist() == [[0.5, 1.0]]
    maybe = words.copy()
    maybe.iloc[3, maybe.columns.get_loc("busy")] = "maybe"
    with pytest.raises(InputError, match="column 'busy', row 3: 'maybe' is not a number"):
        det.score(maybe)


def test_columns_named_by_numbers_are_named_by_them(train_rows):
    """pd.DataFrame(array)'s columns 0, 1: value_cols=[0] and exclude=[1] name them, as a
    table detector's exclude does; an exclude naming no column is refused, as there."""
    wide = train_rows[["timestamp", "host", "value"]].assign(other=train_rows["value"] * 2)
    wide.columns = ["timestamp", "host", 0, 1]
    for params in ({"value_cols": [0]}, {"exclude": [1]}):
        det = SequenceDetector(series_col="host", window=8, epochs=1, **params).fit(wide)
        assert det.schema_.values == ("0",)
        assert det.score(wide)["anomaly_score"].notna().any()
    with pytest.raises(InputError, match="cannot exclude column '2': no such column"):
        SequenceDetector(series_col="host", exclude=[2]).fit(wide)
