"""Checks of guided_diffusion.metrics.stats against closed forms, NumPy/SciPy and brute force."""

from __future__ import annotations

import contextlib
import time
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from guided_diffusion.metrics.stats import (FeatureStats, class_accuracy, frechet_distance, inception_score,
                                            manifold_radii, precision_recall)

try:
    from threadpoolctl import threadpool_limits  # ships with scikit-learn
except ImportError:  # pragma: no cover
    threadpool_limits = None


@pytest.fixture
def one_thread():
    """One BLAS and one torch thread: on two shared cores, two threads contend and run 2-3x slower."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1) if threadpool_limits else contextlib.nullcontext():
        yield
    torch.set_num_threads(previous)


def _correlated_features(rng: np.random.Generator, n: int, d: int, shift: float = 0.5) -> np.ndarray:
    # Like Inception pool3 activations: a decaying spectrum, shared low-rank factors, a non-zero mean and a
    # ReLU. Low-rank mixing keeps the 2048-d case cheap.
    rank = min(d, 64)
    factors = rng.standard_normal((n, rank)) @ (rng.standard_normal((rank, d)) / np.sqrt(rank))
    scale = 1 / np.sqrt(1 + np.arange(d) / 8)
    return np.maximum(rng.standard_normal((n, d)) * scale + factors + shift, 0)


def _random_rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------------------------- FeatureStats
def test_feature_stats_matches_numpy_for_uneven_batches():
    rng = np.random.default_rng(1)
    data = rng.standard_normal((203, 7)) * rng.uniform(0.1, 3, 7) + 50.0  # a large mean tests the shift
    cuts = np.sort(rng.choice(np.arange(1, 203), 9, replace=False))
    stats = FeatureStats()
    for i, part in enumerate(np.split(data, cuts)):
        stats.update(torch.from_numpy(part) if i % 2 else part)  # torch and numpy batches mix
    stats.update(np.zeros((0, 7)))
    assert stats.count == 203 and stats.dim == 7
    np.testing.assert_allclose(stats.mean(), data.mean(0), rtol=0, atol=1e-10)
    np.testing.assert_allclose(stats.cov(), np.cov(data, rowvar=False), rtol=0, atol=1e-10)
    shuffled = FeatureStats()
    shuffled.update(data[rng.permutation(203)])
    np.testing.assert_allclose(shuffled.cov(), stats.cov(), rtol=0, atol=1e-10)


def test_feature_stats_merge_and_kept_features():
    rng = np.random.default_rng(2)
    a, b, c = rng.standard_normal((30, 5)) + 3, rng.standard_normal((11, 5)) - 7, rng.standard_normal((4, 5))
    left, right, empty = (FeatureStats(keep_features=True) for _ in range(3))
    left.update(a)
    right.update(b)
    right.update(torch.from_numpy(c).float())
    assert empty.merge(left) is empty and left.merge(right) is left
    everything = np.concatenate([a, b, c])
    for stats in (left, empty.merge(right)):
        np.testing.assert_allclose(stats.mean(), everything.mean(0), atol=1e-10)
        np.testing.assert_allclose(stats.cov(), np.cov(everything, rowvar=False), atol=1e-10)
    feats = left.features()
    assert feats.dtype == np.float32 and feats.shape == (45, 5)
    np.testing.assert_allclose(feats, everything.astype(np.float32))
    assert left.to("cpu") is left


def test_feature_stats_errors():
    one = FeatureStats()
    one.update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        one.cov()
    with pytest.raises(ValueError, match="dimension"):
        one.update(np.ones((2, 4)))
    with pytest.raises(ValueError, match="not kept"):
        one.features()
    with pytest.raises(ValueError, match="no features"):
        FeatureStats().mean()


# ---------------------------------------------------------------------------------------- Fréchet distance
@pytest.mark.parametrize("method", ["eigh", "scipy"])
def test_fd_one_dimensional_closed_form(method):
    # The 1×1 case also exercises SciPy 1.17's bare-array return from sqrtm.
    value = frechet_distance([1.5], [[4.0]], [-0.5], [[0.25]], method=method)
    assert value == pytest.approx((1.5 + 0.5) ** 2 + (2.0 - 0.5) ** 2, rel=1e-12)
    assert frechet_distance(np.float64(2.0), 9.0, np.float64(0.0), 1.0, method=method) == pytest.approx(8.0)


@pytest.mark.parametrize("method", ["eigh", "scipy"])
def test_fd_diagonal_closed_form(method):
    rng = np.random.default_rng(3)
    mu1, mu2 = rng.standard_normal(12), rng.standard_normal(12)
    a, b = rng.uniform(0.1, 4, 12), rng.uniform(0.1, 4, 12)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    value = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    assert value == pytest.approx(expected, rel=1e-10)


def test_fd_non_commuting_gaussians():
    rng = np.random.default_rng(4)
    d = 16
    sigma1 = np.diag(rng.uniform(0.5, 3, d))
    rot = _random_rotation(rng, d)
    sigma2 = rot @ np.diag(rng.uniform(0.1, 5, d)) @ rot.T
    assert not np.allclose(sigma1 @ sigma2, sigma2 @ sigma1)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    # Independent route: the eigenvalues of Σ₁Σ₂ (real, positive) give tr (Σ₁Σ₂)^{1/2} directly.
    eig = np.linalg.eigvals(sigma1 @ sigma2)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(eig.real).sum()
    via_sqrtm = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2) \
        - 2 * np.trace(scipy.linalg.sqrtm(sigma1 @ sigma2)).real
    assert via_sqrtm == pytest.approx(expected, rel=1e-10)
    for method in ("eigh", "scipy"):
        assert frechet_distance(mu1, sigma1, mu2, sigma2, method=method) == pytest.approx(expected, rel=1e-6)


def test_fd_identity_shift_and_symmetry():
    rng = np.random.default_rng(5)
    x, y = _correlated_features(rng, 600, 48), _correlated_features(rng, 500, 48, shift=0.3)
    mx, sx, my, sy = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    shift = rng.standard_normal(48)
    for method in ("eigh", "scipy"):
        assert abs(frechet_distance(mx, sx, mx, sx, method=method)) < 1e-6
        base = frechet_distance(mx, sx, my, sy, method=method)
        assert base > 0
        assert frechet_distance(my, sy, mx, sx, method=method) == pytest.approx(base, rel=1e-9)
        # Moving one set by c changes only the mean term: ‖μx + c − μy‖² − ‖μx − μy‖².
        moved = frechet_distance(mx + shift, sx, my, sy, method=method)
        assert moved - base == pytest.approx(np.sum(shift ** 2) + 2 * shift @ (mx - my), rel=1e-9)
        assert frechet_distance(mx + shift, sx, mx, sx, method=method) == pytest.approx(np.sum(shift ** 2),
                                                                                      rel=1e-9)


def test_fd_of_a_set_with_itself_at_2048_dims(one_thread):
    rng = np.random.default_rng(6)
    feats = rng.standard_normal((2500, 2048)).astype(np.float32) + 0.3
    stats = FeatureStats()
    stats.update(torch.from_numpy(feats))
    mu, sigma = stats.mean(), stats.cov()
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-6


def test_fd_eigh_and_scipy_agree_on_realistic_covariances(one_thread):
    rng = np.random.default_rng(7)
    x, y = _correlated_features(rng, 1500, 256), _correlated_features(rng, 1500, 256, shift=0.4)
    args = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert frechet_distance(*args, method="eigh") == pytest.approx(frechet_distance(*args, method="scipy"),
                                                                   rel=1e-6)


def test_fd_input_errors_and_warnings():
    with pytest.raises(ValueError, match=r"\(3,\) vs \(4,\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match=r"\(3, 3\) vs \(2, 2\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="newton")
    bad = np.eye(2)
    bad[0, 1] = np.nan
    with pytest.warns(UserWarning, match="non-finite"):
        assert np.isnan(frechet_distance(np.zeros(2), bad, np.zeros(2), np.eye(2)))


@pytest.mark.slow
def test_fd_speed_eigh_vs_scipy_at_2048_dims(one_thread):
    # ~15 s with one thread (two contending threads took 60+ s for sqrtm alone on the shared 2-core box).
    rng = np.random.default_rng(8)
    x, y = _correlated_features(rng, 4000, 2048), _correlated_features(rng, 4000, 2048, shift=0.4)
    args = (x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    start = time.perf_counter()
    fd_eigh = frechet_distance(*args, method="eigh")
    t_eigh = time.perf_counter() - start
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SciPy may report an ill-conditioned product
        fd_scipy = frechet_distance(*args, method="scipy")
    t_scipy = time.perf_counter() - start
    print(f"\nFD at 2048-d, 1 thread: eigh {t_eigh:.2f} s ({fd_eigh:.10g}), "
          f"scipy sqrtm {t_scipy:.2f} s ({fd_scipy:.10g})")
    assert fd_eigh == pytest.approx(fd_scipy, rel=1e-6)
    assert t_eigh < t_scipy


# ------------------------------------------------------------------------------------------ Inception Score
def test_is_uniform_is_one_and_one_hot_is_class_count():
    mean, std = inception_score(np.zeros((100, 7)), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    classes = 6
    labels = np.tile(np.arange(classes), 10)  # every contiguous split of 6 holds each class once
    logits = 1e4 * np.eye(classes)[labels]  # softmax underflows to exact zeros: xlogy keeps them finite
    mean, std = inception_score(torch.from_numpy(logits).float(), splits=10)
    assert mean == pytest.approx(classes, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_is_bounded_by_class_count():
    rng = np.random.default_rng(9)
    mean, std = inception_score(rng.standard_normal((500, 20)) * 4, splits=5)
    assert 1.0 <= mean <= 20.0 and std >= 0


def test_is_splits_are_contiguous():
    classes = 2
    sorted_logits = 1e4 * np.eye(classes)[np.repeat(np.arange(classes), 10)]
    alternating = 1e4 * np.eye(classes)[np.tile(np.arange(classes), 10)]
    assert inception_score(sorted_logits, splits=2)[0] == pytest.approx(1.0)
    assert inception_score(alternating, splits=2)[0] == pytest.approx(2.0)
    # N=10, 3 splits: rows [0,3), [3,6), [6,10) (np.array_split would give [0,4), [4,7), [7,10) -> 1, 3, 3).
    labels = np.array([0, 0, 0, 0, 1, 2, 0, 1, 2, 3])
    mean, std = inception_score(1e4 * np.eye(4)[labels], splits=3)
    assert mean == pytest.approx(8 / 3) and std == pytest.approx(np.std([1, 3, 4]))
    with pytest.raises(ValueError, match="split"):
        inception_score(np.zeros((3, 2)), splits=4)


# ------------------------------------------------------------------------------------- Precision / recall
def _mixture(rng: np.random.Generator, n: int, modes: np.ndarray) -> np.ndarray:
    angles = 2 * np.pi * np.arange(10) / 10
    centres = 10 * np.stack([np.cos(angles), np.sin(angles)], 1)
    return (centres[rng.choice(modes, n)] + 0.3 * rng.standard_normal((n, 2))).astype(np.float32)


def test_pr_identical_and_disjoint_sets():
    rng = np.random.default_rng(10)
    x = rng.standard_normal((500, 8)).astype(np.float32)
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(torch.from_numpy(x), x + 100) == (0.0, 0.0)


def test_pr_mode_dropping_mixture():
    rng = np.random.default_rng(11)
    ref = _mixture(rng, 2000, np.arange(10))
    gen = _mixture(rng, 2000, np.arange(5))
    precision, recall = precision_recall(ref, gen)
    assert precision > 0.9 and 0.4 < recall < 0.6


def test_pr_narrow_and_wide_generators():
    # 8-d: low enough that k-NN balls cover a same-distribution sample, high enough for a clear effect.
    rng = np.random.default_rng(12)
    ref = rng.standard_normal((2000, 8)).astype(np.float32)
    narrow = 0.5 * rng.standard_normal((2000, 8)).astype(np.float32)
    precision, recall = precision_recall(ref, narrow)
    assert precision > 0.95 and recall < 0.35
    precision, recall = precision_recall(ref, 4 * narrow)  # twice as wide: the roles flip
    assert precision < 0.35 and recall > 0.95


def test_pr_block_size_invariance_and_brute_force_radii():
    rng = np.random.default_rng(13)
    ref = rng.standard_normal((60, 3)).astype(np.float32)
    gen = rng.standard_normal((45, 3)).astype(np.float32)
    assert precision_recall(ref, gen, batch_size=7) == precision_recall(ref, gen, batch_size=10000)
    np.testing.assert_allclose(manifold_radii(ref, k=3, batch_size=7), manifold_radii(ref, k=3), rtol=1e-5)
    x64 = ref.astype(np.float64)
    brute = np.sort(((x64[:, None] - x64[None]) ** 2).sum(-1), axis=1)
    for k in (1, 3, 5):
        np.testing.assert_allclose(manifold_radii(ref, k=k, batch_size=7), brute[:, k], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="k = 60"):
        manifold_radii(ref, k=60)
    with pytest.raises(ValueError, match="3-d"):
        precision_recall(ref, gen[:, :2])


def test_pr_fp16_matches_float32():
    # float16's norm trick cancels badly when radii are small against the norms (ulp 0.06 at 100), so use
    # data whose k-NN radii are comparable to its norms, as for Inception features.
    rng = np.random.default_rng(14)
    ref = rng.standard_normal((1000, 16)).astype(np.float32)
    gen = (0.8 * rng.standard_normal((1000, 16)) + 0.3).astype(np.float32)
    r32, r16 = manifold_radii(ref), manifold_radii(ref, fp16=True)
    np.testing.assert_allclose(r16, r32, rtol=0.02)
    p32, rc32 = precision_recall(ref, gen)
    p16, rc16 = precision_recall(ref, gen, fp16=True)
    assert abs(p16 - p32) < 0.02 and abs(rc16 - rc32) < 0.02
    # Norms beyond float16's range overflow to inf; the float32 fallback must then give float32's answer.
    big_ref, big_gen = ref * 100, gen * 100
    assert precision_recall(big_ref, big_gen, fp16=True) == precision_recall(big_ref, big_gen)


# ------------------------------------------------------------------------------------------ class accuracy
def test_class_accuracy_hand_example():
    logits = torch.tensor([[0.1, 0.7, 0.2],
                           [0.5, 0.3, 0.2],
                           [0.2, 0.3, 0.5],
                           [0.6, 0.1, 0.3]])
    labels = torch.tensor([1, 1, 0, 1])
    # Row 0 right at top-1; row 1 right at top-2; row 2 right only at top-3; row 3 wrong until top-3.
    assert class_accuracy(logits, labels) == {"top1": 0.25, "top5": 1.0}
    assert class_accuracy(logits.numpy(), labels.numpy(), topk=(1, 2)) == {"top1": 0.25, "top2": 0.5}
    with pytest.raises(ValueError, match="labels"):
        class_accuracy(logits, labels[:3])


def test_eigh_failure_falls_back_to_scipy_with_a_warning(monkeypatch):
    import guided_diffusion.metrics.stats as st

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 6)), rng.normal(size=(50, 6)) + 0.3
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = st.frechet_distance(a.mean(0), s1, b.mean(0), s2, method="scipy")

    def broken(*args, **kwargs):
        raise np.linalg.LinAlgError("Eigenvalues did not converge")

    monkeypatch.setattr(st.np.linalg, "eigh", broken)
    with pytest.warns(UserWarning, match="falling back"):
        got = st.frechet_distance(a.mean(0), s1, b.mean(0), s2)
    assert got == pytest.approx(expected, rel=1e-9)
