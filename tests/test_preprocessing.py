import numpy as np
import pandas as pd
import pytest

from anomaly.data.tabular import TabularSchema
from anomaly.errors import InputError
from anomaly.preprocessing import TabularPreprocessor


def _fit(frame):
    schema = TabularSchema.infer(frame)
    return schema, TabularPreprocessor(schema).fit(schema.coerce(frame))


def test_standardises_with_training_statistics_and_imputes_median():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0, np.nan, 100.0]})
    schema, pre = _fit(frame)
    stats = pre.stats_["x"]
    assert stats["median"] == 2.5
    filled = np.array([1.0, 2.0, 3.0, 2.5, 100.0])
    assert np.isclose(stats["mean"], filled.mean()) and np.isclose(stats["scale"], filled.std())
    out = pre.transform(schema.coerce(pd.DataFrame({"x": [np.nan]})))
    assert np.isclose(out[0, 0], (2.5 - filled.mean()) / filled.std())


def test_constant_column_keeps_unit_scale():
    schema, pre = _fit(pd.DataFrame({"x": [5.0] * 4, "y": [1.0, 2.0, 3.0, 4.0]}))
    assert pre.stats_["x"]["scale"] == 1.0
    out = pre.transform(schema.coerce(pd.DataFrame({"x": [7.0], "y": [2.0]})))
    assert out[0, 0] == 2.0  # a departure from the constant shows in raw units


def test_a_column_of_tiny_units_is_not_constant():
    """Constant is relative to the values: moles of 1e-13 vary; rounding leaves a constant
    column's spread at about a 1e-16th of its value, whatever its unit."""
    rng = np.random.default_rng(0)
    tiny = rng.normal(5e-13, 1e-13, 200)
    schema, pre = _fit(pd.DataFrame({"x": tiny, "y": np.full(200, 1e-200)}))
    assert np.isclose(pre.stats_["x"]["scale"], tiny.std())
    assert pre.stats_["y"]["scale"] == 1.0
    out = pre.transform(schema.coerce(pd.DataFrame({"x": [5e-12], "y": [1e-200]})))
    assert out[0, 0] > 40  # 5e-12 is 45 standard deviations out


def test_one_hot_with_unseen_category_all_zero():
    schema, pre = _fit(pd.DataFrame({"c": ["a", "b", "a"], "x": [1.0, 2.0, 3.0]}))
    assert pre.n_features_ == 3
    assert pre.feature_owner_.tolist() == [0, 0, 1]
    out = pre.transform(schema.coerce(pd.DataFrame({"c": ["b", "zzz", None], "x": [1.0] * 3})))
    assert out[:, :2].tolist() == [[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]]


def test_state_round_trips_through_dict():
    frame = pd.DataFrame({"c": ["a", "b", "a"], "x": [1.0, np.nan, 3.0], "f": [True, False, True]})
    schema, pre = _fit(frame)
    again = TabularPreprocessor.from_dict(schema, pre.to_dict())
    columns = schema.coerce(frame)
    assert np.array_equal(pre.transform(columns), again.transform(columns))


def test_typical_input_is_medians_and_most_frequent_levels():
    frame = pd.DataFrame({"c": ["b", "a", "b"], "x": [1.0, 2.0, 9.0]})
    schema, pre = _fit(frame)
    typical = pre.typical_input()
    expected = pre.transform(schema.coerce(pd.DataFrame({"c": ["b"], "x": [2.0]})))[0]
    assert np.array_equal(typical, expected)


def test_a_column_without_training_values_is_named():
    frame = pd.DataFrame({"x": [1.0, 2.0, 3.0], "rare": [np.nan, np.nan, 5.0]})
    schema = TabularSchema.infer(frame)
    train = schema.coerce(pd.DataFrame({"x": [1.0, 2.0], "rare": [np.nan, np.nan]}))
    with pytest.raises(InputError, match="column 'rare' has no values in the training rows"):
        TabularPreprocessor(schema).fit(train)


def test_huge_values_standardise_finitely():
    schema, pre = _fit(pd.DataFrame({"x": [1e200, 2e200, 3e200], "y": [1.0, 2.0, 3.0]}))
    assert np.isclose(pre.stats_["x"]["scale"], np.std([1.0, 2.0, 3.0]) * 1e200)
    out = pre.transform(schema.coerce(pd.DataFrame({"x": [1e200, 3e200], "y": [1e300, -1e39]})))
    assert np.allclose(out[:, 0], [-1.2247449, 1.2247449])
    assert np.isfinite(out).all() and out[0, 1] > 1e5 and out[1, 1] < -1e5  # clipped, finite


def test_columns_are_mapped_on_no_more_threads_than_usable_cores(monkeypatch):
    import threading
    import time

    import anomaly.preprocessing as preprocessing

    seen = set()

    def slow_sum(values):
        seen.add(threading.get_ident())
        time.sleep(0.02)  # long enough for a pool of more threads to start them
        return values.sum()

    monkeypatch.setattr(preprocessing, "usable_cores", lambda: 2)
    columns = [np.full(10, float(i)) for i in range(12)]
    assert preprocessing.map_columns(slow_sum, columns) == [10.0 * i for i in range(12)]
    assert len(seen) == 2
