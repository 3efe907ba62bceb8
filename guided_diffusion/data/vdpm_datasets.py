"""The VDPM data sets (MNIST, CIFAR-10, CelebA, and the built-in digits), read from local files only.

The files must already be on disk in torchvision's layouts; nothing is ever downloaded. A missing data
set raises ``DataError`` naming the exact paths expected and where to put the files. A corrupt file
(wrong magic number, truncated, or not the expected data) raises ``DataError`` naming that file.

Preprocessing follows the VDPM original (tqch/v-diffusion-torch ``datasets.py``; research notes part A.9).
It used torchvision transforms on PIL images, and the steps below reproduce them with PIL directly:

- ``mnist``: ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (each also accepted with a
  ``.gz`` suffix; torchvision's folder name is exactly ``MNIST``). 28x28 grayscale is resized to 32x32,
  as the original's ``Resize(32)`` does: PIL bilinear. 1 channel. No flip. 10 classes.
- ``cifar10``: ``<root>/cifar-10-batches-py/{data_batch_1..5,test_batch}`` (the python pickles). 3x32x32,
  no resize, random horizontal flip. 10 classes. The pickles are read with an unpickler that only builds
  numpy arrays, lists and dicts, so a tampered file cannot run code.
- ``celeba``: ``<root>/celeba/img_align_celeba/*.jpg``, ``list_attr_celeba.txt`` and (for every split
  except ``all``) ``list_eval_partition.txt``. The 178x218 aligned images are cropped to the 148x148
  box with top 40 and left 15 (pixels x 15..162, y 40..187; 5 rows below centre, as the original), then
  resized to 64x64 with PIL bilinear (torchvision's ``Resize(64)`` on a PIL image), then randomly
  flipped. The target is the 40 attributes, mapped from {-1, 1} to {0., 1.}, as a float32 vector.
  The original trained CelebA on split ``all`` (see ``VDPM_DATASET_INFO[...].train_split``).
- ``digits`` (alias ``builtin:digits``): scikit-learn's 8x8 scans through ``load_builtin`` (RGB, bicubic),
  16x16 by default (the project demo's size), no flip, 10 classes.

All items are ``(float32 CHW in [-1, 1], label)``, with pixels ``uint8 / 127.5 - 1`` (the original's
ToTensor + Normalize(0.5, 0.5)). Labels are 0-based ints (mnist, cifar10, digits) or the float32
40-vector (celeba). The original shifts class labels by +1 and reserves 0 for the classifier-free null
label; that shift belongs to the model's conditioning and is not applied here. Flipping uses the item's
augmentation seed, so the datasets stream through ``BatchStream`` and ``load_data(dataset=...)``.
"""

from __future__ import annotations

import gzip
import itertools
import numbers
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .builtin import load_builtin
from ..safe_pickle import NUMPY_ARRAY_GLOBALS, ForbiddenGlobal, restricted_load
from .image_folder import _DECODE_ERRORS, BaseImageDataset, DataError, check_image_size, to_model_tensor

NOTHING_DOWNLOADED = "nothing is downloaded"


@dataclass(frozen=True)
class VDPMDatasetInfo:
    """What a model needs to know about a data set before loading it, and the original's defaults."""

    name: str
    in_channels: int
    image_size: int  # the resolution the original trains at
    num_classes: int  # classes, or tags for a multi-label set
    multilabel: bool  # True: the label is a {0, 1} vector of num_classes tags
    random_flip: bool  # the original's default
    splits: tuple[str, ...]
    train_split: str  # the split the original trains on

    @property
    def label_dim(self) -> int:
        """Width of the conditioning vector: one-hot over the classes, or multi-hot over the tags."""
        return self.num_classes


VDPM_DATASET_INFO: dict[str, VDPMDatasetInfo] = {
    "mnist": VDPMDatasetInfo("mnist", 1, 32, 10, False, False, ("train", "test", "all"), "train"),
    "cifar10": VDPMDatasetInfo("cifar10", 3, 32, 10, False, True, ("train", "test", "all"), "train"),
    "celeba": VDPMDatasetInfo("celeba", 3, 64, 40, True, True, ("train", "valid", "test", "all"), "all"),
    "digits": VDPMDatasetInfo("digits", 3, 16, 10, False, False, ("train", "all"), "train"),
}
VDPM_DATASETS: tuple[str, ...] = tuple(VDPM_DATASET_INFO)

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
CELEBA_ALIGNED_SIZE: tuple[int, int] = (178, 218)  # (width, height) of img_align_celeba
CELEBA_CROP_BOX: tuple[int, int, int, int] = (15, 40, 15 + 148, 40 + 148)  # PIL (left, top, right, bottom)


class VDPMArrayDataset(BaseImageDataset):
    """Square uint8 images in memory, (N, H, W, C) with C = 1 or 3, with int class labels.

    Like ``ArrayDataset`` but also single-channel (MNIST), and carrying the VDPM attributes
    ``name``, ``split``, ``in_channels``, ``multilabel`` (False) and ``label_dim``.
    """

    multilabel = False

    def __init__(
        self,
        images_uint8_nhwc: np.ndarray,
        labels: Sequence[int],
        class_names: Sequence[str],
        *,
        name: str,
        split: str,
        random_flip: bool,
    ):
        images = np.asarray(images_uint8_nhwc)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] not in (1, 3):
            raise DataError(
                f"{name} images must be uint8 of shape (N, H, W, 1 or 3), got {images.dtype} {tuple(images.shape)}"
            )
        if images.shape[1] != images.shape[2] or len(images) == 0:
            raise DataError(f"{name} images must be a non-empty stack of squares, got {tuple(images.shape)}")
        label_array = np.asarray(labels)
        if label_array.shape != (len(images),) or not np.issubdtype(label_array.dtype, np.integer):
            raise DataError(f"{name} needs one integer label per image, got {label_array.dtype} {label_array.shape}")
        if label_array.min() < 0 or label_array.max() >= len(class_names):
            raise DataError(f"{name} labels must lie in 0..{len(class_names) - 1}")
        self.images = images
        self.labels = label_array.astype(np.int64)
        self.class_names = list(class_names)
        self.image_size = int(images.shape[1])
        self.in_channels = int(images.shape[3])
        self.name = name
        self.split = split
        self.random_flip = bool(random_flip)

    @property
    def label_dim(self) -> int:
        return self.num_classes

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, index: int, rng: np.random.Generator) -> np.ndarray:
        return self.images[index]


# ---- MNIST ---------------------------------------------------------------------------------------------

MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08


def read_idx(path: str, ndim: int) -> np.ndarray:
    """A uint8 IDX file (``.gz`` or plain) as an array of ``ndim`` dimensions; DataError naming the file."""
    kind = "images (idx3-ubyte)" if ndim == 3 else f"{ndim}-d data (idx{ndim}-ubyte)"
    kind = "labels (idx1-ubyte)" if ndim == 1 else kind
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as handle:
            data = handle.read()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(
            f"cannot read MNIST file '{path}' ({type(error).__name__}: {error}); it is corrupt or truncated, "
            f"replace it with a fresh copy ({NOTHING_DOWNLOADED})"
        ) from error
    header = 4 + 4 * ndim
    expected_magic = (_IDX_UBYTE << 8) | ndim
    if len(data) < 4:
        raise DataError(f"MNIST file '{path}' is truncated: {len(data)} bytes, shorter than its magic number")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        hint = ""
        if data[:2] == b"\x1f\x8b":
            hint = f" (it is gzip-compressed: name it '{os.path.basename(path)}.gz' or decompress it)"
        raise DataError(
            f"MNIST file '{path}' has magic number 0x{magic:08X}, expected 0x{expected_magic:08X} for uint8 {kind}; "
            f"it is corrupt or not an MNIST {kind} file{hint}"
        )
    if len(data) < header:
        raise DataError(f"MNIST file '{path}' is truncated: {len(data)} bytes, shorter than its {header}-byte header")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    size = int(np.prod(dims, dtype=np.int64))
    if len(data) - header != size:
        state = "truncated" if len(data) - header < size else "corrupt (trailing bytes)"
        raise DataError(
            f"MNIST file '{path}' is {state}: its header declares shape {dims} ({size} bytes of data) "
            f"but it holds {len(data) - header}; replace it with a fresh copy"
        )
    return np.frombuffer(data, dtype=np.uint8, count=size, offset=header).reshape(dims)


def _mnist_hint(root: str) -> str:
    # torchvision's folder name is exactly "MNIST"; point at files that sit elsewhere.
    names = {n for pair in MNIST_FILES.values() for n in pair}
    found = []
    for folder in (root, os.path.join(root, "MNIST"), os.path.join(root, "mnist"), os.path.join(root, "mnist", "raw")):
        if os.path.isdir(folder):
            if any(f in names or f[:-3] in names for f in os.listdir(folder)):
                found.append(folder)
    if not found:
        return ""
    return f" (MNIST files were found in {', '.join(repr(f) for f in found)}: move them there)"


def _load_mnist(root: str, parts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    raw = os.path.join(root, "MNIST", "raw")
    chosen: list[tuple[str, str]] = []
    missing: list[str] = []
    for part in parts:
        pair = []
        for base in MNIST_FILES[part]:
            plain, packed = os.path.join(raw, base), os.path.join(raw, base + ".gz")
            path = plain if os.path.isfile(plain) else packed if os.path.isfile(packed) else None
            if path is None:
                missing.append(f"'{plain}' (or '{packed}')")
            pair.append(path)
        chosen.append(tuple(pair))
    if missing:
        raise DataError(
            f"MNIST not found: missing {', '.join(missing)}; put the MNIST files {', '.join(MNIST_FILES['train'])}, "
            f"{', '.join(MNIST_FILES['test'])} (plain or .gz) in '{raw}' (torchvision's layout "
            f"<root>/MNIST/raw/){_mnist_hint(root)}; {NOTHING_DOWNLOADED}"
        )
    images, labels = [], []
    for image_path, label_path in chosen:
        x, y = read_idx(image_path, 3), read_idx(label_path, 1)
        if len(x) != len(y):
            raise DataError(
                f"MNIST files disagree: '{image_path}' holds {len(x)} images but '{label_path}' holds {len(y)} labels"
            )
        if len(y) and int(y.max()) > 9:
            raise DataError(f"MNIST file '{label_path}' holds label {int(y.max())}; digit labels are 0..9")
        images.append(x)
        labels.append(y)
    return np.concatenate(images)[..., None], np.concatenate(labels).astype(np.int64)


# ---- CIFAR-10 ------------------------------------------------------------------------------------------

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR10_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
def _read_cifar_batch(path: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as handle:
            entry = restricted_load(handle, NUMPY_ARRAY_GLOBALS, encoding="bytes")
    except ForbiddenGlobal as error:
        raise DataError(
            f"refusing to unpickle CIFAR-10 file '{path}': it references '{error}', but a CIFAR-10 batch holds "
            "only numpy arrays and lists; replace it with the file from cifar-10-python.tar.gz"
        ) from error
    except Exception as error:  # any failure to unpickle means a corrupt or truncated file
        raise DataError(
            f"cannot read CIFAR-10 file '{path}' ({type(error).__name__}: {error}); it is corrupt or truncated, "
            f"replace it with the file from cifar-10-python.tar.gz ({NOTHING_DOWNLOADED})"
        ) from error
    if not isinstance(entry, dict):
        raise DataError(f"CIFAR-10 file '{path}' holds a {type(entry).__name__}, not a batch dict")
    entry = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in entry.items()}
    if "data" not in entry or "labels" not in entry:
        raise DataError(f"CIFAR-10 file '{path}' has no 'data'/'labels' entries (keys: {sorted(map(str, entry))})")
    data, labels = entry["data"], entry["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"CIFAR-10 file '{path}': 'data' must be a uint8 array of shape (N, 3072), got {got}")
    if isinstance(labels, np.ndarray):
        labels = labels.tolist()
    if not isinstance(labels, (list, tuple)) or not all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in labels
    ):
        raise DataError(f"CIFAR-10 file '{path}': 'labels' must be a list of integers")
    label_array = np.asarray(labels, dtype=np.int64).reshape(-1)
    if len(label_array) != len(data):
        raise DataError(f"CIFAR-10 file '{path}' holds {len(data)} images but {len(label_array)} labels")
    if len(label_array) and (label_array.min() < 0 or label_array.max() > 9):
        raise DataError(f"CIFAR-10 file '{path}' holds labels outside 0..9")
    # Each row is the red plane, then green, then blue, each 32x32 row-major.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), label_array


def _load_cifar10(root: str, parts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    folder = os.path.join(root, CIFAR10_DIR)
    paths = [os.path.join(folder, name) for part in parts for name in CIFAR10_FILES[part]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        archive = os.path.join(root, "cifar-10-python.tar.gz")
        hint = f" (found '{archive}': extract it with tar -xzf in '{root}')" if os.path.isfile(archive) else ""
        raise DataError(
            f"CIFAR-10 not found: missing {', '.join(repr(p) for p in missing)}; extract cifar-10-python.tar.gz "
            f"(the python version) into '{root}' so that '{folder}' holds data_batch_1..data_batch_5 and test_batch "
            f"(torchvision's layout){hint}; {NOTHING_DOWNLOADED}"
        )
    batches = [_read_cifar_batch(p) for p in paths]
    return np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


# ---- CelebA --------------------------------------------------------------------------------------------

CELEBA_DIR = "celeba"
CELEBA_IMAGES = "img_align_celeba"
CELEBA_ATTRS = "list_attr_celeba.txt"
CELEBA_PARTITION = "list_eval_partition.txt"
CELEBA_SPLIT_CODES = {"train": 0, "valid": 1, "test": 2}


def _read_text_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            return [line for line in handle.read().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"cannot read CelebA file '{path}' ({type(error).__name__}: {error})") from error


def _read_celeba_attrs(path: str) -> tuple[list[str], list[str], np.ndarray]:
    """(attribute names, file names, {0, 1} uint8 matrix) from list_attr_celeba.txt."""
    lines = _read_text_lines(path)
    if len(lines) < 2 or not lines[0].strip().isdigit():
        raise DataError(
            f"CelebA file '{path}' must start with the image count and the attribute names; it is corrupt or truncated"
        )
    count, names, rows = int(lines[0]), lines[1].split(), lines[2:]
    if len(rows) != count:
        raise DataError(
            f"CelebA file '{path}' declares {count} images but lists {len(rows)}; it is truncated or corrupt"
        )
    split_rows = [row.split() for row in rows]
    bad = next((i for i, r in enumerate(split_rows) if len(r) != len(names) + 1), None)
    if bad is not None:
        raise DataError(
            f"CelebA file '{path}': the row {rows[bad].strip()[:30]!r}... has {len(split_rows[bad]) - 1} values "
            f"for {len(names)} attributes; it is corrupt or truncated"
        )
    # U3 keeps enough of every token to tell it apart from "1" and "-1" (a longer token differs in 3 chars).
    flat = itertools.chain.from_iterable(r[1:] for r in split_rows)
    values = np.fromiter(flat, dtype="U3", count=len(rows) * len(names)).reshape(len(rows), len(names))
    valid = (values == "1") | (values == "-1")
    if not valid.all():
        row = int(np.argwhere(~valid)[0][0])
        raise DataError(
            f"CelebA file '{path}': the row of '{split_rows[row][0]}' has attribute values other than -1 and 1"
        )
    return names, [r[0] for r in split_rows], (values == "1").astype(np.uint8)


def _read_celeba_partition(path: str) -> dict[str, int]:
    partition: dict[str, int] = {}
    for number, line in enumerate(_read_text_lines(path), start=1):
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise DataError(f"CelebA file '{path}' line {number} is not '<file> <0|1|2>': {line!r}")
        partition[parts[0]] = int(parts[1])
    return partition


class CelebADataset(BaseImageDataset):
    """Aligned CelebA faces with their 40 attributes as a float32 {0, 1} vector (a multi-label target).

    Files: ``<root>/celeba/img_align_celeba/*.jpg``, ``list_attr_celeba.txt`` and, for splits other
    than ``all``, ``list_eval_partition.txt`` (0 train, 1 valid, 2 test), as torchvision lays them out.
    An item is the 178x218 image cropped to the 148x148 box at left 15, top 40 (PIL box (15, 40, 163,
    188)), resized to ``image_size`` (64 in VDPM) with PIL bilinear, flipped at random, in [-1, 1]. This is
    the VDPM original's crop(top=40, left=15, 148, 148) -> Resize(64) -> RandomHorizontalFlip. Images are
    decoded when read; ``validate()`` checks every file's header up front.
    """

    multilabel = True
    in_channels = 3
    name = "celeba"

    def __init__(self, root: str, split: str = "train", image_size: int = 64, random_flip: bool = True):
        if split == "val":
            split = "valid"
        if split not in (*CELEBA_SPLIT_CODES, "all"):
            raise DataError(f"CelebA has no split {split!r}; pass one of: train, valid, test, all")
        self.root = os.fspath(root)
        self.split = split
        self.image_size = check_image_size(image_size)
        self.random_flip = bool(random_flip)
        folder = os.path.join(self.root, CELEBA_DIR)
        self.image_dir = os.path.join(folder, CELEBA_IMAGES)
        attrs, partition = os.path.join(folder, CELEBA_ATTRS), os.path.join(folder, CELEBA_PARTITION)
        needed = [(self.image_dir, os.path.isdir), (attrs, os.path.isfile)]
        if split != "all":
            needed.append((partition, os.path.isfile))
        missing = [path for path, exists in needed if not exists(path)]
        if missing:
            archive = os.path.join(folder, CELEBA_IMAGES + ".zip")
            hint = f" (found '{archive}': unzip it in '{folder}')" if os.path.isfile(archive) else ""
            raise DataError(
                f"CelebA not found: missing {', '.join(repr(p) for p in missing)}; put the aligned images "
                f"(img_align_celeba.zip, unzipped), {CELEBA_ATTRS} and {CELEBA_PARTITION} from the CelebA release "
                f"in '{folder}' (torchvision's layout <root>/celeba/){hint}; {NOTHING_DOWNLOADED}"
            )
        names, files, matrix = _read_celeba_attrs(attrs)
        if split != "all":
            codes = _read_celeba_partition(partition)
            unlisted = [f for f in files if f not in codes]
            if unlisted:
                raise DataError(
                    f"CelebA file '{partition}' does not list {len(unlisted)} image(s) of '{attrs}' "
                    f"(first: {unlisted[0]!r}); the two files come from different releases or one is truncated"
                )
            keep = [i for i, f in enumerate(files) if codes[f] == CELEBA_SPLIT_CODES[split]]
            files, matrix = [files[i] for i in keep], matrix[keep]
        if not files:
            raise DataError(f"CelebA split {split!r} has no images according to '{attrs}' and '{partition}'")
        present = set(os.listdir(self.image_dir))
        absent = [f for f in files if f not in present]
        if absent:
            shown = ", ".join(repr(os.path.join(self.image_dir, f)) for f in absent[:3])
            raise DataError(
                f"CelebA is incomplete: {len(absent)} image(s) listed in '{attrs}' are missing, e.g. {shown}; "
                f"unzip all of img_align_celeba.zip into '{folder}' ({NOTHING_DOWNLOADED})"
            )
        self.filenames = files
        self.class_names = names
        self.labels = matrix.astype(np.float32)  # (N, 40) multi-hot, not class indices

    @property
    def label_dim(self) -> int:
        return self.num_classes

    def __len__(self) -> int:
        return len(self.filenames)

    def _path(self, index: int) -> str:
        return os.path.join(self.image_dir, self.filenames[index])

    def _check_size(self, path: str, size: tuple[int, int]) -> None:
        if tuple(size) != CELEBA_ALIGNED_SIZE:
            raise DataError(
                f"CelebA image '{path}' is {size[0]}x{size[1]}, not the aligned {CELEBA_ALIGNED_SIZE[0]}x"
                f"{CELEBA_ALIGNED_SIZE[1]}; the crop needs the original img_align_celeba files"
            )

    def _unreadable(self, path: str, error: BaseException) -> DataError:
        return DataError(
            f"cannot read CelebA image '{path}' ({type(error).__name__}: {error}); it is corrupt or truncated, "
            "replace it from img_align_celeba.zip"
        )

    def validate(self, max_files: int | None = None) -> int:
        """Open the header of every image (or the first max_files) and check its size; returns the count."""
        count = len(self) if max_files is None else min(len(self), max_files)
        for index in range(count):
            path = self._path(index)
            try:
                with Image.open(path) as img:
                    size = img.size
            except _DECODE_ERRORS as error:
                raise self._unreadable(path, error) from error
            self._check_size(path, size)
        return count

    def _load(self, index: int, rng: np.random.Generator) -> np.ndarray:
        path = self._path(index)
        try:
            img = Image.open(path)
        except _DECODE_ERRORS as error:
            raise self._unreadable(path, error) from error
        with img:
            self._check_size(path, img.size)
            try:
                rgb = img.convert("RGB")
            except _DECODE_ERRORS as error:
                raise self._unreadable(path, error) from error
        face = rgb.crop(CELEBA_CROP_BOX)
        if face.size != (self.image_size, self.image_size):
            face = face.resize((self.image_size, self.image_size), resample=Image.BILINEAR)
        return np.asarray(face)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, aug_seed = self._split_key(key)
        rng = np.random.default_rng(aug_seed)
        arr = self._load(index, rng)
        if self.random_flip and rng.random() < 0.5:
            arr = arr[:, ::-1]
        return to_model_tensor(arr), torch.from_numpy(self.labels[index].copy())


# ---- the entry point -----------------------------------------------------------------------------------


def _resize_stack(images: np.ndarray, size: int) -> np.ndarray:
    """Resize uint8 NHWC squares to size x size with PIL bilinear (torchvision's Resize on PIL images)."""
    if images.shape[1] == size:
        return images
    out = np.empty((len(images), size, size, images.shape[3]), dtype=np.uint8)
    for i, image in enumerate(images):
        pil = Image.fromarray(image[..., 0] if images.shape[3] == 1 else image)
        resized = np.asarray(pil.resize((size, size), resample=Image.BILINEAR))
        out[i] = resized.reshape(size, size, images.shape[3])
    return out


def load_vdpm_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str = "train",
    image_size: int | None = None,
    random_flip: bool | None = None,
) -> VDPMArrayDataset | CelebADataset:
    """One of ``VDPM_DATASETS`` from local files under ``root`` (torchvision's layouts; never downloads).

    ``split``: train / test / all (mnist, cifar10; "all" is both), train / valid / test / all (celeba,
    by list_eval_partition.txt), train / all (digits, which has no split: both mean all 1,797 scans).
    ``image_size`` None means the original's (``VDPM_DATASET_INFO[name].image_size``: 32, 32, 64, 16);
    other sizes resize with PIL bilinear (bicubic for the digits). ``random_flip`` None means the original's
    (cifar10 and celeba flip, mnist and digits do not). ``root`` is not needed for the digits; ``~`` expands.

    The result is a ``BaseImageDataset`` with ``num_classes``, ``label_dim``, ``multilabel``, ``in_channels``,
    ``class_names``, ``image_size``, ``name`` and ``split``.
    """
    key = str(name).lower()
    key = "digits" if key == "builtin:digits" else key
    if key not in VDPM_DATASET_INFO:
        raise DataError(f"unknown VDPM data set {name!r}; pass one of: {', '.join(VDPM_DATASETS)}")
    info = VDPM_DATASET_INFO[key]
    split = "valid" if (key == "celeba" and split == "val") else split
    if split not in info.splits:
        raise DataError(f"{key} has no split {split!r}; pass one of: {', '.join(info.splits)}")
    size = info.image_size if image_size is None else check_image_size(image_size)
    flip = info.random_flip if random_flip is None else bool(random_flip)
    if key == "digits":
        digits = load_builtin("digits", size, random_flip=flip)
        return VDPMArrayDataset(
            digits.images, digits.labels, digits.class_names, name=key, split=split, random_flip=flip
        )
    if root is None or not os.fspath(root):
        raise DataError(f"{key} needs a data root (--root): the folder that holds it in torchvision's layout")
    root = os.path.expanduser(os.fspath(root))
    parts = ["train", "test"] if split == "all" else [split]
    if key == "celeba":
        return CelebADataset(root, split=split, image_size=size, random_flip=flip)
    if key == "mnist":
        images, labels = _load_mnist(root, parts)
        class_names: Sequence[str] = [str(k) for k in range(10)]
    else:
        images, labels = _load_cifar10(root, parts)
        class_names = CIFAR10_CLASSES
    if images.shape[1] != images.shape[2]:
        raise DataError(f"{key} images under '{root}' are {images.shape[1]}x{images.shape[2]}, not square")
    return VDPMArrayDataset(
        _resize_stack(images, size), labels, class_names, name=key, split=split, random_flip=flip
    )


__all__ = [
    "CELEBA_ALIGNED_SIZE",
    "CELEBA_CROP_BOX",
    "CIFAR10_CLASSES",
    "VDPM_DATASETS",
    "VDPM_DATASET_INFO",
    "CelebADataset",
    "VDPMArrayDataset",
    "VDPMDatasetInfo",
    "load_vdpm_dataset",
    "read_idx",
]
