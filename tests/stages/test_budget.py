from __future__ import annotations

import pytest
from helpers import FakeClock

from stages.budget import BudgetConfig, CostModel, Ema, RunBudget


def make_run(limit: float, n_slides: int, **config: object) -> tuple[RunBudget, FakeClock]:
    """A run on a fake clock; its plans use the whole allotment unless ``slack`` is given."""
    clock = FakeClock()
    return RunBudget(limit, n_slides, BudgetConfig(**({"slack": 0.0} | config)), clock), clock


def test_allotment_and_rollover_exact() -> None:
    run, clock = make_run(1030.0, 4, reserve_s=30.0)
    assert (run.remaining(), run.slides_left, run.allotment()) == (1030.0, 4, 250.0)
    slide = run.start_slide()
    assert (slide.start, slide.deadline, slide.allotment) == (1000.0, 1250.0, 250.0)
    clock.advance(100.0)
    assert slide.time_left() == 150.0
    run.finish_slide()
    # 150 s unused roll over: (930 − 30) / 3
    assert (run.slides_left, run.allotment()) == (3, 300.0)
    second = run.start_slide()
    assert second.deadline == 1100.0 + 300.0
    clock.advance(400.0)  # a 100 s overrun is taken from the slides after it
    assert second.time_left() == 0.0
    run.finish_slide()
    assert (run.remaining(), run.allotment()) == (530.0, 250.0)


def test_last_slide_deadline_is_the_run_end_minus_reserve() -> None:
    run, clock = make_run(100.0, 1, reserve_s=30.0)
    slide = run.start_slide()
    assert slide.deadline == slide.run_deadline == 1070.0
    clock.advance(80.0)
    assert (slide.time_left(), run.remaining(), run.allotment()) == (0.0, 20.0, 0.0)


def test_start_and_finish_must_alternate() -> None:
    run, _ = make_run(100.0, 1)
    with pytest.raises(RuntimeError, match="without start_slide"):
        run.finish_slide()
    run.start_slide()
    with pytest.raises(RuntimeError, match="before finish_slide"):
        run.start_slide()
    run.finish_slide()
    with pytest.raises(RuntimeError, match="all 1 slides"):
        run.start_slide()


def test_expand_next_batches_partial_batches_and_max_k() -> None:
    # allotment (70 − 30) / 4 = 10 s
    run, clock = make_run(70.0, 4, reserve_s=30.0, min_k=2, max_k=10, batch_size=4)
    slide = run.start_slide()
    assert slide.expand_next(0, 1.0) == 4  # a full batch fits the 10 s
    clock.advance(8.0)
    assert slide.expand_next(4, 1.0) == 2  # 2 s left: only 2 patches fit
    assert slide.expand_next(4, 3.0) == 0  # one patch would not fit: stop
    assert slide.expand_next(8, 0.5) == 2  # max_k caps the batch
    assert slide.expand_next(10, 0.0) == 0
    assert slide.expand_next(12, 0.0) == 0


def test_expand_next_counts_the_batch_run_once() -> None:
    run, _ = make_run(70.0, 4, reserve_s=30.0, max_k=10, batch_size=4)
    slide = run.start_slide()  # 10 s
    assert slide.expand_next(0, 1.0, 6.0) == 4  # 6 s for the run + 4 × 1 s reads fit exactly
    assert slide.expand_next(0, 1.0, 7.5) == 2  # 2.5 s after the run: 2 reads
    assert slide.expand_next(0, 0.0, 10.0) == 4  # free reads, the run fits exactly
    assert slide.expand_next(0, 0.0, 10.5) == 0  # the run alone does not fit
    with pytest.raises(ValueError, match="batch_s"):
        slide.expand_next(0, 1.0, -1.0)


def test_no_patch_is_granted_past_the_slides_deadline() -> None:
    run, clock = make_run(70.0, 4, reserve_s=30.0, min_k=3, max_k=10, batch_size=4)
    slide = run.start_slide()  # 10 s
    clock.advance(8.0)
    assert slide.expand_next(0, 1.0) == 2  # min_k is 3, but only 2 s are left
    clock.advance(7.0)  # past the slide's 10 s, 25 s before the run's reserve
    assert slide.expand_next(0, 1.0) == 0


def test_plans_leave_the_slack_of_the_allotment_unspent() -> None:
    run, clock = make_run(70.0, 4, reserve_s=30.0, max_k=10, batch_size=4, slack=0.25)
    slide = run.start_slide()  # 10 s, of which 2.5 s are left unplanned
    assert (slide.time_left(), slide.plan_left()) == (10.0, 7.5)
    assert slide.expand_next(0, 2.0) == 3  # 3 patches at 2 s fit the 7.5 s
    assert slide.choose_detector_page(2, 3, 6.0, keep_s=1.5) == 2  # 6 + 1.5 fits 7.5 …
    assert slide.choose_detector_page(2, 3, 24.1, keep_s=1.5) is None  # … 6.025 + 1.5 does not
    clock.advance(8.0)
    assert (slide.time_left(), slide.plan_left(), slide.expand_next(0, 0.1)) == (2.0, 0.0, 0)
    run.finish_slide()  # the 2 s unspent roll over: (62 − 30) / 3
    assert run.allotment() == pytest.approx(32.0 / 3)


def test_the_detector_keeps_time_for_min_k_patches() -> None:
    run, clock = make_run(130.0, 1, reserve_s=30.0, detector_fraction=1.0)
    slide = run.start_slide()  # 100 s
    assert slide.choose_detector_page(2, 4, 100.0) == 2
    assert slide.choose_detector_page(2, 4, 100.0, keep_s=10.0) == 3  # 100 > 90, then 25
    assert slide.choose_detector_page(2, 3, 361.0, keep_s=10.0) is None  # 90.25 s > 90 s
    clock.advance(95.0)
    assert slide.choose_detector_page(2, 4, 4.0, keep_s=5.0) is None  # nothing usable


def test_slides_are_skipped_evenly_when_the_time_pays_for_fewer() -> None:
    # the cheapest path: 0.5 s to prepare + 2 patches read at 0.125 s + their batch at 0.25 s
    config = {"reserve_s": 0.0, "min_k": 2, "prior_prepare_s": 0.5, "prior_patch_s": 0.125}
    config["prior_batch_s"] = 0.25
    run, clock = make_run(10.0, 10, **config)
    assert (run.affordable(), run.allotment()) == (10, 1.0)
    run, clock = make_run(5.0, 10, **config)
    assert (run.affordable(), run.allotment()) == (5, 1.0)  # 5 s for the 5 affordable ones
    pattern = []
    for _ in range(10):
        if run.skip_next():
            pattern.append("skip")
            continue
        slide = run.start_slide()
        pattern.append(slide.allotment)
        clock.advance(slide.allotment)  # each graded slide spends its allotment
        run.finish_slide()
    assert pattern == ["skip", 1.0] * 5
    assert run.slides_left == 0
    run, _ = make_run(0.5, 3, **config)  # not even one slide is affordable: all skipped
    assert [run.skip_next() for _ in range(3)] == [True, True, True]
    with pytest.raises(RuntimeError, match="before finish_slide"):
        busy, _ = make_run(5.0, 10, **config)
        busy.start_slide()
        busy.skip_next()


def test_exhausted_run_gives_the_remaining_slides_fallback_rows() -> None:
    run, clock = make_run(100.0, 5, reserve_s=30.0, min_slide_s=5.0)
    graded, fallback = [], []
    for name in ["a", "b", "c", "d", "e"]:
        if run.exhausted():
            fallback.append(name)
            continue
        run.start_slide()
        clock.advance(30.0)
        run.finish_slide()
        graded.append(name)
    assert (graded, fallback) == (["a", "b", "c"], ["d", "e"])
    assert (run.remaining(), run.slides_left, run.allotment()) == (10.0, 2, 0.0)


def test_exhausted_threshold() -> None:
    # the cheapest path, 8 s, costs more than min_slide_s: 5 s are the threshold
    run, clock = make_run(100.0, 3, reserve_s=30.0, min_slide_s=5.0, prior_prepare_s=8.0)
    clock.advance(65.0)
    assert not run.exhausted()  # exactly 5 s before the reserve
    clock.advance(0.5)
    assert run.exhausted()
    # a path of 0.25 + 4 × 0.125 + 0.25 = 1 s, under min_slide_s: the last seconds still pay
    config = {"prior_prepare_s": 0.25, "prior_patch_s": 0.125, "prior_batch_s": 0.25}
    run, clock = make_run(100.0, 3, reserve_s=30.0, min_slide_s=5.0, **config)
    clock.advance(69.0)
    assert not run.exhausted()  # 1 s before the reserve: one more cheapest path
    clock.advance(0.5)
    assert run.exhausted()


def test_choose_detector_page_escalation() -> None:
    run, clock = make_run(130.0, 1, reserve_s=30.0, detector_fraction=0.5)
    slide = run.start_slide()  # allotment 100 s, the detector may use 50 s
    assert slide.choose_detector_page(2, 8, 40.0) == 2
    assert slide.choose_detector_page(2, 8, 50.0) == 2  # fits exactly
    assert slide.choose_detector_page(2, 8, 200.0) == 3  # 200 / 4 = 50
    assert slide.choose_detector_page(2, 8, 400.0) == 4  # 100, then 25
    assert slide.choose_detector_page(2, 4, 300.0) == 3  # the last page: 75 s > 50, fits 100 s
    assert slide.choose_detector_page(2, 4, 401.0) is None  # 100.25 s > the 100 s left
    clock.advance(90.0)  # 10 s left: page 2 at 40 s does not fit, page 3 at 10 s does
    assert slide.choose_detector_page(2, 4, 40.0) == 3
    assert slide.choose_detector_page(2, 4, 40.1) is None
    # a pass costs at least one batch (a part batch runs padded): 40 / 4 = 10 s, but 12 s
    assert slide.choose_detector_page(2, 4, 40.0, least_s=12.0) is None
    assert slide.choose_detector_page(2, 4, 8.0, least_s=10.0) == 2  # 10 s fits the 10 s left
    with pytest.raises(ValueError, match="out of range"):
        slide.choose_detector_page(4, 4, 1.0)


def test_cost_model_ema_exact() -> None:
    config = BudgetConfig(
        prior_patch_s=0.05, prior_batch_s=0.5, prior_detector_mpx_s=2.0, ema_alpha=0.5
    )
    costs = CostModel(config)
    # prior_prepare_s's default, then 4 reads and one batch of the default 8
    assert costs.slide_floor(4) == 0.25 + 4 * 0.05 + 0.5
    assert (costs.patch.value, costs.detector_seconds(3_000_000)) == (0.05, 6.0)  # the priors
    costs.observe_patches(8, 4.0, 2.0)
    assert (costs.patch.value, costs.batch.value) == (0.5, 2.0)  # the first replaces the prior
    costs.observe_patches(4, 1.0, 1.0)
    assert (costs.patch.value, costs.batch.value) == (0.5 * 0.5 + 0.5 * 0.25, 1.5)
    assert (costs.patch.peak, costs.batch.peak) == (0.5 * 0.5 + 0.5 * 0.25, 1.5)
    # 17 reads and three batches (8 + 8 + 1), at the averages or at the peaks
    assert costs.patch_seconds(17) == 17 * 0.375 + 3 * 1.5
    costs.observe_patches(8, 8.0, 1.5)
    assert costs.patch_seconds(9, peak=True) == 9 * 1.0 + 2 * 1.5
    costs.observe_detector(2_000_000, 3.0)
    assert costs.detector_seconds(4_000_000) == 6.0
    costs.observe_detector(1_000_000, 0.5)
    assert costs.detector.value == 1.0  # (1.5 + 0.5) / 2
    assert costs.hotspot_seconds(2_000_000) == 0.1  # prior_hotspots_mcell_s's default
    costs.observe_hotspots(4_000_000, 1.0)
    assert costs.hotspot_seconds(2_000_000) == 0.5
    with pytest.raises(ValueError, match="n >= 1"):
        costs.observe_patches(0, 1.0, 1.0)
    ema = Ema(10.0, 0.25)
    for x in (4.0, 8.0, 8.0):
        ema.update(x)
    assert (ema.value, ema.count) == (4.0 * 0.75 * 0.75 + 8.0 * (1 - 0.75 * 0.75), 3)
    peak = Ema(1.0, 0.5)
    peaks = []
    for x in (2.0, 6.0, 2.0, 2.0, 10.0):
        peak.update(x)
        peaks.append(peak.peak)
    assert peaks == [2.0, 6.0, 4.0, 3.0, 10.0]  # up at once, down at the average's pace


def test_the_slide_floor_prepares_at_the_peak() -> None:
    costs = CostModel(BudgetConfig(prior_patch_s=0.05, prior_batch_s=0.1, ema_alpha=0.5))
    for seconds in (0.1, 0.3, 0.1):
        costs.observe_prepare(seconds)
    assert (costs.prepare.value, costs.prepare.peak) == pytest.approx((0.15, 0.2))
    assert costs.slide_floor(4) == pytest.approx(0.2 + 4 * 0.05 + 0.1)


def test_decoding_is_measured_per_megapixel() -> None:
    costs = CostModel(BudgetConfig(prior_decode_mpx_s=0.01, ema_alpha=0.5))
    assert costs.decodable_pixels(2.0) == 200_000_000  # at the prior, 100 Mpx a second
    costs.observe_decode(50_000_000, 2.0)  # 0.04 s a megapixel
    costs.observe_decode(25_000_000, 0.5)  # 0.02 s: the average (0.04 + 0.02) / 2
    assert costs.decode.value == pytest.approx(0.03)
    assert costs.decodable_pixels(3.0) == pytest.approx(100_000_000)
    assert costs.decodable_pixels(-1.0) == 0.0
    with pytest.raises(ValueError, match="pixels >= 1"):
        costs.observe_decode(0, 1.0)


def test_run_budget_shares_one_cost_model() -> None:
    run, _ = make_run(100.0, 2, prior_patch_s=0.25)
    run.costs.observe_patches(2, 1.0, 0.5)
    assert (run.costs.patch.value, run.costs.batch.value) == (0.5, 0.5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"reserve_s": -1.0},
        {"min_k": 5, "max_k": 4},
        {"max_k": 0, "min_k": 0},
        {"batch_size": 0},
        {"detector_fraction": 0.0},
        {"tissue_fraction": 1.5},
        {"prior_decode_mpx_s": 0.0},
        {"min_slide_s": -1.0},
        {"prior_patch_s": 0.0},
        {"prior_batch_s": -1.0},
        {"ema_alpha": 1.5},
    ],
)
def test_config_validation(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="budget"):
        BudgetConfig(**kwargs)


def test_run_budget_validation() -> None:
    with pytest.raises(ValueError, match="time_limit_s"):
        RunBudget(0.0, 3, BudgetConfig())
