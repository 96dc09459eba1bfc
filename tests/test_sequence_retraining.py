"""Retraining a time-series champion on a real sqlite registry: the holdout is the last share of
each series in time; drift promotes the challenger; finetune keeps the champion's inputs and
append adds its data; labelled incidents are compared; bad requests promote nothing."""

import uuid

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from anomaly import registry
from anomaly.data import read_csv
from anomaly.datasets import make_metric_series
from anomaly.errors import InputError
from anomaly.retraining import SchemaMismatch, retrain
from anomaly.sequence import SequenceDetector
from pipelines import retrain as retrain_pipeline

WINDOW = 24


def later(frame: pd.DataFrame, minutes: int) -> pd.DataFrame:
    return frame.assign(timestamp=frame["timestamp"] + pd.Timedelta(minutes, "min"))


def drifted(frame: pd.DataFrame) -> pd.DataFrame:
    """The same cycle, twice as tall and higher up: the old threshold no longer holds."""
    return frame.assign(value=2.0 * frame["value"] + 1.0)


@pytest.fixture(scope="module")
def first_rows() -> pd.DataFrame:
    return make_metric_series(1200, 2)


@pytest.fixture(scope="module")
def fitted(first_rows) -> SequenceDetector:
    return SequenceDetector(series_col="host", exclude=["label"], window=WINDOW, epochs=15).fit(
        first_rows
    )


@pytest.fixture
def champion(fitted, first_rows, tmp_path):
    name = f"series-{uuid.uuid4().hex[:8]}"
    first_rows.to_csv(tmp_path / "first.csv", index=False)
    registry.log_detector(fitted, register=name, sample=first_rows,
                          data_source=str(tmp_path / "first.csv"))  # fmt: skip
    return name


def aliases(name: str) -> dict:
    return {k: str(v) for k, v in MlflowClient().get_registered_model(name).aliases.items()}


def test_the_holdout_is_the_last_share_of_each_series_in_time(fitted):
    frame = make_metric_series(100, 3, seed=4)  # shuffled rows
    frame = frame[~((frame["host"] == "h2") & (frame["timestamp"].dt.minute % 2 == 1))]
    head, tail = fitted.schema_.split_in_time(frame, 0.2)
    assert len(head) + len(tail) == len(frame) and not head.index.intersection(tail.index).size
    for host, rows in frame.groupby("host"):
        n_tail = round(0.2 * len(rows))
        expected = rows.sort_values("timestamp").index[-n_tail:]
        assert sorted(tail.index[tail["host"] == host]) == sorted(expected), host
    assert list(tail.index) == [i for i in frame.index if i in set(tail.index)]  # row order kept


def test_drift_promotes_a_challenger_trained_on_the_past_of_each_series(champion, tmp_path):
    new = drifted(later(make_metric_series(1500, 2, seed=5), 1200)).assign(extra=1.0)
    new.to_csv(tmp_path / "new.csv", index=False)
    result = retrain(champion, read_csv(tmp_path / "new.csv"), epochs=15)  # timestamps as text
    assert result.figures["holdout_rows"] == 600  # the last 20% of each 1,500-point series
    assert result.figures["champion_fpr"] > 0.1  # the old threshold no longer holds
    assert result.figures["challenger_fpr"] <= 0.02
    assert result.figures["holdout_scored"] == 600  # each series' 300 held-out points
    assert result.figures["score_span"] == WINDOW
    flagged = result.figures["challenger_false_positives"]
    assert flagged == round(result.figures["challenger_fpr"] * 600)
    assert result.promoted, result.reasons
    assert aliases(champion) == {"champion": "2", "previous": "1", "challenger": "2"}
    assert result.schema.lines() == []  # the model reads its own columns only
    challenger = registry.load_detector(f"models:/{champion}@champion")
    assert isinstance(challenger, SequenceDetector)
    assert challenger.schema_.values == ("value",)  # the new numeric column is not read
    assert challenger.training_summary_["n_points"] == 2400


def test_finetune_keeps_the_champions_inputs_and_append_adds_its_data(champion, fitted):
    new = drifted(later(make_metric_series(1000, 2, seed=6), 1200))
    tuned = retrain(champion, new, mode="finetune", epochs=5)
    challenger = registry.load_detector(f"models:/{champion}/{tuned.challenger_version}")
    assert challenger.architecture_ == fitted.architecture_
    assert challenger.schema_ == fitted.schema_
    assert np.array_equal(challenger.mean_, fitted.mean_)
    assert np.array_equal(challenger.std_, fitted.std_)
    if tuned.promoted:
        registry.rollback(champion)
    appended = retrain(champion, new, mode="append", epochs=5)
    summary = registry.load_detector(
        f"models:/{champion}/{appended.challenger_version}"
    ).training_summary_
    assert summary["n_points"] == 2400 + 1600  # the champion's points and 80% of the new ones


def test_labelled_incidents_are_compared(champion):
    new = later(make_metric_series(1000, 2, seed=7), 1200)
    incidents = later(make_metric_series(200, 2, seed=8), 3000).assign(
        value=lambda f: f["value"] + 3.0
    )
    result = retrain(champion, new, anomalies=incidents, epochs=15)
    figures = result.figures
    for role in ("champion", "challenger"):
        assert figures[f"{role}_auroc"] > 0.95, figures
        assert figures[f"{role}_recall"] > 0.9, figures
    assert result.promoted, result.reasons


def test_bad_requests_promote_nothing(champion, tmp_path):
    new = later(make_metric_series(400, 2, seed=9), 1200)
    with pytest.raises(SchemaMismatch, match="column 'value' is gone"):
        retrain(champion, new.rename(columns={"value": "reading"}))
    with pytest.raises(InputError, match="anomalies: missing column 'host'"):
        retrain(champion, new, anomalies=new.drop(columns=["host"]))
    short = f"no point of the holdout can be scored: .* one window \\({WINDOW} points\\)"
    with pytest.raises(InputError, match=short):
        retrain(champion, new, holdout=0.05)  # 20 points of each series held out
    incidents = new[new["timestamp"] < new["timestamp"].min() + pd.Timedelta(10, "min")]
    with pytest.raises(InputError, match="no point of the anomalies can be scored"):
        retrain(champion, new, anomalies=incidents)
    with pytest.raises(InputError, match=r"--mode append: the new points of series 'h[01]' start"):
        retrain(champion, make_metric_series(400, 2, seed=10), mode="append")  # not later
    new.drop(columns=["host"]).to_csv(tmp_path / "bad.csv", index=False)
    assert retrain_pipeline.main(["--name", champion, "--data", str(tmp_path / "bad.csv")]) == 2
    # A bad value is named by its row in the file, not in the part it fell in: here the last
    # row, in the held-out share (its row 79 there).
    word = new.sort_values("timestamp", kind="stable").astype({"value": object})
    word.iloc[-1, word.columns.get_loc("value")] = "ERR"
    word.to_csv(tmp_path / "word.csv", index=False)
    last = len(word) - 1
    message = rf"word\.csv: column 'value', row {last}: 'ERR' is not a number \(line {last + 2} "
    with pytest.raises(InputError, match=message):
        retrain(champion, tmp_path / "word.csv")
    assert aliases(champion) == {"champion": "1"}  # nothing trained, nothing registered


def test_warm_start_needs_the_same_model_and_window(fitted, first_rows):
    with pytest.raises(InputError, match="another shape: window 24 there, 12 here"):
        SequenceDetector(series_col="host", window=12).fit(first_rows, warm_start_from=fitted)
    with pytest.raises(InputError, match="cannot warm-start a 'vae' SequenceDetector from a 'ae'"):
        SequenceDetector(series_col="host", model="vae", window=WINDOW).fit(
            first_rows, warm_start_from=fitted
        )


def test_warm_start_continues_from_the_champions_weights(fitted, first_rows):
    settings = {"series_col": "host", "exclude": ["label"], "window": WINDOW, "epochs": 1}
    warm = SequenceDetector(**settings, lr=1e-6).fit(first_rows, warm_start_from=fitted)
    fresh = SequenceDetector(**settings, lr=1e-6).fit(first_rows)
    for name, weights in fitted.module_.state_dict().items():
        assert torch.allclose(warm.module_.state_dict()[name], weights, atol=1e-4), name
    assert not all(
        torch.allclose(fresh.module_.state_dict()[name], weights, atol=1e-4)
        for name, weights in fitted.module_.state_dict().items()
    )


def test_warm_start_needs_the_same_shape(fitted, first_rows):
    with pytest.raises(InputError, match="another shape: hidden 32 there, 16 here"):
        SequenceDetector(series_col="host", window=WINDOW, hidden=16).fit(
            first_rows, warm_start_from=fitted
        )


def test_a_challenger_that_cannot_score_the_holdout_is_refused(champion):
    # Readings every 10 s, then every minute: the challenger learns a 10 s step, so each
    # minute of the holdout is a gap to it, while the champion (a minute apart) scores it.
    rows = make_metric_series(1500, 2, seed=11, shuffle=False)
    steps = np.r_[np.full(1200, 10), np.full(300, 60)]
    rows["timestamp"] = pd.Timestamp("2024-02-01") + pd.to_timedelta(
        np.tile(np.cumsum(steps), 2), "s"
    )
    result = retrain(champion, rows, epochs=2)
    assert not result.promoted
    assert result.reasons[0].startswith("failed: the challenger could not score the gate's data")
    assert aliases(champion) == {"champion": "1", "challenger": "2"}
