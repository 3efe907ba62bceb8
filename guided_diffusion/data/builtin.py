"""In-memory data sets (uint8 arrays, .npz files, bundled sets) and the one dispatcher over all sources.

``builtin:digits`` exists so that training, sampling and evaluation can be exercised end to end on real
images with nothing to download: scikit-learn ships its 1,797 8x8 handwritten-digit scans.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image

from .image_folder import (
    DATA_DIR_HINT,
    BaseImageDataset,
    DataError,
    ImageFolderDataset,
    check_image_size,
    check_label_from,
)

BUILTIN_PREFIX = "builtin:"


class ArrayDataset(BaseImageDataset):
    """Square uint8 images held in memory, (N, H, W, 3), already at the model's resolution.

    Augmentation is only the optional horizontal flip: the arrays are final pixels, not sources to crop.
    """

    def __init__(
        self,
        images_uint8_nhwc: np.ndarray,
        labels: Sequence[int] | None = None,
        class_names: Sequence[str] | None = None,
        random_flip: bool = True,
    ):
        images = np.asarray(images_uint8_nhwc)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise DataError(
                f"images must be uint8 of shape (N, H, W, 3), got {images.dtype} {tuple(images.shape)}; "
                "convert floats in [-1, 1] with ((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8)"
            )
        if images.shape[1] != images.shape[2]:
            raise DataError(
                f"images must be square, got {images.shape[1]}x{images.shape[2]}; center-crop them first"
            )
        if len(images) == 0:
            raise DataError("the image array is empty; pass at least one image")
        self.images = images
        self.image_size = int(images.shape[1])
        self.random_flip = random_flip
        if labels is None:
            if class_names is not None:
                raise DataError("class_names were given without labels; pass labels too, or neither")
            return
        label_array = np.asarray(labels)
        if label_array.shape != (len(images),) or not np.issubdtype(label_array.dtype, np.integer):
            raise DataError(
                f"labels must be {len(images)} integers (one per image), got {label_array.dtype} "
                f"{tuple(label_array.shape)}; pass an int array of shape ({len(images)},)"
            )
        if label_array.min() < 0:
            raise DataError("labels must be non-negative class indices; map them to 0..K-1")
        top = int(label_array.max())
        names = [str(k) for k in range(top + 1)] if class_names is None else list(class_names)
        if top >= len(names):
            raise DataError(
                f"label {top} has no class name ({len(names)} given); pass one name per class"
            )
        self.labels = label_array.astype(np.int64)
        self.class_names = names

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, index: int, rng: np.random.Generator) -> np.ndarray:
        return self.images[index]


def load_npz_dataset(path: str, image_size: int, random_flip: bool = True) -> ArrayDataset:
    """``arr_0``: uint8 (N, image_size, image_size, 3) images; optional ``arr_1``: int labels (ADM's
    sample files have exactly this layout)."""
    image_size = check_image_size(image_size)
    if not os.path.isfile(path):
        raise DataError(f"npz file '{path}' does not exist; {DATA_DIR_HINT}")
    unreadable = (OSError, ValueError, zipfile.BadZipFile)
    try:
        npz = np.load(path, allow_pickle=False)
    except unreadable as error:
        raise DataError(f"cannot read npz file '{path}' ({error}); re-save it with np.savez") from error
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(f"'{path}' holds a single array, not an npz archive; re-save it with np.savez")
    try:
        with npz:
            files = list(npz.files)
            images = npz["arr_0"] if "arr_0" in files else None
            labels = npz["arr_1"] if "arr_1" in files else None
    except unreadable as error:
        raise DataError(f"cannot read npz file '{path}' ({error}); re-save it with np.savez") from error
    if images is None:
        raise DataError(
            f"npz file '{path}' has no 'arr_0' (it has {files}); save images with "
            "np.savez(path, images_uint8_nhwc) or np.savez(path, images, labels)"
        )
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise DataError(
            f"'arr_0' in '{path}' must be uint8 images of shape (N, H, W, 3), got {images.dtype} "
            f"{tuple(images.shape)}; re-save it as uint8 NHWC RGB"
        )
    if images.shape[1:3] != (image_size, image_size):
        raise DataError(
            f"images in '{path}' are {images.shape[1]}x{images.shape[2]} but image_size is {image_size}; "
            f"pass --image_size {images.shape[1]} or resize the arrays to {image_size}x{image_size}"
        )
    return ArrayDataset(images, labels=labels, random_flip=random_flip)


def _digits(image_size: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        message = "builtin:digits reads scikit-learn's bundled scans; pip install scikit-learn"
        raise ImportError(message) from error
    if image_size < 8:
        raise DataError(
            f"builtin:digits scans are 8x8, so image_size must be >= 8, got {image_size}; "
            "pass --image_size 8 or more"
        )
    bunch = load_digits()
    # Scans count ink 0..16; resampling the float image (mode "F") avoids rounding twice.
    scans = bunch.images.astype(np.float32) * (255.0 / 16.0)
    gray = np.empty((len(scans), image_size, image_size), dtype=np.uint8)
    for i, scan in enumerate(scans):
        resized = np.asarray(Image.fromarray(scan).resize((image_size, image_size), resample=Image.BICUBIC))
        gray[i] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=3)
    return rgb, bunch.target.astype(np.int64), [str(k) for k in range(10)]


_BUILTINS: dict[str, Callable[[int], tuple[np.ndarray, np.ndarray, list[str]]]] = {"digits": _digits}
BUILTIN_NAMES: tuple[str, ...] = tuple(sorted(_BUILTINS))


def load_builtin(name: str, image_size: int, *, random_flip: bool = True) -> ArrayDataset:
    """A bundled data set by name ("digits": white-on-black RGB digits, 10 classes, no download).

    Flipping is on by default as everywhere else; mirrored digits are not digits, so class-conditional
    work usually wants random_flip=False.
    """
    if name not in _BUILTINS:
        choices = ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_NAMES)
        raise DataError(f"unknown builtin data set {name!r}; pass one of: {choices}")
    images, labels, class_names = _BUILTINS[name](check_image_size(image_size))
    return ArrayDataset(images, labels=labels, class_names=class_names, random_flip=random_flip)


def build_dataset(
    data_dir: str,
    image_size: int,
    *,
    label_from: str = "prefix",
    random_crop: bool = False,
    random_flip: bool = True,
    allow_upscale: bool = False,
) -> BaseImageDataset:
    """The data set --data_dir names: ``builtin:NAME``, a ``.npz`` file, or a folder of images.

    label_from, random_crop and allow_upscale concern image folders; array sources are final pixels
    with their own labels, so these options do not apply to them (label_from is still checked).
    """
    if not data_dir:
        raise DataError(f"no data directory given; {DATA_DIR_HINT}")
    data_dir = os.fspath(data_dir)
    check_label_from(label_from)
    if data_dir.startswith(BUILTIN_PREFIX):
        return load_builtin(data_dir[len(BUILTIN_PREFIX) :], image_size, random_flip=random_flip)
    if data_dir.lower().endswith(".npz"):
        return load_npz_dataset(data_dir, image_size, random_flip=random_flip)
    return ImageFolderDataset(
        data_dir,
        image_size,
        label_from=label_from,
        random_crop=random_crop,
        random_flip=random_flip,
        allow_upscale=allow_upscale,
    )
