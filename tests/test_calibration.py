import numpy as np
import pytest

from anomaly.calibration import Calibrator, conformal_rank
from anomaly.errors import InputError


def test_quantile_threshold_is_the_conformal_order_statistic():
    scores = np.arange(1, 100, dtype=float)  # 99 scores: 1..99
    cal = Calibrator(target_fpr=0.05).fit(scores)
    # ceil((99 + 1) * 0.95) = 95th smallest
    assert cal.threshold_ == 95.0


def test_observed_fpr_on_fresh_normals_is_near_target():
    rng = np.random.default_rng(0)
    cal = Calibrator(target_fpr=0.01).fit(rng.standard_normal(5000))
    fpr = cal.flag(rng.standard_normal(200_000)).mean()
    assert 0.006 < fpr < 0.014


def test_p_values_follow_the_formula():
    cal = Calibrator().fit(np.array([1.0, 2.0, 3.0, 4.0]))
    p = cal.p_values(np.array([0.0, 2.0, 2.5, 4.0, 9.0]))
    assert p.tolist() == [5 / 5, 4 / 5, 3 / 5, 2 / 5, 1 / 5]


def test_flagged_rows_are_those_of_p_values_at_most_the_target():
    rng = np.random.default_rng(1)
    for n, alpha in ((999, 0.05), (99, 0.01), (19, 0.05), (400, 0.01)):  # n >= (1 - a) / a
        cal = Calibrator(target_fpr=alpha).fit(rng.standard_normal(n))
        new = np.r_[rng.standard_normal(10_000) * 2, cal.scores_]  # ties with each score too
        np.testing.assert_array_equal(cal.flag(new), cal.p_values(new) <= alpha)


def test_too_small_a_calibration_set_falls_back_to_the_maximum(caplog):
    cal = Calibrator(target_fpr=0.001).fit(np.arange(10.0))
    assert cal.threshold_ == 9.0
    assert "cannot support" in caplog.text


def test_evt_reaches_rates_below_one_over_n():
    rng = np.random.default_rng(2)
    cal = Calibrator(target_fpr=1e-4, method="evt").fit(rng.standard_exponential(2000))
    # The exponential's true 1e-4 quantile is ln(1e4) = 9.21; the sample max is about 7.6.
    assert 7.0 < cal.threshold_ < 12.0
    assert cal.threshold_ > cal.scores_.max()
    fpr = cal.flag(rng.standard_exponential(1_000_000)).mean()
    assert fpr < 5e-4


def test_bad_settings_and_empty_scores_are_refused():
    with pytest.raises(InputError, match="target_fpr"):
        Calibrator(target_fpr=1.5).fit(np.ones(10))
    with pytest.raises(InputError, match="unknown threshold method"):
        Calibrator(method="magic").fit(np.ones(10))
    with pytest.raises(InputError, match="no calibration rows"):
        Calibrator().fit(np.array([]))
    with pytest.raises(InputError, match="at least 100"):
        Calibrator(method="evt").fit(np.ones(10))
    with pytest.raises(InputError, match="not a number"):
        Calibrator().fit(np.array([1.0, np.nan, 2.0]))


def test_evt_settings_it_cannot_meet_are_input_errors_not_libspots():
    with pytest.raises(InputError, match=r"reaches rates below 0\.1, not target_fpr 0\.1"):
        Calibrator(method="evt", target_fpr=0.1).fit(np.arange(500.0))
    with pytest.raises(InputError, match=r"evt_level must be in \(0, 1\), got 1\.0"):
        Calibrator(method="evt", evt_level=1.0).fit(np.arange(500.0))
    with pytest.raises(InputError, match="all alike: no tail to fit"):
        Calibrator(method="evt", target_fpr=0.01).fit(np.ones(500))


def test_evt_refuses_a_tail_too_thin_to_fit_rather_than_flag_every_row():
    """Scores with many ties (repeated readings) leave a few peaks above the tail level; the
    formula then reached below it, below zero, and flagged every row."""
    few = np.r_[np.zeros(196), [1.0, 2.0, 3.0, 4.0]]  # too few peaks to fit
    with pytest.raises(InputError, match=r"has 4 of 200 calibration scores above its tail"):
        Calibrator(target_fpr=0.01, method="evt").fit(few)
    six = np.r_[np.zeros(194), np.arange(1.0, 7.0)]  # fewer than a 4% rate flags (8)
    with pytest.raises(InputError, match=r"has 6 of 200 .*\(many scores are tied\)"):
        Calibrator(target_fpr=0.04, method="evt").fit(six)
    ten = np.r_[np.zeros(190), np.arange(1.0, 11.0)]
    assert Calibrator(target_fpr=0.04, method="evt").fit(ten).threshold_ > 1.0


def test_evt_fits_every_sample_of_the_fewest_scores_it_takes():
    """On untied scores, the fewest calibration rows evt takes (100) fit at the rates it is
    for (the 5 peaks it needs do not refuse them): below 1/n, and up to half its tail."""
    rng = np.random.default_rng(0)
    for draw in (rng.standard_exponential, rng.standard_normal, rng.lognormal):
        for q in (0.001, 0.049):
            for _ in range(50):
                cal = Calibrator(target_fpr=q, method="evt").fit(draw(size=100))
                assert cal.threshold_ > cal.evt_["excess_threshold"]


def test_evt_thresholds_follow_the_scores_scale():
    """libspot's own fit found no tail on scores near 1e-10 (its threshold was then the 0.9
    quantile, flagging 10%); in standard units the threshold scales with the scores."""
    scores = np.random.default_rng(1).standard_exponential(1000)
    unit = Calibrator(target_fpr=1e-4, method="evt").fit(scores)
    assert unit.evt_["sigma"] > 0
    for scale in (1e-10, 1e10):
        scaled = Calibrator(target_fpr=1e-4, method="evt").fit(scores * scale)
        assert scaled.threshold_ == pytest.approx(unit.threshold_ * scale, rel=1e-9)
        assert scaled.evt_["sigma"] == pytest.approx(unit.evt_["sigma"] * scale, rel=1e-9)


def test_the_small_set_warning_suggests_evt_only_where_it_can_run(caplog):
    Calibrator(target_fpr=0.001).fit(np.arange(60.0))
    assert "cannot support" in caplog.text and "evt" not in caplog.text
    caplog.clear()
    Calibrator(target_fpr=0.001).fit(np.arange(500.0))
    assert "The evt threshold (--threshold evt) reaches small rates" in caplog.text


def test_the_conformal_rank_is_not_one_too_high_by_rounding():
    # (9 + 1) * (1 - 0.7) is 3.0000000000000004 in floats: the rank is 3, not 4.
    assert Calibrator(target_fpr=0.7).fit(np.arange(9.0)).threshold_ == 2.0
    assert conformal_rank(10**8 - 1, 0.7) == 30_000_000  # a fixed 1e-9 was too little here
    assert conformal_rank(99, 0.05) == 95 and conformal_rank(100, 0.05) == 96


def test_state_round_trips_through_dict():
    rng = np.random.default_rng(3)
    for method in ("quantile", "evt"):
        cal = Calibrator(target_fpr=0.01, method=method).fit(rng.standard_exponential(500))
        again = Calibrator.from_dict(cal.to_dict())
        assert again.threshold_ == cal.threshold_
        new = rng.standard_exponential(100)
        assert np.array_equal(again.p_values(new), cal.p_values(new))


def test_score_drift_window_psi_and_ks():
    from anomaly.drift import ScoreDrift

    rng = np.random.default_rng(0)
    drift = ScoreDrift(rng.normal(size=2000), window=1000, level=0.2, min_scores=100)
    assert drift.snapshot()["psi"] is None
    for _ in range(3):  # more than the window: only the newest 1,000 count
        drift.update(rng.normal(size=700), np.zeros(700, bool))
    same = drift.snapshot()
    assert same["window"] == 1000 and same["psi"] < 0.05 and same["ks"] < 0.08
    drift.update(rng.normal(loc=1.0, size=1000), np.ones(1000, bool))
    moved = drift.snapshot()
    assert moved["psi"] > 0.2 and moved["ks"] > 0.3 and moved["retrain_suggested"]
    assert moved["flag_rate"] == 1.0


def test_evaluation_thresholds_count_rows_exactly_despite_float_rounding():
    from anomaly.evaluation import _threshold_for_fpr, _threshold_for_recall

    scores = np.arange(100.0)
    # 0.07 * 100 is 7.000000000000001 and 0.29 * 100 28.999999999999996 in floats
    assert (scores > _threshold_for_recall(scores, 0.07)).sum() == 7
    assert (scores > _threshold_for_fpr(scores, 0.29)).sum() == 29
    assert (scores > _threshold_for_recall(scores, 1.0)).sum() == 100
    assert (scores > _threshold_for_fpr(scores, 0.0)).sum() == 0
