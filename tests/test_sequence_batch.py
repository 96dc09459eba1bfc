"""Time-series CSV files scored in blocks: the whole file's scores, memory bounded by the series."""

from __future__ import annotations

import csv
import logging

import numpy as np
import pandas as pd
import pytest

import anomaly.sequence
from anomaly.batch import score_csv
from anomaly.data.tabular import read_csv
from anomaly.datasets import make_metric_series
from anomaly.errors import InputError
from anomaly.sequence import OutOfTimeOrder, SequenceDetector

WINDOW = 24


@pytest.fixture(scope="module")
def fitted() -> SequenceDetector:
    train = make_metric_series(1200, 2)
    return SequenceDetector(series_col="host", exclude=["label"], window=WINDOW, epochs=3).fit(
        train
    )


@pytest.fixture(scope="module")
def in_time() -> pd.DataFrame:
    """Three hosts, interleaved in time, with scattered missing values, a run of 40 missing
    values in one host, two gaps in another (10 points between them: too few for a window),
    and a level shift."""
    frame = make_metric_series(2000, 3, anomalies=(900,), seed=1, shuffle=False)
    frame = frame.sort_values(["timestamp", "host"], kind="stable").reset_index(drop=True)
    rng = np.random.default_rng(0)
    frame.loc[rng.choice(len(frame), 300, replace=False), "value"] = np.nan
    h1 = frame.index[frame["host"] == "h1"]
    frame.loc[h1[500:540], "value"] = np.nan
    h2 = frame.index[frame["host"] == "h2"]
    return frame.drop(index=[*h2[1200:1260], *h2[1270:1330]]).reset_index(drop=True)


@pytest.fixture
def small_passes(monkeypatch):
    """Points scored at once: few, so that a small file takes many passes."""
    monkeypatch.setattr(anomaly.sequence, "_POINTS_AT_ONCE", 50)


@pytest.mark.parametrize(
    ("quoting", "missing"),
    [(csv.QUOTE_MINIMAL, ""), (csv.QUOTE_ALL, ""), (csv.QUOTE_MINIMAL, "NA")],
    ids=["plain", "quoted", "NA"],
)
def test_a_file_in_time_order_gets_the_whole_files_scores(
    fitted, in_time, small_passes, tmp_path, caplog, quoting, missing
):
    path = tmp_path / "in.csv"
    in_time.to_csv(path, index=False, quoting=quoting, na_rep=missing)  # quoted: "" is missing
    out = tmp_path / "out.csv"
    with caplog.at_level(logging.WARNING):
        summary = score_csv(fitted, path, out, block_size=4096, progress=False)
    assert "whole" not in caplog.text  # streamed, not the fallback
    expected = fitted.score(read_csv(path))
    written = pd.read_csv(out, engine="pyarrow")  # exact floats on pandas 3.0 too
    np.testing.assert_array_equal(
        written["anomaly_score"].to_numpy(np.float32), expected["anomaly_score"]
    )
    np.testing.assert_array_equal(written["p_value"], expected["p_value"])
    assert (written["is_anomaly"] == expected["is_anomaly"]).all()
    assert summary.rows == len(in_time) and summary.flagged == expected["is_anomaly"].sum()
    assert written["is_anomaly"].sum() > 0 and written["anomaly_score"].isna().any()  # between gaps
    with open(path, newline="") as a, open(out, newline="") as b:
        rows_in, rows_out = list(csv.reader(a)), list(csv.reader(b))
    assert [r[: len(rows_in[0])] for r in rows_out] == rows_in


def _streamed(detector, frame: pd.DataFrame, piece_rows: int) -> tuple[list, list[int]]:
    """``frame`` scored as a stream of pieces of ``piece_rows`` rows: the (rows, results) that
    came out, and after each, how many rows read were still waiting for their scores."""
    consumed, batches, pending = 0, [], []

    def pieces():
        nonlocal consumed
        for start in range(0, len(frame), piece_rows):
            part = frame.iloc[start : start + piece_rows]
            consumed += len(part)
            rows = np.arange(start, start + len(part))
            yield (rows, *detector.schema_.parse(part, row_offset=start))

    for rows, results in detector.score_time_ordered(pieces()):
        batches.append((rows, results))
        pending.append(consumed - sum(len(rows) for rows, _ in batches))
    return batches, pending


def test_points_come_out_while_the_stream_goes_on(fitted, in_time, small_passes):
    """Rows waiting for their scores stay few: a few windows per series, not the stream."""
    piece_rows = 100
    batches, pending = _streamed(fitted, in_time, piece_rows)
    scored = np.concatenate([rows for rows, _ in batches])
    assert np.array_equal(np.sort(scored), np.arange(len(in_time)))
    # Each of 3 series waits for 8 windows' worth of final points, keeps ~2 windows of
    # context, and h1 waits out its run of 40 missing values.
    assert max(pending[:-1]) < 50 + piece_rows + 3 * 10 * WINDOW + 40  # before the last
    assert len(pending) > 10


def _two_sensors(n: int, seed: int) -> pd.DataFrame:
    """Two hosts, interleaved in time, each reading two sensors, ``temp`` and ``hum``."""
    rng = np.random.default_rng(seed)
    times = pd.Timestamp("2024-01-01") + pd.to_timedelta(np.arange(n), "min")
    frames = [
        pd.DataFrame(
            {
                "timestamp": times,
                "host": f"h{i}",
                "temp": np.sin(np.arange(n) / 6 + i) + 0.05 * rng.standard_normal(n),
                "hum": np.cos(np.arange(n) / 9 + i) + 0.05 * rng.standard_normal(n),
            }
        )
        for i in range(2)
    ]
    frame = pd.concat(frames).sort_values(["timestamp", "host"], kind="stable")
    return frame.reset_index(drop=True)


def test_sensors_logged_on_rows_of_their_own_come_out_while_the_stream_goes_on(
    small_passes, tmp_path, caplog
):
    """No row holds every value column (temp on one row, hum on the next): a point is final
    once each column has a value after its windows, not once a full row comes, which never
    does. The stream still gets the whole file's scores, and not all at its end."""
    window = 8
    detector = SequenceDetector(series_col="host", window=window, hidden=8, epochs=1).fit(
        _two_sensors(300, seed=0)
    )
    frame = _two_sensors(600, seed=1)
    frame.loc[frame.index % 4 < 2, "hum"] = np.nan  # each host: temp, hum, temp, hum, ...
    frame.loc[frame.index % 4 >= 2, "temp"] = np.nan
    h1 = frame.index[frame["host"] == "h1"]
    frame = frame.drop(index=h1[300:320]).reset_index(drop=True)  # a gap in h1
    assert not frame[["temp", "hum"]].notna().all(axis=1).any()

    piece_rows = 50
    batches, pending = _streamed(detector, frame, piece_rows)
    rows = np.concatenate([rows for rows, _ in batches])
    assert np.array_equal(np.sort(rows), np.arange(len(frame)))
    expected = detector.score(frame)
    for name in ("anomaly_score", "p_value", "is_anomaly"):
        streamed = np.empty(len(frame), dtype=expected[name].dtype)
        streamed[rows] = np.concatenate([results[name] for _, results in batches])
        np.testing.assert_array_equal(streamed, expected[name].to_numpy(), err_msg=name)
    # Before: one batch, the whole stream, at its end.
    assert len(batches) > 5
    assert max(pending[:-1]) < 50 + piece_rows + 2 * 10 * window

    path, out = tmp_path / "in.csv", tmp_path / "out.csv"  # and so does `anomaly score`
    frame.to_csv(path, index=False)
    with caplog.at_level(logging.WARNING):
        score_csv(detector, path, out, block_size=1024, progress=False)
    assert "whole" not in caplog.text
    np.testing.assert_array_equal(
        pd.read_csv(out)["anomaly_score"].to_numpy(np.float32),
        detector.score(read_csv(path))["anomaly_score"],
    )


def test_rows_out_of_time_order_are_scored_whole(fitted, in_time, tmp_path, caplog):
    path = tmp_path / "shuffled.csv"
    in_time.sample(frac=1, random_state=3).to_csv(path, index=False)
    out = tmp_path / "out.csv"
    with caplog.at_level(logging.WARNING):
        score_csv(fitted, path, out, block_size=4096, progress=False)
    assert "goes back in time" in caplog.text and "whole" in caplog.text
    expected = fitted.score(read_csv(path))
    np.testing.assert_array_equal(
        pd.read_csv(out)["anomaly_score"].to_numpy(np.float32), expected["anomaly_score"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.csv", "shuffled.csv"]


def test_a_segment_without_values_may_be_filled_by_rows_out_of_order(
    fitted, small_passes, tmp_path, caplog
):
    """The stream meets an empty segment before the row, further on, that fills it: the
    file is out of order, so it is scored whole, as a DataFrame of it would be."""
    start = pd.Timestamp("2024-01-01")
    later = start + pd.to_timedelta(np.arange(10, 210), "min")
    frame = pd.DataFrame(
        {
            "timestamp": [start, *later, start + pd.Timedelta(30, "s")],
            "host": "h0",
            "value": [np.nan, *np.sin(np.arange(200) / 6), 1.0],
        }
    )
    path, out = tmp_path / "in.csv", tmp_path / "out.csv"
    frame.to_csv(path, index=False)
    score_csv(fitted, path, out, block_size=1024, progress=False)
    expected = fitted.score(read_csv(path))
    np.testing.assert_array_equal(
        pd.read_csv(out)["anomaly_score"].to_numpy(np.float32), expected["anomaly_score"]
    )


def test_blocks_of_blank_lines_are_skipped(fitted, in_time):
    schema = fitted.schema_
    part = in_time.iloc[:300]
    empty = part.iloc[:0]
    pieces = [
        (np.arange(0), *schema.parse(empty)),
        (np.arange(300), *schema.parse(part)),
        (np.arange(300, 300), *schema.parse(empty, row_offset=300)),
    ]
    rows = np.concatenate([rows for rows, _ in fitted.score_time_ordered(pieces)])
    assert np.array_equal(np.sort(rows), np.arange(300))


@pytest.mark.parametrize(
    ("first", "second", "error", "message"),
    [
        ([0, 3, 6], [9, 3], OutOfTimeOrder, "series 'h0' goes back in time at row 4"),
        ([0, 3, 6], [3, 9], OutOfTimeOrder, "series 'h0' goes back in time at row 3"),
        ([0, 3, 6], [6, 9], InputError, "row 3: timestamp .* repeats within its series"),
        # h1 comes first in the second block, but h0 goes back first in the file
        ([0, 1, 3, 4], [7, 6, 0, 1], OutOfTimeOrder, "series 'h0' goes back in time at row 6"),
    ],
    ids=["within-a-block", "across-blocks", "repeated", "the-files-first"],
)
def test_the_stream_refuses_a_series_going_back_in_time(
    fitted, in_time, first, second, error, message
):
    """Rows by position in ``in_time``: 0, 3, 6, 9 are h0's first points, 1, 4, 7 h1's."""
    schema = fitted.schema_
    n = len(first)
    pieces = [
        (np.arange(n), *schema.parse(in_time.iloc[first])),
        (np.arange(n, n + len(second)), *schema.parse(in_time.iloc[second], row_offset=n)),
    ]
    with pytest.raises(error, match=message):
        list(fitted.score_time_ordered(pieces))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("repeat", r"row 1201: timestamp .* repeats within its series \(line 1203"),
        ("text", r"column 'value', row 4000: 'high' is not a number \(line 4002"),
        ("empty", r"column 'value' has no values in series 'h3'"),
        ("no time", r"column 'timestamp', row 300: the timestamp is missing \(line 302"),
    ],
)
def test_bad_rows_are_named_and_nothing_is_written(fitted, in_time, tmp_path, edit, message):
    frame = in_time.astype({"value": object, "timestamp": object})
    if edit == "no time":
        frame.loc[300, "timestamp"] = None  # as read_csv reads it: the same message
        with pytest.raises(InputError, match=message.split(r" \(")[0]):
            fitted.score(frame)
    elif edit == "repeat":
        frame = pd.concat([frame.iloc[:1201], frame.iloc[[1198]], frame.iloc[1201:]])
    elif edit == "text":
        frame.loc[4000, "value"] = "high"
    else:  # a series with no value at all, in time order among the others
        extra = frame[frame["host"] == "h0"].iloc[:30].assign(host="h3", value=np.nan)
        frame = pd.concat([frame, extra]).sort_values("timestamp", kind="stable")
    path = tmp_path / "in.csv"
    frame.to_csv(path, index=False)
    out = tmp_path / "new" / "out.csv"
    with pytest.raises(InputError, match=message):
        score_csv(fitted, path, out, block_size=4096, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"]
    with pytest.raises(InputError, match=message.split(r" \(line")[0]):
        fitted.score(read_csv(path))


def test_a_series_named_na_is_a_series_on_every_path(fitted, in_time, tmp_path):
    """ "NA" names a series (Namibia): the batch scorer reads ids as written, and read_csv, as
    train, retrain and /invocations use it, reads them so too."""
    path = tmp_path / "na.csv"
    in_time.replace({"host": {"h1": "NA"}}).to_csv(path, index=False)
    score_csv(fitted, path, tmp_path / "out.csv", progress=False)
    frame = read_csv(path, as_text=fitted.schema_.text_columns)
    assert (frame["host"] == "NA").sum() == (in_time["host"] == "h1").sum()
    expected = fitted.score(frame)
    np.testing.assert_array_equal(
        pd.read_csv(tmp_path / "out.csv")["anomaly_score"].to_numpy(np.float32),
        expected["anomaly_score"],
    )
