"""Image sources for the metrics, read in batches without loading a 50k-image file into memory.

ADM's npz batches (``arr_0`` uint8 NHWC, optional ``arr_1`` labels, and for reference batches ``mu``,
``sigma``, ``mu_s``, ``sigma_s``) are streamed from their zip member, compressed or not. Image folders and
zip archives of images (EDM's dataset format) are read with PIL. Every source yields uint8 NHWC arrays
with 3 channels; anything else is refused with the conversion that fixes it.
"""

from __future__ import annotations

import io
import os
import zipfile
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
from numpy.lib import format as npy_format
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif")
STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
TO_UINT8 = "convert with ((x + 1) * 127.5).clip(0, 255).astype(np.uint8) for [-1, 1] data"


class BatchFormatError(ValueError):
    """An image batch that the evaluator cannot read; the message says what is wrong and how to fix it."""


def _npz_members(path: str) -> List[str]:
    with zipfile.ZipFile(path) as z:
        return [n[:-4] for n in z.namelist() if n.endswith(".npy")]


def _open_member(z: zipfile.ZipFile, key: str):
    f = z.open(f"{key}.npy")
    version = npy_format.read_magic(f)
    read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, fortran, dtype = read_header(f)
    if fortran:
        raise BatchFormatError(f"{key} is stored in Fortran order; save it with np.ascontiguousarray first")
    return f, shape, dtype


def check_images(shape: Tuple[int, ...], dtype: np.dtype, where: str) -> None:
    """ADM's layout: uint8 (N, H, W, 3) (or 1 channel, repeated to 3)."""
    if len(shape) != 4 or shape[-1] not in (1, 3):
        hint = " (channels first? use x.transpose(0, 2, 3, 1))" if len(shape) == 4 and shape[1] in (1, 3) else ""
        raise BatchFormatError(f"{where}: images must have shape (N, H, W, 3), got {tuple(shape)}{hint}")
    if np.issubdtype(dtype, np.floating):
        raise BatchFormatError(f"{where}: images are {dtype}, the evaluator reads uint8 in 0..255; {TO_UINT8}")
    if not np.issubdtype(dtype, np.integer):
        raise BatchFormatError(f"{where}: images are {dtype}, expected uint8")


def _as_uint8(batch: np.ndarray, where: str) -> np.ndarray:
    if batch.dtype != np.uint8:
        lo, hi = int(batch.min()), int(batch.max())
        if lo < 0 or hi > 255:
            raise BatchFormatError(f"{where}: pixel values span {lo}..{hi}, outside 0..255; rescale them to "
                                   "0..255 and store uint8")
        batch = batch.astype(np.uint8)
    return np.repeat(batch, 3, axis=-1) if batch.shape[-1] == 1 else batch


class NpzBatch:
    """An ADM-style npz: images streamed in batches, labels and stored statistics read on demand."""

    def __init__(self, path: str):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"batch file {path!r} does not exist")
        try:
            self.keys = _npz_members(path)
        except zipfile.BadZipFile:
            raise BatchFormatError(f"{path} is not an npz file (np.savez output)") from None
        self.path = path
        self.has_images = "arr_0" in self.keys
        self.has_stats = all(k in self.keys for k in ("mu", "sigma"))
        if not self.has_images and not self.has_stats:
            raise BatchFormatError(f"{path} has neither images (arr_0) nor statistics (mu, sigma); found keys "
                                   f"{self.keys}. Save samples with np.savez(path, images_uint8_nhwc)")
        if self.has_images:
            with zipfile.ZipFile(path) as z:
                f, self.shape, self.dtype = _open_member(z, "arr_0")
                f.close()
            check_images(self.shape, self.dtype, f"{path}:arr_0")

    def __len__(self) -> int:
        return int(self.shape[0]) if self.has_images else 0

    def iter_images(self, batch_size: int, limit: Optional[int] = None) -> Iterator[np.ndarray]:
        """uint8 NHWC batches of at most ``batch_size`` images, the first ``limit`` images only if given."""
        if not self.has_images:
            raise BatchFormatError(f"{self.path} holds statistics only (no arr_0 images)")
        total = len(self) if limit is None else min(limit, len(self))
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        with zipfile.ZipFile(self.path) as z:
            f, _, _ = _open_member(z, "arr_0")
            with f:
                for start in range(0, total, batch_size):
                    n = min(batch_size, total - start)
                    raw = f.read(n * row_bytes)
                    if len(raw) != n * row_bytes:
                        raise BatchFormatError(f"{self.path}: arr_0 is truncated (the file is incomplete)")
                    batch = np.frombuffer(bytearray(raw), dtype=self.dtype).reshape((n,) + tuple(self.shape[1:]))
                    yield _as_uint8(batch, f"{self.path}:arr_0")

    def read(self, key: str) -> np.ndarray:
        if key not in self.keys:
            raise BatchFormatError(f"{self.path} has no {key!r} (keys: {self.keys})")
        with np.load(self.path) as data:
            return data[key]

    def stored_stats(self) -> Optional[Dict[str, np.ndarray]]:
        """``mu``, ``sigma`` (and ``mu_s``, ``sigma_s`` when present) in float64, or None."""
        if not self.has_stats:
            return None
        with np.load(self.path) as data:
            stats = {k: data[k].astype(np.float64) for k in STAT_KEYS if k in data.files}
        for mean_key, cov_key in (("mu", "sigma"), ("mu_s", "sigma_s")):
            if cov_key in stats:
                problem = gaussian_statistics_problem(stats.get(mean_key), stats[cov_key])
                if problem:
                    raise BatchFormatError(f"{self.path}: its {mean_key}/{cov_key} cannot be the statistics of "
                                           f"any features ({problem}); rebuild the reference from its images")
        return stats


def gaussian_statistics_problem(mean: Optional[np.ndarray], cov: np.ndarray) -> Optional[str]:
    """What makes (mean, cov) impossible as a feature mean and covariance, or None: non-finite entries, shapes
    that do not fit, an asymmetric matrix or eigenvalues below zero beyond rounding (1e-5 of the largest)."""
    if cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        return f"the covariance has shape {cov.shape}, not square"
    if mean is None or mean.shape != (cov.shape[0],):
        return f"the mean has shape {None if mean is None else mean.shape}, the covariance {cov.shape}"
    if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
        return "non-finite entries"
    scale = max(float(np.abs(cov).max()), 1e-300)
    if np.abs(cov - cov.T).max() > 1e-6 * scale:
        return f"the covariance is not symmetric (largest |S - S^T| {np.abs(cov - cov.T).max():.3g})"
    eig = np.linalg.eigvalsh(cov)
    if eig[0] < -1e-5 * max(eig[-1], 0.0) or eig[-1] < 0:
        return f"the covariance has a negative eigenvalue ({eig[0]:.3g}; largest {eig[-1]:.3g})"
    return None


def _decode(data: bytes, name: str) -> np.ndarray:
    try:
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    except Exception as exc:
        raise BatchFormatError(f"cannot read image {name} ({exc}); remove it or re-save it") from None


class ImageFiles:
    """A folder (searched recursively) or a zip archive of same-sized images, in sorted name order."""

    def __init__(self, path: str):
        self.path = path
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                self.names = sorted(n for n in z.namelist() if n.lower().endswith(IMAGE_EXTENSIONS))
            self.is_zip = True
        elif os.path.isdir(path):
            self.names = sorted(os.path.join(root, f) for root, _, files in os.walk(path) for f in files
                                if f.lower().endswith(IMAGE_EXTENSIONS))
            self.is_zip = False
        else:
            raise FileNotFoundError(f"{path!r} is neither a folder of images nor a zip of images")
        if not self.names:
            raise BatchFormatError(f"{path} contains no images ({', '.join(IMAGE_EXTENSIONS)})")

    def __len__(self) -> int:
        return len(self.names)

    def iter_images(self, batch_size: int, limit: Optional[int] = None, indices=None) -> Iterator[np.ndarray]:
        order = list(range(len(self.names)))[:limit] if indices is None else list(indices)
        z = zipfile.ZipFile(self.path) if self.is_zip else None
        shape = None
        try:
            for start in range(0, len(order), batch_size):
                batch = []
                for i in order[start:start + batch_size]:
                    name = self.names[i]
                    data = z.read(name) if z is not None else open(name, "rb").read()
                    img = _decode(data, name)
                    if shape is None:
                        shape = img.shape
                    elif img.shape != shape:
                        raise BatchFormatError(f"{name} is {img.shape[1]}x{img.shape[0]} but the first image is "
                                               f"{shape[1]}x{shape[0]}; resize all images to one size first")
                    batch.append(img)
                yield np.stack(batch)
        finally:
            if z is not None:
                z.close()


def open_source(path: str):
    """An npz batch, a folder of images or a zip of images."""
    if path.endswith(".npz"):
        return NpzBatch(path)
    return ImageFiles(path)


__all__ = ["BatchFormatError", "NpzBatch", "ImageFiles", "open_source", "check_images", "STAT_KEYS"]
