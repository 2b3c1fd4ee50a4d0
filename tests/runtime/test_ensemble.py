"""deramos_rt.ensemble: members' outputs -> the ensemble's score, mean distribution and spread (numpy only)."""

import subprocess
import sys

import numpy as np
import pytest

from deramos_rt.ensemble import add_member_axis, combine, member_scores
from deramos_rt.errors import DeramosError

BINS = np.linspace(1, 5, 20)


def _distributions(shape, seed=0):
    logits = np.random.default_rng(seed).standard_normal((*shape, len(BINS)))
    e = np.exp(logits)
    return e / e.sum(-1, keepdims=True)


def test_the_ensemble_score_is_the_expected_score_of_the_mean_distribution():
    probs = _distributions((5, 4))  # 5 clips, 4 members
    out = combine(probs, BINS)
    np.testing.assert_allclose(out.probs, probs.mean(axis=1), rtol=0, atol=1e-15)
    np.testing.assert_allclose(out.score, probs.mean(axis=1) @ BINS, rtol=0, atol=1e-12)
    own = np.stack([probs[:, m] @ BINS for m in range(4)], axis=1)  # each member scored on its own
    np.testing.assert_allclose(out.members, own, rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.score, own.mean(axis=1), rtol=0, atol=1e-12)
    np.testing.assert_allclose(out.std, own.std(axis=1), rtol=0, atol=1e-12)
    assert out.std.shape == (5,) and out.probs.shape == (5, 20) and np.all(out.std > 0)


def test_identical_members_have_zero_spread():
    one = _distributions((3, 1), seed=1)
    same = np.repeat(one, 5, axis=1)
    out = combine(same, BINS)
    np.testing.assert_array_equal(out.std, np.zeros(3))
    np.testing.assert_allclose(out.score, one[:, 0] @ BINS, rtol=0, atol=1e-12)
    scores = np.array([[3.2, 3.2, 3.2], [1.5, 1.5, 1.5]])
    np.testing.assert_array_equal(combine(scores, None).std, [0.0, 0.0])


def test_a_single_model_is_an_ensemble_of_one_without_spread():
    probs = _distributions((4,), seed=2)
    out = combine(add_member_axis(probs, BINS), BINS)
    assert out.std is None and out.members.shape == (4, 1)
    np.testing.assert_allclose(out.score, probs.astype(np.float64) @ BINS, rtol=0, atol=1e-12)  # the single model's
    np.testing.assert_array_equal(out.probs, probs)
    scalar = np.array([2.5, 4.0, 1.25], np.float32)
    out = combine(add_member_axis(scalar, None), None)
    assert out.probs is None and out.std is None
    np.testing.assert_array_equal(out.score, scalar.astype(np.float64))


def test_scalar_heads_average_their_scores():
    scores = np.array([[2.0, 3.0, 4.0], [1.0, 1.0, 4.0]])
    out = combine(scores, None)
    np.testing.assert_allclose(out.score, [3.0, 2.0])
    np.testing.assert_allclose(out.std, [np.sqrt(2 / 3), np.sqrt(2.0)])  # ddof 0
    np.testing.assert_array_equal(member_scores(scores, None), scores)


def test_leading_axes_are_kept_and_a_clip_does_not_depend_on_its_batch_mates():
    probs = _distributions((2, 3, 4), seed=3)  # e.g. (clips, windows, members)
    out = combine(probs, BINS)
    assert out.score.shape == (2, 3) and out.probs.shape == (2, 3, 20) and out.members.shape == (2, 3, 4)
    alone = combine(probs[1:2, 2:3], BINS)
    np.testing.assert_array_equal(alone.score[0, 0], out.score[1, 2])
    np.testing.assert_array_equal(alone.std[0, 0], out.std[1, 2])


def test_outputs_without_a_member_axis_or_with_other_bins_are_refused():
    with pytest.raises(DeramosError, match="need a member axis"):
        combine(np.ones(20) / 20, BINS)
    with pytest.raises(DeramosError, match="need a member axis"):
        combine(np.float64(3.0), None)
    with pytest.raises(DeramosError, match="have 10 bins, the bundle has 20"):
        member_scores(np.ones((2, 3, 10)) / 10, BINS)


def test_the_module_needs_numpy_only():
    code = "import sys, deramos_rt.ensemble; print(','.join(m for m in ('torch', 'onnxruntime', 'training') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
