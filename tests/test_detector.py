import os

import numpy as np
import pandas as pd
import pytest
from conftest import EXCLUDE
from sklearn.metrics import roc_auc_score

from anomaly import Detector, InputError, ModelFormatError, NotFittedError
from anomaly.datasets import make_service_metrics


@pytest.mark.parametrize("name", ["fitted_ae", "fitted_vae"])
def test_detects_injected_anomalies_at_the_target_rate(name, test_rows, request):
    det = request.getfixturevalue(name)
    result = det.score(test_rows)
    y = test_rows["label"].to_numpy()
    assert roc_auc_score(y, result["anomaly_score"]) > 0.9
    fpr = result["is_anomaly"][y == 0].mean()
    assert 0.001 <= fpr <= 0.03  # target 1%: 1000 calibration rows, 2000 fresh normal rows
    assert list(result.columns) == ["anomaly_score", "is_anomaly", "p_value", "top_features"]
    assert result.index.equals(test_rows.index)


def test_score_is_threshold_then_flag(fitted_ae, test_rows):
    result = fitted_ae.score(test_rows)
    assert (result["is_anomaly"] == (result["anomaly_score"] > fitted_ae.threshold_)).all()
    assert np.array_equal(result["anomaly_score"], fitted_ae.score_samples(test_rows))
    assert result["p_value"].between(0, 1).all()


def test_top_features_name_the_broken_columns(fitted_ae):
    rows = make_service_metrics(300, seed=5)
    rows["latency_ms"] = rows["latency_ms"] * 4  # only latency departs from normal
    top = fitted_ae.score(rows)["top_features"].str.split(";").str[0]
    assert (top == "latency_ms").mean() > 0.9


def test_top_features_are_distinct_columns_most_first(fitted_ae, test_rows):
    names = fitted_ae.schema_.names
    result = fitted_ae.score(test_rows)
    three = result["top_features"].str.split(";")
    assert three.map(len).eq(3).all() and three.map(lambda t: len(set(t)) == 3).all()
    assert three.map(lambda t: set(t) <= set(names)).all()
    one = fitted_ae.score(test_rows, n_top=1)["top_features"]
    assert (one == three.str[0]).all()  # a ranking's head does not depend on its length
    every = fitted_ae.score(test_rows, n_top=len(names) + 5)["top_features"].str.split(";")
    assert every.map(lambda t: sorted(t) == sorted(names)).all()
    # Flagged rows rank by score drops, where columns that change nothing tie at 0, in any order.
    kept = ~result["is_anomaly"]
    assert (every.str[:3] == three)[kept].all()


def test_same_row_same_score_whatever_its_neighbours(fitted_ae, fitted_vae, test_rows):
    for det in (fitted_ae, fitted_vae):
        full = det.score_samples(test_rows)
        for size in (1, 3, 7, 16, 33):
            part = det.score_samples(test_rows.iloc[:size])
            assert np.array_equal(part, full[:size]), size
        shuffled = test_rows.sample(frac=1.0, random_state=3)
        assert np.array_equal(det.score_samples(shuffled), full[shuffled.index])


def test_same_seed_same_model(normal_rows, test_rows):
    def fit():
        return Detector(exclude=EXCLUDE, epochs=3, seed=7).fit(normal_rows)

    assert np.array_equal(fit().score_samples(test_rows), fit().score_samples(test_rows))


def test_save_load_round_trip_gives_identical_scores(fitted_vae, test_rows, tmp_path):
    fitted_vae.save(tmp_path / "model")
    loaded = Detector.load(tmp_path / "model")
    pd.testing.assert_frame_equal(loaded.score(test_rows), fitted_vae.score(test_rows))
    assert loaded.get_params() == {**fitted_vae.get_params(), "device": "cpu"}
    assert loaded.history_ == fitted_vae.history_
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert files == ["detector.json", "weights.safetensors"]  # no pickle anywhere


def test_save_replaces_a_model_directory_but_nothing_else(fitted_ae, tmp_path):
    fitted_ae.save(tmp_path / "model")
    fitted_ae.save(tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ModelFormatError, match="not a model directory"):
        fitted_ae.save(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"
    (tmp_path / "file").write_text("mine")
    with pytest.raises(ModelFormatError, match="is a file, not a model directory"):
        fitted_ae.save(tmp_path / "file")
    previous = os.umask(0o027)
    try:
        fitted_ae.save(tmp_path / "shared")
    finally:
        os.umask(previous)
    assert (tmp_path / "shared").stat().st_mode & 0o777 == 0o750  # not a temp folder's 0o700


def test_a_folder_being_replaced_reads_as_one_save_or_the_other(tmp_path):
    """A reader beside a save (score while train --out rewrites the folder) gets the JSON and
    the weights of one save, never a mix and never a missing folder."""
    import threading

    import torch

    from anomaly.persistence import load_model_dir, save_model_dir

    saves = [({"tag": tag}, {"w": torch.full((64, 64), float(i))}) for i, tag in enumerate("AB")]
    path, stop = tmp_path / "m", threading.Event()
    save_model_dir(path, *saves[0])

    def keep_saving():
        i = 1
        while not stop.is_set():
            save_model_dir(path, *saves[i % 2])
            i += 1

    writer = threading.Thread(target=keep_saving)
    writer.start()
    try:
        reads = [load_model_dir(path) for _ in range(300)]
    finally:
        stop.set()
        writer.join()
    for meta, tensors in reads:
        assert float(tensors["w"][0, 0]) == "AB".index(meta["tag"])
    assert {meta["tag"] for meta, _ in reads} == {"A", "B"}


def test_weights_changed_since_the_save_are_refused(fitted_ae, tmp_path, monkeypatch):
    import anomaly.persistence

    monkeypatch.setattr(anomaly.persistence, "READ_RETRY_S", 0.05)
    fitted_ae.save(tmp_path / "m")
    weights = tmp_path / "m" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # a changed number, still a valid safetensors file
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelFormatError, match=r"is not the weights saved with detector\.json"):
        Detector.load(tmp_path / "m")


def _drop(key):
    return lambda meta: {k: v for k, v in meta.items() if k != key}


def _edit(path, value):
    def edit(meta):
        *parents, last = path
        node = meta
        for key in parents:
            node = node[key]
        node[last] = value(node[last]) if callable(value) else value
        return meta

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_drop("calibration"), r"detector\.json does not describe a model: no 'calibration'"),
        (lambda meta: [meta], r"detector\.json holds a list, not a JSON object"),
        (_edit(["schema"], {}), r"detector\.json does not describe a model: no "),
        (_edit(["params", "bogus"], 1), "does not describe a model: .*'bogus'"),
        (_edit(["calibration", "scores"], lambda s: s[::-1]), "in ascending order"),
        (_edit(["calibration", "scores"], []), "in ascending order"),
        (_edit(["architecture", "latent"], -1), "does not describe a model: .*negative"),
        (_edit(["schema", "columns"], []), "the schema names no columns"),
        (_edit(["schema", "columns", 0, "kind"], "weird"), "of no known kind \\('weird'\\)"),
        (_edit(["typical_contribution"], [1.0]), "has not one value per column"),
        (_edit(["params", "model"], "zzz"), r"detector\.json: unknown model 'zzz'"),
    ],
)
def test_an_edited_or_damaged_json_is_one_model_format_error(fitted_ae, tmp_path, edit, message):
    import json

    fitted_ae.save(tmp_path / "m")
    meta_file = tmp_path / "m" / "detector.json"
    meta_file.write_text(json.dumps(edit(json.loads(meta_file.read_text()))))
    with pytest.raises(ModelFormatError, match=message):
        Detector.load(tmp_path / "m")


def test_settings_refused_at_fit_since_a_model_was_saved_do_not_stop_it_loading(
    fitted_ae, test_rows, tmp_path
):
    """A threshold rule's settings are checked before training it, not when its fitted
    threshold is read: an evt rate past the rule's reach (as a later check may tighten it)."""
    import json

    fitted_ae.save(tmp_path / "m")
    meta_file = tmp_path / "m" / "detector.json"
    meta = json.loads(meta_file.read_text())
    meta["params"] |= {"threshold_method": "evt", "target_fpr": 0.2}
    meta_file.write_text(json.dumps(meta))
    loaded = Detector.load(tmp_path / "m")
    expected = fitted_ae.score_samples(test_rows)
    np.testing.assert_array_equal(loaded.score_samples(test_rows), expected)
    with pytest.raises(InputError, match=r"reaches rates below 0\.1"):
        loaded.fit(test_rows.head(200))  # refitting checks them, as any fit does


def test_without_validation_rows_the_saved_json_is_strict_json(normal_rows, tmp_path):
    import json

    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    det = Detector(exclude=EXCLUDE, epochs=2, validation_fraction=0.0).fit(normal_rows.head(400))
    assert np.isnan(det.history_["val_loss"]).all()
    det.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "detector.json").read_text(), parse_constant=refuse)
    assert meta["history"]["val_loss"] == [None, None]
    assert np.isnan(Detector.load(tmp_path / "m").history_["val_loss"]).all()


def test_scikit_learn_clones_a_detector():
    from sklearn.base import clone

    det = Detector(model="ae", hidden=(16, 8), epochs=3, exclude=EXCLUDE)
    copy = clone(det)
    assert copy is not det and copy.get_params() == det.get_params()
    assert copy.set_params(epochs=5).epochs == 5
    with pytest.raises(InputError, match="Detector has no parameter 'epoch'"):
        copy.set_params(epoch=5)
    from anomaly import ImageDetector, SequenceDetector

    for other in (ImageDetector(size=16, hidden=[8, 16]), SequenceDetector(value_cols=["v"])):
        assert clone(other).get_params() == other.get_params()
    # set_params keeps values as the constructor does, so a clone after it works too
    assert clone(Detector().set_params(hidden=[16, 8])).hidden == (16, 8)
    assert clone(SequenceDetector().set_params(value_cols=["v"])).value_cols == ("v",)
    # one name given alone is that name, not its letters
    assert clone(Detector().set_params(exclude="id")).exclude == ("id",)
    assert clone(SequenceDetector(value_cols="v", exclude="label")).value_cols == ("v",)
    assert SequenceDetector(exclude="label").exclude == ("label",)


def test_scikit_learn_pipelines_and_checks_take_a_detector(normal_rows):
    from sklearn.exceptions import NotFittedError as SklearnNotFitted
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.utils.validation import check_is_fitted

    with pytest.raises(SklearnNotFitted):
        check_is_fitted(Detector())
    numbers = normal_rows.drop(columns=[*EXCLUDE, "region"]).head(300)
    pipeline = make_pipeline(StandardScaler(), Detector(model="linear", epochs=2)).fit(numbers)
    check_is_fitted(pipeline[-1])
    scaled = pipeline[0].transform(numbers)  # an array: its columns are x0, x1, ...
    np.testing.assert_array_equal(
        pipeline.score_samples(numbers), pipeline[-1].score_samples(scaled)
    )


def test_load_refuses_what_is_not_a_model(tmp_path):
    with pytest.raises(ModelFormatError, match="not a model directory"):
        Detector.load(tmp_path)


def test_missing_values_and_unseen_categories_score_without_error(fitted_ae, test_rows):
    rows = test_rows.head(5).astype({"cached": object})
    rows.loc[rows.index[0], "cpu"] = np.nan
    rows.loc[rows.index[1], "region"] = "mars-1"
    rows.loc[rows.index[2], "cached"] = None
    assert np.isfinite(fitted_ae.score_samples(rows)).all()


def test_unfitted_and_bad_input(fitted_ae, test_rows, tmp_path):
    with pytest.raises(NotFittedError):
        Detector().score(test_rows)
    with pytest.raises(NotFittedError):
        Detector().save(tmp_path / "never")
    assert not (tmp_path / "never").exists()
    levels = test_rows.head(2).copy()
    levels.columns = pd.MultiIndex.from_product([["m"], test_rows.columns])
    with pytest.raises(InputError, match="several levels"):
        fitted_ae.score(levels)
    with pytest.raises(InputError, match="missing column 'cpu'"):
        fitted_ae.score(test_rows.drop(columns=["cpu"]))
    bad = test_rows.head(4).astype({"memory": object})
    bad.loc[bad.index[2], "memory"] = "n/a?"
    with pytest.raises(InputError, match=r"column 'memory', row 2: 'n/a\?' is not a number"):
        fitted_ae.score(bad)


def test_bad_parameters_are_refused_at_fit(normal_rows):
    with pytest.raises(InputError, match="unknown model"):
        Detector(model="gan").fit(normal_rows)
    with pytest.raises(InputError, match="needs model='vae'"):
        Detector(model="ae", score="elbo").fit(normal_rows)
    with pytest.raises(InputError, match="'iwae' needs n_samples of at least 1, got 0"):
        Detector(score="iwae", n_samples=0).fit(normal_rows)
    with pytest.raises(InputError, match="n_samples must be at least 0, got -1"):
        Detector(n_samples=-1).fit(normal_rows)
    with pytest.raises(InputError, match="too few"):
        Detector().fit(normal_rows.head(3).drop(columns=["timestamp"]))


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"latent": 0}, "latent must be at least 1, got 0"),
        ({"latent": -1}, "latent must be at least 1, got -1"),
        ({"hidden": (-3, 2)}, r"hidden widths must be at least 1, got \(-3, 2\)"),
        ({"hidden": (0,)}, "hidden widths must be at least 1"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, "dropout must be in"),
        ({"beta": -1.0}, "beta must be at least 0, got -1.0"),
        ({"denoise": -0.5}, "denoise must be at least 0"),
        ({"seed": -1}, "seed must be at least 0"),
        ({"seed": 2**64}, r"seed must be below 2\*\*64"),
        ({"lr": -1.0}, "lr must be above 0, got -1.0"),
        ({"lr": float("nan")}, "lr must be a number, got nan"),
        ({"weight_decay": float("inf")}, "weight_decay must be finite, got inf"),
        ({"denoise": float("nan")}, "denoise must be a number, got nan"),
        ({"max_categories": 2.5}, "max_categories must be a whole number, got 2.5"),
        ({"patience": 1.5}, "patience must be a whole number, got 1.5"),
        ({"latent": 2.5}, "latent must be a whole number, got 2.5"),
        ({"batch_size": True}, "batch_size must be a whole number, got True"),
        ({"hidden": (8.7,)}, r"hidden widths must be at least 1, got \(8\.7,\)"),
        ({"target_fpr": "0.1"}, "target_fpr must be a number, got '0.1'"),
        ({"progress": "yes"}, "progress must be True or False, got 'yes'"),
        ({"validation_fraction": None}, "validation_fraction must be given, not None"),
        ({"hidden": "64,32"}, "hidden must be layer widths, e.g. \\(64, 32\\), not '64,32'"),
        ({"threshold_method": "evt", "target_fpr": 0.2}, "reaches rates below 0.1"),
        ({"threshold_method": "evt"}, "the evt threshold needs at least 100 calibration rows"),
        ({"device": "tpu"}, "unknown device 'tpu'; use auto, cpu, cuda, cuda:N or mps"),
        ({"device": "cpu:abc"}, "unknown device 'cpu:abc'"),
    ],
)
def test_sizes_regularisation_seed_and_device_are_refused_at_fit(normal_rows, params, message):
    with pytest.raises(InputError, match=message):
        Detector(exclude=EXCLUDE, epochs=1, **params).fit(normal_rows.head(50))


def test_truncated_weights_are_a_model_format_error_naming_the_file(fitted_ae, tmp_path):
    fitted_ae.save(tmp_path / "m")
    weights = tmp_path / "m" / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ModelFormatError, match=f"{weights} is not a valid safetensors file"):
        Detector.load(tmp_path / "m")


def test_calibration_data_is_used_when_given(normal_rows):
    cal = make_service_metrics(500, seed=9)
    det = Detector(exclude=EXCLUDE, epochs=2).fit(normal_rows, calibration_data=cal)
    assert det.training_summary_["n_calibration"] == 500
    assert det.training_summary_["n_train"] + det.training_summary_["n_validation"] == 5000


def test_evt_threshold_for_very_small_rates(normal_rows, test_rows):
    det = Detector(exclude=EXCLUDE, epochs=5, target_fpr=1e-4, threshold_method="evt")
    det.fit(normal_rows)
    assert det.threshold_ > det.calibrator_.scores_.max()
    assert det.score(test_rows)["is_anomaly"].mean() < 0.1


def test_linear_preset_and_iwae_score_run(normal_rows, test_rows, tmp_path):
    linear = Detector(model="linear", exclude=EXCLUDE, epochs=5).fit(normal_rows)
    assert linear.architecture_["hidden"] == []
    iwae = Detector(model="vae", score="iwae", n_samples=4, exclude=EXCLUDE, epochs=5)
    scores = iwae.fit(normal_rows).score_samples(test_rows)
    assert np.isfinite(scores).all()
    # The draws are saved with the weights: a model scored with them scores alike when loaded.
    loaded = Detector.load(iwae.save(tmp_path / "iwae"))
    assert loaded.module_.eps.shape == (4, iwae.architecture_["latent"])
    assert np.array_equal(loaded.score_samples(test_rows), scores)


def test_numpy_arrays_are_accepted():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((400, 3))
    det = Detector(epochs=2).fit(X)
    assert det.schema_.names == ["x0", "x1", "x2"]
    assert det.score(X).shape == (400, 4)


def test_flagged_rows_name_the_columns_whose_repair_lowers_the_score(fitted_vae):
    rows = make_service_metrics(300, seed=6)
    rows["bytes_out"] = rows["bytes_out"] * 0.05  # a stalled server: little sent...
    rows["cpu"] = rows["cpu"] * 0.3  # ...and little work done
    result = fitted_vae.score(rows)
    flagged = result[result["is_anomaly"]]
    assert len(flagged) > 50
    first = flagged["top_features"].str.split(";").str[0]
    # The broken relation is between load (requests) and the work done (cpu, bytes_out):
    # repairing any of the three explains the row.
    assert first.isin(["bytes_out", "cpu", "requests"]).mean() > 0.85
    assert first.isin(["bytes_out", "cpu"]).mean() > 0.4


@pytest.mark.parametrize("name", ["fitted_ae", "fitted_vae"])
def test_wild_values_are_flagged_not_lost(name, test_rows, request):
    """A value too large for float32 once made the score NaN, which no threshold flags."""
    det = request.getfixturevalue(name)
    rows = test_rows.head(3).copy()
    rows["latency_ms"] = [1e39, -1e300, 1e12]
    result = det.score(rows)
    assert np.isfinite(result["anomaly_score"]).all() and result["is_anomaly"].all()
    assert (result["top_features"].str.split(";").str[0] == "latency_ms").all()
    assert (result["p_value"] == 1 / (len(det.calibrator_.scores_) + 1)).all()


def test_n_top_below_one_is_refused(fitted_ae, test_rows):
    with pytest.raises(ValueError, match="n_top must be at least 1"):
        fitted_ae.score(test_rows.head(2), n_top=0)
