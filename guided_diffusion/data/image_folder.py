"""Image datasets: the shared item contract, ADM's crops, and folders of image files.

Every random choice an item makes (crop size, crop offset, flip) comes from a generator seeded by the key
the item is read with, never from global state, so a batch depends only on its keys: the number of
loader workers, a restart, or the process a rank runs in cannot change what a model sees.
"""

from __future__ import annotations

import abc
import math
import operator
import os
import re
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "gif", "bmp", "webp", "tif", "tiff")
LABEL_SOURCES: tuple[str, ...] = ("prefix", "folder")
DATA_DIR_HINT = "pass --data_dir with a folder of images, an .npz file, or builtin:digits"
# The files ADM's / PPAP's logger writes into its run folder (rank suffix on other ranks): generate_dataset.py of
# PPAP leaves them beside the images, so a data folder may hold them.
LOG_FILE_PATTERN = re.compile(r"^(log(-rank\d+)?\.txt|progress(-rank\d+)?\.(csv|json))$")

# What PIL raises for a file it cannot identify or decode; plugins differ, so all of these occur.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


class DataError(ValueError):
    """A data set or data option that cannot work; the message names the problem and the fix."""


def check_image_size(image_size: int) -> int:
    """image_size as an int >= 1, or DataError."""
    try:
        size = operator.index(image_size)
    except TypeError:
        raise DataError(f"image_size must be an integer, got {image_size!r}; pass --image_size 64") from None
    if size < 1:
        raise DataError(f"image_size must be positive, got {size}; pass --image_size 64")
    return size


def _has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1][1:].lower() in IMAGE_EXTENSIONS


def _scan(data_dir: str) -> tuple[list[str], list[str], list[str]]:
    """(image files, logger files, other files) under data_dir, recursively, each sorted; hidden entries
    skipped."""
    if not os.path.exists(data_dir):
        raise DataError(f"data directory '{data_dir}' does not exist; {DATA_DIR_HINT}")
    if not os.path.isdir(data_dir):
        raise DataError(f"data directory '{data_dir}' is not a directory; {DATA_DIR_HINT}")
    images: list[str] = []
    logs: list[str] = []
    others: list[str] = []
    for root, dirs, files in os.walk(data_dir):
        # Hidden folders (.git, .ipynb_checkpoints) hold tool state, never training data.
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = os.path.join(root, name)
            if name.startswith(".") or not os.path.isfile(path):
                continue
            if _has_image_extension(name):
                images.append(path)
            else:
                (logs if LOG_FILE_PATTERN.match(name) else others).append(path)
    return sorted(images), sorted(logs), sorted(others)


def list_image_files(data_dir: str) -> list[str]:
    """Paths of the image files under data_dir, recursively, sorted (the same list on every machine)."""
    return _scan(os.fspath(data_dir))[0]


def _resize_smaller_side(pil_image: Image.Image, target: int) -> Image.Image:
    # Halving with BOX first keeps large downsamples alias-free, which one BICUBIC step alone is not.
    while min(*pil_image.size) >= 2 * target:
        pil_image = pil_image.resize(tuple(x // 2 for x in pil_image.size), resample=Image.BOX)
    scale = target / min(*pil_image.size)
    return pil_image.resize(tuple(round(x * scale) for x in pil_image.size), resample=Image.BICUBIC)


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM's center crop: smaller side resized to image_size, central square kept; uint8 HWC."""
    arr = np.asarray(_resize_smaller_side(pil_image, image_size))
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def random_crop_arr(
    pil_image: Image.Image,
    image_size: int,
    min_crop_frac: float = 0.8,
    max_crop_frac: float = 1.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """ADM's random crop: smaller side resized to a random size in [image_size/max, image_size/min]
    (both ends included, as ADM), then a random image_size square; uint8 HWC.

    Without rng the draw is fresh entropy, as ADM's global ``random``; datasets always pass one.
    """
    rng = np.random.default_rng() if rng is None else rng
    low = math.ceil(image_size / max_crop_frac)
    high = math.ceil(image_size / min_crop_frac)
    smaller_side = int(rng.integers(low, high + 1))
    arr = np.asarray(_resize_smaller_side(pil_image, smaller_side))
    top = int(rng.integers(arr.shape[0] - image_size + 1))
    left = int(rng.integers(arr.shape[1] - image_size + 1))
    return arr[top : top + image_size, left : left + image_size]


def to_model_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float32 CHW in [-1, 1] (ADM's arr / 127.5 - 1)."""
    scaled = arr.astype(np.float32) / 127.5 - 1
    return torch.from_numpy(np.ascontiguousarray(scaled.transpose(2, 0, 1)))


class BaseImageDataset(torch.utils.data.Dataset, abc.ABC):
    """Square RGB images keyed by ``(index, aug_seed)``; items are ``(float32 CHW in [-1, 1], label)``.

    ``labels`` (int64, one per item) and ``class_names`` are None for unlabelled data, whose items carry
    label -1 and whose ``num_classes`` is 0. A plain int key means ``(index, index)``.
    """

    image_size: int
    labels: np.ndarray | None = None
    class_names: list[str] | None = None
    random_flip: bool = True

    @property
    def num_classes(self) -> int:
        return 0 if self.class_names is None else len(self.class_names)

    @abc.abstractmethod
    def __len__(self) -> int:
        ...

    @abc.abstractmethod
    def _load(self, index: int, rng: np.random.Generator) -> np.ndarray:
        """The item as uint8 HWC, image_size square, before flipping."""

    def _split_key(self, key: int | tuple[int, int]) -> tuple[int, int]:
        if isinstance(key, (tuple, list)):
            if len(key) != 2:
                raise TypeError(f"dataset keys are (index, aug_seed) pairs, got {key!r}")
            index, aug_seed = operator.index(key[0]), operator.index(key[1])
        else:
            index = aug_seed = operator.index(key)
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} is out of range for a dataset of {len(self)} items")
        if aug_seed < 0:
            raise ValueError(f"aug_seed must be non-negative, got {aug_seed}")
        return index, aug_seed

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, aug_seed = self._split_key(key)
        rng = np.random.default_rng(aug_seed)
        arr = self._load(index, rng)
        if self.random_flip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        label = -1 if self.labels is None else int(self.labels[index])
        return to_model_tensor(arr), label


def _class_name(path: str, label_from: str) -> str:
    if label_from == "prefix":
        return os.path.basename(path).split("_")[0]
    return os.path.basename(os.path.dirname(path))


def check_label_from(label_from: str) -> str:
    """label_from itself when it names a known convention, else DataError."""
    if label_from not in LABEL_SOURCES:
        raise DataError(
            f"label_from={label_from!r} is not a label convention; pass label_from='prefix' (ADM: the class "
            "is the file name before the first '_') or label_from='folder' (the class is the parent folder)"
        )
    return label_from


def _describe_paths(paths: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{p}'" for p in paths[:limit])
    return shown + (f", ... ({len(paths)} in all)" if len(paths) > limit else f" ({len(paths)} in all)")


class ImageFolderDataset(BaseImageDataset):
    """The image files under ``data_dir`` (recursively), labelled by file-name prefix or parent folder.

    The constructor checks what is cheap (the folder exists, holds images and nothing else but the logger's
    ``log.txt`` / ``progress.csv``, which are skipped with one warning and listed in ``skipped_files``); image
    sizes and decodability are checked when an item is read, or up front by ``validate()``. Images smaller
    than ``image_size`` are an error unless ``allow_upscale``; ``validate`` counts them in ``num_small``.
    """

    def __init__(
        self,
        data_dir: str,
        image_size: int,
        label_from: str = "prefix",
        random_crop: bool = False,
        random_flip: bool = True,
        allow_upscale: bool = False,
    ):
        self.data_dir = os.fspath(data_dir)
        self.image_size = check_image_size(image_size)
        self.label_from = check_label_from(label_from)
        self.random_crop = random_crop
        self.random_flip = random_flip
        self.allow_upscale = allow_upscale
        images, logs, others = _scan(self.data_dir)
        self.skipped_files: list[str] = logs
        if logs:
            warnings.warn(f"data directory '{self.data_dir}' holds log files beside the images, skipped: "
                          f"{_describe_paths(logs)}", stacklevel=2)
        if others:
            raise DataError(
                f"data directory '{self.data_dir}' contains files that are not images: "
                f"{_describe_paths(others)}; move them out of the data directory "
                f"(accepted extensions: {', '.join(IMAGE_EXTENSIONS)}; hidden files are ignored)"
            )
        if not images:
            raise DataError(
                f"data directory '{self.data_dir}' contains no image files (searched recursively); "
                f"add images with one of the extensions {', '.join(IMAGE_EXTENSIONS)} (any case)"
            )
        self.paths: list[str] = images
        self.num_checked = 0  # set by validate(): headers read, and how many of them are smaller than image_size
        self.num_small = 0
        names = [_class_name(path, label_from) for path in images]
        self.class_names = sorted(set(names))
        index_of = {name: i for i, name in enumerate(self.class_names)}
        self.labels = np.array([index_of[name] for name in names], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def _check_size(self, path: str, size: tuple[int, int]) -> None:
        if min(size) < self.image_size and not self.allow_upscale:
            raise DataError(
                f"image '{path}' is {size[0]}x{size[1]}, smaller than image_size={self.image_size}; "
                "use larger images or a smaller --image_size, "
                "or pass --allow_upscale True (allow_upscale=True) to resize it up as ADM does"
            )

    def _unreadable(self, path: str, error: BaseException) -> DataError:
        return DataError(
            f"cannot read image '{path}' ({type(error).__name__}: {error}); "
            "re-save it as a valid image or move it out of the data directory"
        )

    def validate(self, max_files: int | None = None) -> int:
        """Open the header of every file (or the first max_files) and size-check it; returns the count and
        records it in ``num_checked``, with how many of those are smaller than image_size in ``num_small``.

        Headers only: fast, and catches wrong sizes and files that are not images at all, though not a
        truncated body (that surfaces when the item is read).
        """
        paths = self.paths if max_files is None else self.paths[:max_files]
        small = 0
        for path in paths:
            try:
                with Image.open(path) as img:
                    size = img.size
            except _DECODE_ERRORS as error:
                raise self._unreadable(path, error) from error
            self._check_size(path, size)
            small += min(size) < self.image_size
        self.num_checked, self.num_small = len(paths), small
        return len(paths)

    def _load(self, index: int, rng: np.random.Generator) -> np.ndarray:
        path = self.paths[index]
        try:
            img = Image.open(path)
        except _DECODE_ERRORS as error:
            raise self._unreadable(path, error) from error
        with img:
            # Before decoding: the header alone says whether the image is too small, and DataError is a
            # ValueError that the decode handler below must not re-label as unreadable.
            self._check_size(path, img.size)
            try:
                img.load()
                # RGB before resizing, as ADM: palette and grayscale files then resample like colour ones.
                rgb = img.convert("RGB")
            except _DECODE_ERRORS as error:
                raise self._unreadable(path, error) from error
        if self.random_crop:
            return random_crop_arr(rgb, self.image_size, rng=rng)
        return center_crop_arr(rgb, self.image_size)
