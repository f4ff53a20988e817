from __future__ import annotations

import math

import numpy as np
import pytest

from stages.decision import (
    DEFAULT_PRIOR,
    Decision,
    DecisionConfig,
    decide,
    decide_slide,
    expected_costs,
    max_grade_cdf,
    slide_probabilities,
)

UNIFORM = (0.25, 0.25, 0.25, 0.25)
NONE = np.zeros((0, 4))


def test_expected_costs_exact_and_argmin_not_argmax() -> None:
    p = np.array([0.0, 0.45, 0.0, 0.55])
    # E[c] = Σ_t p(t)·ERROR_MATRIX[t, c]
    costs = [0.45 * 0.1 + 0.55 * 1.0, 0.55 * 0.7, 0.45 * 0.3 + 0.55 * 0.3, 0.45 * 0.7]
    assert expected_costs(p) == pytest.approx(costs, abs=1e-15)  # 0.595, 0.385, 0.3, 0.315
    assert int(np.argmax(p)) == 3 and decide(p) == 2
    q = np.array([0.45, 0.0, 0.0, 0.55])
    assert expected_costs(q) == pytest.approx([0.55, 0.43, 0.48, 0.45], abs=1e-15)
    assert decide(q) == 1  # "benign or invasive" is best answered "low-grade"
    batch = expected_costs(np.stack([p, q]))
    assert batch.shape == (2, 4)
    assert batch.tolist() == [expected_costs(p).tolist(), expected_costs(q).tolist()]


def test_decide_ties_go_to_the_lower_class() -> None:
    assert decide(np.array([0.5, 0.5, 0.0, 0.0])) == 0  # costs 0.05, 0.05, 0.5, 0.85
    assert decide(np.array([0.0, 0.0, 0.5, 0.5])) == 2  # costs 0.85, 0.5, 0.15, 0.15
    with pytest.raises(ValueError, match="one"):
        decide(np.ones((2, 4)) / 4)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        expected_costs(np.ones(3) / 3)


def test_max_grade_cdf_two_patches_by_hand() -> None:
    patches = np.array([[0.5, 0.25, 0.25, 0.0], UNIFORM])
    # F_1 = (0.5, 0.75, 1), F_2 = (0.25, 0.5, 0.75); F = F_1 · F_2 = (0.125, 0.375, 0.75),
    # so P(max = c) = (0.125, 0.25, 0.375, 0.25)
    assert max_grade_cdf(patches, 1.0).tolist() == [0.125, 0.375, 0.75]
    assert max_grade_cdf(patches, 2.0).tolist() == [0.125**2, 0.375**2, 0.75**2]
    # Pooled with a uniform prior, logits (−ln 3, 0, ln 3) + (−ln 7, −ln 5/3, ln 3)
    # = (−ln 21, −ln 5/3, 2 ln 3) → F = (1/22, 3/8, 9/10).
    config = DecisionConfig(prior=UNIFORM, patch_weight=1.0)
    expected = [1 / 22, 3 / 8 - 1 / 22, 9 / 10 - 3 / 8, 1 / 10]
    assert slide_probabilities(patches, NONE, config) == pytest.approx(expected, abs=1e-12)


def test_pooling_with_the_prior_by_hand() -> None:
    config = DecisionConfig(prior=UNIFORM, patch_weight=1.0, heat_weight=0.5)
    # prior CDF (1/4, 1/2, 3/4): logits (−ln 3, 0, ln 3); patch CDF (3/4, 3/4, 3/4): ln 3 each.
    # Sum (0, ln 3, 2 ln 3) → F = (1/2, 3/4, 9/10) → P = (0.5, 0.25, 0.15, 0.1).
    patch = np.array([[0.75, 0.0, 0.0, 0.25]])
    assert slide_probabilities(patch, NONE, config) == pytest.approx(
        [0.5, 0.25, 0.15, 0.1], abs=1e-12
    )
    # The same item as a heatmap hotspot counts half: logits (−½ ln 3, ½ ln 3, 3/2 ln 3).
    s3 = math.sqrt(3)
    cdf = [1 / (1 + s3), s3 / (1 + s3), 3 * s3 / (1 + 3 * s3)]
    expected = np.diff([0.0, *cdf, 1.0])
    assert slide_probabilities(NONE, patch, config) == pytest.approx(expected, abs=1e-12)


def test_the_three_sources() -> None:
    config = DecisionConfig()
    prior = decide_slide(NONE, NONE, config)
    assert prior.source == "prior"
    assert prior.probs == pytest.approx(DEFAULT_PRIOR, abs=1e-15)
    assert prior.cls == decide(np.array(DEFAULT_PRIOR))
    # a hotspot at F = ½ everywhere has no say: the heatmap-only answer is the prior
    heat = decide_slide([], [[0.5, 0.0, 0.0, 0.5]], config)
    assert heat.source == "heatmap"
    assert heat.probs == pytest.approx(DEFAULT_PRIOR, abs=1e-12)
    invasive = decide_slide([[0.0, 0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0, 0.0]], config)
    assert invasive == Decision(invasive.probs, 3, "patches")
    # CDFs clipped to ε: logit F(c) = logit F_π(c) + logit ε + ½ logit(1 − ε) = … − ½ ln(1/ε − 1)
    shift = -0.5 * math.log(1 / config.eps - 1)
    cdf = [
        1 / (1 + math.exp(-(math.log(f / (1 - f)) + shift))) for f in np.cumsum(DEFAULT_PRIOR)[:3]
    ]
    assert invasive.probs == pytest.approx(np.diff([0.0, *cdf, 1.0]), abs=1e-12)


def test_probabilities_are_distributions() -> None:
    rng = np.random.default_rng(0)
    config = DecisionConfig(heat_weight=2.0, patch_temper=0.5)
    for n, m in [(0, 1), (1, 0), (3, 7), (32, 32)]:
        probs = slide_probabilities(
            rng.dirichlet(np.ones(4), n), rng.dirichlet(np.ones(4), m), config
        )
        assert probs.dtype == np.float64 and probs.shape == (4,)
        assert (probs >= 0).all()
        assert probs.sum() == pytest.approx(1.0, abs=1e-12)


def test_adding_a_patch_never_lowers_p3() -> None:
    rng = np.random.default_rng(1)
    confident = np.array([[1e-6, 1e-6, 1e-6, 1 - 3e-6]])
    for _ in range(300):
        config = DecisionConfig(
            prior=tuple(rng.dirichlet(np.ones(4))),
            patch_weight=rng.uniform(0, 2),
            heat_weight=rng.uniform(0, 2),
            patch_temper=rng.uniform(0.1, 2),
            heat_temper=rng.uniform(0.1, 2),
        )
        patches = rng.dirichlet(np.full(4, 0.3), rng.integers(0, 6))
        heat = rng.dirichlet(np.full(4, 0.3), rng.integers(0, 6))
        before = slide_probabilities(patches, heat, config)
        for extra in (confident, rng.dirichlet(np.full(4, 0.3), 1)):
            # a first patch is a new voter: only one whose tempered CDF is ≤ ½ must push up
            first_vote = max_grade_cdf(extra, config.patch_temper)
            if len(patches) == 0 and (first_vote > 0.5).any():
                assert extra is not confident
                continue
            after = slide_probabilities(np.concatenate([patches, extra]), heat, config)
            assert after[3] >= before[3] - 1e-12
            # more generally the slide moves up in stochastic order: every CDF value drops
            assert (np.cumsum(after)[:3] <= np.cumsum(before)[:3] + 1e-12).all()


def test_benign_patches_overrule_an_uncertain_heatmap() -> None:
    config = DecisionConfig()
    heat = np.tile(UNIFORM, (5, 1))
    benign = np.tile([0.997, 0.001, 0.001, 0.001], (4, 1))
    heat_only = slide_probabilities(NONE, heat, config)
    with_patches = slide_probabilities(benign, heat, config)
    assert with_patches[2:].sum() < heat_only[2:].sum() / 10


def test_input_and_config_validation() -> None:
    config = DecisionConfig()
    with pytest.raises(ValueError, match="patch_probs must be"):
        slide_probabilities(np.ones((2, 3)) / 3, NONE, config)
    with pytest.raises(ValueError, match="heat_probs rows"):
        slide_probabilities(NONE, [[0.5, 0.5, 0.5, 0.5]], config)
    with pytest.raises(ValueError, match="sum to 1"):
        DecisionConfig(prior=(0.5, 0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="positive"):
        DecisionConfig(prior=(1.0, 0.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="heat_weight"):
        DecisionConfig(heat_weight=-1.0)
    with pytest.raises(ValueError, match="patch_temper"):
        DecisionConfig(patch_temper=0.0)
    with pytest.raises(ValueError, match="eps"):
        DecisionConfig(eps=0.0)
