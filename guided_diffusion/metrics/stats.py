"""The statistics behind ADM's evaluator: feature moments, Fréchet distance, Inception Score,
k-NN precision/recall and classifier accuracy.

The definitions follow ``evaluations/evaluator.py`` of openai/guided-diffusion (covariances with ddof=1,
bias-free logits in contiguous IS splits, pool3 features with k = 3 and squared distances for P/R), with
two numerically safer defaults: FD through a symmetric eigendecomposition instead of ``scipy.linalg.sqrtm``
(``method="scipy"`` keeps ADM's recipe) and P/R distances in float32 (``fp16=True`` keeps ADM's).
"""

from __future__ import annotations

import warnings
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import scipy.linalg
import scipy.special
import torch

ArrayLike = Union[np.ndarray, torch.Tensor]


def _to_numpy64(x: ArrayLike) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _to_2d_tensor(x: ArrayLike, name: str, dtype: torch.dtype, device=None) -> torch.Tensor:
    t = x.detach() if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if t.ndim != 2:
        raise ValueError(f"{name} must be a (N, D) array of features, got shape {tuple(t.shape)}")
    return t.to(device=t.device if device is None else device, dtype=dtype)


class FeatureStats:
    """Running mean and covariance (ddof=1, like ``np.cov``) of (N, D) feature batches, in float64.

    Sums are taken around a shift (the first batch's mean) because the covariance is shift-invariant and
    Σxxᵀ − Nμμᵀ on raw features loses digits when |μ| is large against the spread. The sums live on the
    device of the first batch so a CUDA evaluation never copies features back per batch.
    """

    def __init__(self, keep_features: bool = False):
        self.keep_features = keep_features
        self.count = 0
        self._shift: Optional[torch.Tensor] = None
        self._sum: Optional[torch.Tensor] = None  # Σ (x − shift)
        self._sum_outer: Optional[torch.Tensor] = None  # Σ (x − shift)(x − shift)ᵀ
        self._kept: List[np.ndarray] = []

    @property
    def dim(self) -> Optional[int]:
        return None if self._shift is None else int(self._shift.numel())

    def update(self, x: ArrayLike) -> None:
        """Add a batch of features, shape (N, D)."""
        device = None if self._shift is None else self._shift.device
        x = _to_2d_tensor(x, "features", torch.float64, device)
        if x.shape[0] == 0:
            return
        if self._shift is None:
            self._shift = x.mean(0)
            self._sum = torch.zeros_like(self._shift)
            self._sum_outer = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        elif x.shape[1] != self.dim:
            raise ValueError(f"feature dimension changed from {self.dim} to {x.shape[1]}")
        centred = x - self._shift
        self._sum += centred.sum(0)
        self._sum_outer += centred.T @ centred
        self.count += x.shape[0]
        if self.keep_features:
            self._kept.append(x.to("cpu", torch.float32).numpy())

    def merge(self, other: "FeatureStats") -> "FeatureStats":
        """Fold ``other`` (e.g. another rank's statistics) into this one; returns self."""
        if other.count == 0:
            return self
        if self.count == 0:
            self._shift, self._sum = other._shift.clone(), other._sum.clone()
            self._sum_outer = other._sum_outer.clone()
        else:
            if other.dim != self.dim:
                raise ValueError(f"cannot merge statistics of dimension {other.dim} into {self.dim}")
            dev = self._shift.device
            # Re-centre the other sums on our shift: x − a = (x − b) + (b − a).
            delta = other._shift.to(dev) - self._shift
            o_sum, o_outer = other._sum.to(dev), other._sum_outer.to(dev)
            cross = torch.outer(o_sum, delta)
            self._sum += o_sum + other.count * delta
            self._sum_outer += o_outer + cross + cross.T + other.count * torch.outer(delta, delta)
        self.count += other.count
        if self.keep_features:
            if not other.keep_features:
                raise ValueError("cannot merge statistics without kept features into ones that keep them")
            self._kept.extend(other._kept)
        return self

    def to(self, device) -> "FeatureStats":
        """Move the sums (not the kept features, which are always CPU) to ``device``; returns self."""
        for name in ("_shift", "_sum", "_sum_outer"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    def mean(self) -> np.ndarray:
        if self.count == 0:
            raise ValueError("no features were added; the mean is undefined")
        return (self._shift + self._sum / self.count).cpu().numpy()

    def cov(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"the covariance (ddof=1) needs at least 2 features, got {self.count}")
        s = self._sum
        cov = (self._sum_outer - torch.outer(s, s) / self.count) / (self.count - 1)
        return cov.cpu().numpy()

    def features(self) -> np.ndarray:
        """All features seen, in order, as float32 (N, D)."""
        if not self.keep_features:
            raise ValueError("features were not kept; build FeatureStats(keep_features=True)")
        if not self._kept:
            return np.zeros((0, self.dim or 0), np.float32)
        return np.concatenate(self._kept)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    # SciPy 1.16 deprecated ``disp`` (returning a tuple only with disp=False), and 1.17 still returns a
    # bare array for 1×1 inputs, so never pass it and accept either shape of result.
    out = scipy.linalg.sqrtm(a)
    return out[0] if isinstance(out, tuple) else out


def _trace_sqrt_product_scipy(s1: np.ndarray, s2: np.ndarray, eps: float = 1e-6) -> float:
    covmean = _sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
        warnings.warn(f"sqrtm(Σ₁Σ₂) is not finite (singular product); adding {eps}·I to both covariances",
                      stacklevel=3)
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm(Σ₁Σ₂) has an imaginary component of {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(np.trace(covmean))


def _trace_sqrt_product_eigh(s1: np.ndarray, s2: np.ndarray) -> float:
    # tr (Σ₁Σ₂)^{1/2} = Σ √λ(√Σ₁ Σ₂ √Σ₁): the inner matrix is symmetric PSD, so eigvalsh is exact and
    # real, unlike a general sqrtm whose rounding leaks into complex parts.
    w, v = np.linalg.eigh((s1 + s1.T) / 2)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = root @ s2 @ root
    lam = np.linalg.eigvalsh((inner + inner.T) / 2)
    return float(np.sqrt(np.clip(lam, 0, None)).sum())


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike,
                     method: str = "eigh") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), computed in float64.

    ``method="eigh"`` (default) uses the symmetric form; ``"scipy"`` reproduces ADM/TTUR/pytorch-fid
    (``sqrtm`` of Σ₁Σ₂, a 1e-6·I retry when non-finite, an error on imaginary diagonals above 1e-3).
    """
    mu1, mu2 = np.atleast_1d(_to_numpy64(mu1)), np.atleast_1d(_to_numpy64(mu2))
    sigma1, sigma2 = np.atleast_2d(_to_numpy64(sigma1)), np.atleast_2d(_to_numpy64(sigma2))
    if mu1.shape != mu2.shape:
        raise ValueError(f"mean vectors differ in shape: {mu1.shape} vs {mu2.shape}")
    if sigma1.shape != sigma2.shape:
        raise ValueError(f"covariances differ in shape: {sigma1.shape} vs {sigma2.shape}")
    if mu1.ndim != 1 or sigma1.shape != (mu1.shape[0], mu1.shape[0]):
        raise ValueError(f"means of shape {mu1.shape} do not fit covariances of shape {sigma1.shape}")
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(s).all():
            warnings.warn(f"{name} has non-finite entries; the Fréchet distance is NaN", stacklevel=2)
            return float("nan")
    if method == "eigh":
        try:
            tr_covmean = _trace_sqrt_product_eigh(sigma1, sigma2)
        except np.linalg.LinAlgError as exc:  # LAPACK did not converge: the general route still may
            warnings.warn(f"symmetric eigendecomposition failed ({exc}); falling back to scipy's sqrtm",
                          stacklevel=2)
            tr_covmean = _trace_sqrt_product_scipy(sigma1, sigma2)
    elif method == "scipy":
        tr_covmean = _trace_sqrt_product_scipy(sigma1, sigma2)
    else:
        raise ValueError(f"unknown Fréchet-distance method {method!r}; use 'eigh' or 'scipy'")
    diff = mu1 - mu2
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def inception_score(logits: ArrayLike, splits: int = 10) -> Tuple[float, float]:
    """(mean, std) over ``splits`` contiguous chunks of exp(E_x KL(p(y|x) ‖ p(y))).

    Pass *bias-free* logits (pool3 · W, as ADM's TF graph and torch-fidelity's 'logits_unbiased'): the
    bias shifts every softmax. Chunk i holds rows [i·N//splits, (i+1)·N//splits), so a file ordered by
    class scores lower than the same samples shuffled. Zero probabilities contribute 0 (ADM would give NaN).
    """
    x = _to_numpy64(logits)
    if x.ndim != 2:
        raise ValueError(f"logits must be (N, C), got shape {x.shape}")
    n = x.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"cannot split {n} samples into {splits} chunks")
    log_p = scipy.special.log_softmax(x, axis=1)
    p = np.exp(log_p)
    scores = []
    for i in range(splits):
        rows = slice(i * n // splits, (i + 1) * n // splits)
        part, part_log = p[rows], log_p[rows]
        marginal = part.mean(0, keepdims=True)
        kl = (part * part_log).sum(1) - scipy.special.xlogy(part, marginal).sum(1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _sq_distances(a: torch.Tensor, b: torch.Tensor, fp16: bool) -> torch.Tensor:
    """Squared Euclidean distances of the rows of a to those of b, float32, clamped at 0."""
    if fp16:
        a16, b16 = a.half(), b.half()
        d = (a16 * a16).sum(1, keepdim=True) - 2 * (a16 @ b16.T) + (b16 * b16).sum(1)[None]
        if torch.isfinite(d).all():
            return d.float().clamp_min_(0)
        # ADM falls back to float32 for the whole block when float16 overflows.
    d = torch.addmm((b * b).sum(1)[None], a, b.T, alpha=-2)
    return d.add_((a * a).sum(1, keepdim=True)).clamp_min_(0)


def _radii(x: torch.Tensor, k: int, batch_size: int, fp16: bool) -> torch.Tensor:
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k = {k} needs 1 <= k < number of features ({n})")
    radii = torch.empty(n, dtype=torch.float32, device=x.device)
    for r0 in range(0, n, batch_size):
        rows, best = x[r0:r0 + batch_size], None
        for c0 in range(0, n, batch_size):
            d = _sq_distances(rows, x[c0:c0 + batch_size], fp16)
            if best is not None:
                d = torch.cat([best, d], 1)
            # Keeping only the k+1 smallest per row so far bounds memory at one block.
            best = torch.topk(d, min(k + 1, d.shape[1]), dim=1, largest=False, sorted=True).values
        radii[r0:r0 + batch_size] = best[:, k]
    return radii


def manifold_radii(features: ArrayLike, k: int = 3, batch_size: int = 10000, fp16: bool = False,
                   device=None) -> np.ndarray:
    """Squared k-NN radius of each feature within its own set: the (k+1)-th smallest squared distance,
    counting the point's distance 0 to itself (ADM/Kynkäänniemi et al.)."""
    x = _to_2d_tensor(features, "features", torch.float32, device)
    return _radii(x, k, batch_size, fp16).cpu().numpy()


def precision_recall(ref_features: ArrayLike, sample_features: ArrayLike, k: int = 3,
                     batch_size: int = 10000, device=None, fp16: bool = False) -> Tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) with ADM's conventions.

    Precision: the fraction of samples inside at least one reference k-NN ball; recall: the fraction of
    reference points inside at least one sample ball. Distances are computed in blocks of ``batch_size``²
    on ``device`` (default: the reference tensor's device, else CPU).
    """
    if device is None and isinstance(ref_features, torch.Tensor):
        device = ref_features.device
    ref = _to_2d_tensor(ref_features, "ref_features", torch.float32, device or "cpu")
    smp = _to_2d_tensor(sample_features, "sample_features", torch.float32, ref.device)
    if ref.shape[1] != smp.shape[1]:
        raise ValueError(f"reference features are {ref.shape[1]}-d but sample features are {smp.shape[1]}-d")
    ref_radii = _radii(ref, k, batch_size, fp16)
    smp_radii = _radii(smp, k, batch_size, fp16)
    ref_covered = torch.zeros(ref.shape[0], dtype=torch.bool, device=ref.device)
    smp_covered = torch.zeros(smp.shape[0], dtype=torch.bool, device=ref.device)
    for r0 in range(0, ref.shape[0], batch_size):
        r_slice = slice(r0, r0 + batch_size)
        for s0 in range(0, smp.shape[0], batch_size):
            s_slice = slice(s0, s0 + batch_size)
            d = _sq_distances(ref[r_slice], smp[s_slice], fp16)
            smp_covered[s_slice] |= (d <= ref_radii[r_slice, None]).any(0)
            ref_covered[r_slice] |= (d <= smp_radii[None, s_slice]).any(1)
    return float(smp_covered.double().mean()), float(ref_covered.double().mean())


def class_accuracy(logits_or_probs: ArrayLike, labels: ArrayLike,
                   topk: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Top-k accuracies as {"top1": ..., "top5": ...}; a k above the number of classes counts them all
    (so it is 1), and the key keeps the requested k."""
    scores = _to_2d_tensor(logits_or_probs, "logits_or_probs", torch.float64, "cpu")
    if isinstance(labels, torch.Tensor):
        target = labels.detach().cpu().reshape(-1).long()
    else:
        target = torch.from_numpy(np.asarray(labels, dtype=np.int64).reshape(-1))
    if target.shape[0] != scores.shape[0]:
        raise ValueError(f"{scores.shape[0]} score rows for {target.shape[0]} labels")
    if scores.shape[0] == 0:
        raise ValueError("class accuracy of an empty batch is undefined")
    out = {}
    for k in topk:
        top = scores.topk(min(int(k), scores.shape[1]), dim=1).indices
        out[f"top{k}"] = float((top == target[:, None]).any(1).double().mean())
    return out


__all__ = ["FeatureStats", "frechet_distance", "inception_score", "manifold_radii", "precision_recall",
           "class_accuracy"]
