"""ADM's evaluation (Inception Score, FID, sFID, precision, recall) over image sources, in PyTorch.

``evaluate(ref, sample, net)`` follows ``evaluations/evaluator.py`` of guided-diffusion: a reference batch
that stores ``mu``/``sigma`` (and ``mu_s``/``sigma_s``) is compared through those statistics, and its
``arr_0`` images serve only precision/recall; IS uses the sample logits in contiguous chunks of 5,000;
precision/recall use pool features with k = 3.
"""

from __future__ import annotations

import io
import math
import warnings
from typing import Dict, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import dist_util
from ..train.checkpointing import atomic_write_bytes
from .image_batches import NpzBatch, open_source
from .stats import FeatureStats, frechet_distance, inception_score, precision_recall

IS_SPLIT_SIZE = 5000


@torch.no_grad()
def compute_activations(net, source, *, batch_size: int = 64, limit: Optional[int] = None,
                        keep_pool: bool = False, keep_logits: bool = False, progress: bool = True,
                        sharded: bool = False, desc: str = "activations") -> Dict:
    """Pool and spatial statistics (float64) of ``source``'s images, plus the pool features and logits
    when asked. With ``sharded`` each rank reads every world_size-th batch and the statistics are merged
    on every rank (features and logits stay per rank)."""
    rank, world = (dist_util.get_rank(), dist_util.get_world_size()) if sharded else (0, 1)
    device = next(net.parameters()).device
    pool, spatial = FeatureStats(keep_features=keep_pool), FeatureStats()
    logits = []
    total = len(source) if limit is None else min(limit, len(source))
    bar = tqdm(total=total, unit="img", desc=desc, disable=not (progress and rank == 0), dynamic_ncols=True)
    for i, batch in enumerate(source.iter_images(batch_size, limit=limit)):
        bar.update(len(batch) * (world if sharded else 1))
        if i % world != rank:
            continue
        x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).to(device)
        out = net(x)
        pool.update(out["pool"])
        spatial.update(out["spatial"])
        if keep_logits:
            logits.append(out["logits"].float().cpu())
    bar.close()
    if sharded and world > 1:
        pool = _merge_all(pool)
        spatial = _merge_all(spatial)
    result = {"pool": pool, "spatial": spatial}
    if keep_logits:
        result["logits"] = torch.cat(logits).numpy() if logits else np.zeros((0, net.num_logits), np.float32)
    return result


def _merge_all(stats: FeatureStats) -> FeatureStats:
    parts = dist_util.all_gather_objects(stats.to("cpu"))
    merged = parts[0]
    for p in parts[1:]:
        merged.merge(p)
    return merged


def statistics(acts: Dict) -> Dict[str, np.ndarray]:
    """ADM's reference keys from ``compute_activations`` output: pool (mu, sigma), spatial (mu_s, sigma_s)."""
    return {"mu": acts["pool"].mean(), "sigma": acts["pool"].cov(),
            "mu_s": acts["spatial"].mean(), "sigma_s": acts["spatial"].cov()}


def inception_score_adm(logits: np.ndarray) -> float:
    """IS over contiguous chunks of 5,000 samples, the mean over chunks (ADM reports no spread)."""
    splits = max(1, math.ceil(len(logits) / IS_SPLIT_SIZE))
    return float(inception_score(logits, splits=splits)[0])


def reference_statistics(ref: NpzBatch, net, *, batch_size: int, progress: bool, need_pr: bool):
    """Stored statistics when the reference carries them, else computed from its images."""
    stored = ref.stored_stats()
    pool_features = None
    if stored is None or (need_pr and ref.has_images):
        acts = compute_activations(net, ref, batch_size=batch_size, keep_pool=need_pr, progress=progress,
                                   desc="reference")
        if need_pr:
            pool_features = acts["pool"].features()
        if stored is None:
            stored = statistics(acts)
    return stored, pool_features


def evaluate(ref_path: str, sample_path: str, net, *, batch_size: int = 64, fd_method: str = "eigh",
             k: int = 3, progress: bool = True) -> Dict:
    """All five numbers, plus what they were computed from (counts, network, methods)."""
    ref = NpzBatch(ref_path) if ref_path.endswith(".npz") else open_source(ref_path)
    sample = open_source(sample_path)
    if len(sample) == 0:
        raise ValueError(f"{sample_path} holds no images (arr_0) to evaluate")
    acts = compute_activations(net, sample, batch_size=batch_size, keep_pool=True, keep_logits=True,
                               progress=progress, desc="samples")
    need_pr = getattr(ref, "has_images", True)
    if isinstance(ref, NpzBatch):
        ref_stats, ref_pool = reference_statistics(ref, net, batch_size=batch_size, progress=progress,
                                                   need_pr=need_pr)
    else:
        ref_acts = compute_activations(net, ref, batch_size=batch_size, keep_pool=True, progress=progress,
                                       desc="reference")
        ref_stats = statistics(ref_acts)
        ref_pool = ref_acts["pool"].features()
    pool, spatial = acts["pool"], acts["spatial"]
    if pool.count <= net.pool_dim:
        warnings.warn(f"{pool.count} samples for {net.pool_dim}-dimensional features: the sample covariance is "
                      "singular and FID is strongly biased; compare FIDs only at equal (large) N", stacklevel=2)
    out = {"inception_score": inception_score_adm(acts["logits"]),
           "fid": frechet_distance(pool.mean(), pool.cov(), ref_stats["mu"], ref_stats["sigma"], method=fd_method)}
    if "mu_s" in ref_stats:
        out["sfid"] = frechet_distance(spatial.mean(), spatial.cov(), ref_stats["mu_s"], ref_stats["sigma_s"],
                                       method=fd_method)
    else:
        out["sfid"] = None  # statistics-only references from other tools carry no spatial part
    if ref_pool is not None:
        out["precision"], out["recall"] = precision_recall(ref_pool, pool.features(), k=k)
    else:
        out["precision"] = out["recall"] = None
    out.update(num_samples=len(sample), num_reference_images=len(ref) if ref_pool is not None else 0,
               feature_net=net.name, weights_sha256=net.weights_sha256, resize=net.resize_mode,
               fd_method=fd_method, k=k)
    return out


def make_reference(source_path: str, dest: str, net, *, batch_size: int = 64, num_pr_images: int = 10000,
                   progress: bool = True, seed: int = 0) -> Dict[str, np.ndarray]:
    """An ADM-style reference batch: ``mu``/``sigma``/``mu_s``/``sigma_s`` over every image of the source
    and ``arr_0`` = ``num_pr_images`` of them (a seeded random subset) for precision/recall."""
    source = open_source(source_path)
    acts = compute_activations(net, source, batch_size=batch_size, progress=progress, desc="reference")
    n = len(source)
    keep = np.sort(np.random.default_rng(seed).permutation(n)[:min(num_pr_images, n)])
    images = _gather_images(source, keep, batch_size)
    arrays = {"arr_0": images, **statistics(acts)}
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(buf.getvalue(), dest)
    return arrays


def _gather_images(source, keep: np.ndarray, batch_size: int) -> np.ndarray:
    wanted, out, start = set(keep.tolist()), [], 0
    for batch in source.iter_images(batch_size):
        idx = [i for i in range(len(batch)) if start + i in wanted]
        if idx:
            out.append(batch[idx])
        start += len(batch)
    return np.concatenate(out)


__all__ = ["compute_activations", "evaluate", "make_reference", "reference_statistics", "inception_score_adm"]
