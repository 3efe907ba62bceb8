"""guided_diffusion.data.vdpm_datasets: MNIST, CIFAR-10 and CelebA from tiny fake files in torchvision's
exact layouts, the built-in digits, and the errors for missing or corrupt files."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.data import (
    VDPM_DATASET_INFO,
    BatchStream,
    CelebADataset,
    DataError,
    VDPMArrayDataset,
    load_builtin,
    load_data,
    load_vdpm_dataset,
)

TOL = 1e-6


def _expected(arr_hwc: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> the [-1, 1] CHW tensor the loaders must return."""
    return torch.from_numpy(arr_hwc.astype(np.float32).transpose(2, 0, 1) / 127.5 - 1)


# ---- MNIST -------------------------------------------------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def _write(path, payload: bytes, gz: bool = False) -> str:
    path = str(path) + (".gz" if gz else "")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with (gzip.open(path, "wb") if gz else open(path, "wb")) as handle:
        handle.write(payload)
    return path


def _mnist(root, train_gz=False, test_gz=True):
    """3 train images (plain files by default) and 2 test images (gzipped), each with 0 and 255 pixels."""
    rng = np.random.default_rng(0)
    images = {s: rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8) for s, n in (("train", 3), ("t10k", 2))}
    for arr in images.values():
        arr[:, 0, 0], arr[:, 0, 1] = 0, 255
    labels = {"train": np.array([7, 0, 9], np.uint8), "t10k": np.array([3, 5], np.uint8)}
    raw = root / "MNIST" / "raw"
    for split, gz in (("train", train_gz), ("t10k", test_gz)):
        _write(raw / f"{split}-images-idx3-ubyte", _idx(images[split]), gz)
        _write(raw / f"{split}-labels-idx1-ubyte", _idx(labels[split]), gz)
    return images, labels


def test_mnist_plain_and_gz_files_exact_pixels_labels_and_splits(tmp_path):
    images, labels = _mnist(tmp_path)
    train = load_vdpm_dataset("mnist", tmp_path, split="train", image_size=28)
    assert isinstance(train, VDPMArrayDataset) and len(train) == 3
    assert (train.in_channels, train.num_classes, train.label_dim, train.multilabel) == (1, 10, 10, False)
    assert train.random_flip is False  # the original never flips MNIST
    for i in range(3):
        x, y = train[(i, 12345)]
        assert x.shape == (1, 28, 28) and x.dtype == torch.float32
        assert torch.allclose(x, _expected(images["train"][i][..., None]), atol=TOL)
        assert y == int(labels["train"][i]) and isinstance(y, int)
    assert float(train[0][0].min()) == -1.0 and float(train[0][0].max()) == 1.0
    test = load_vdpm_dataset("mnist", tmp_path, split="test", image_size=28)  # read from the .gz files
    assert [test[i][1] for i in range(len(test))] == [3, 5]
    assert torch.allclose(test[1][0], _expected(images["t10k"][1][..., None]), atol=TOL)
    both = load_vdpm_dataset("mnist", tmp_path, split="all", image_size=28)
    assert both.labels.tolist() == [7, 0, 9, 3, 5]
    assert torch.equal(both[3][0], test[0][0])


def test_mnist_plain_file_wins_over_gz_and_gz_train_works(tmp_path):
    images, _ = _mnist(tmp_path, train_gz=True, test_gz=False)
    assert len(load_vdpm_dataset("mnist", tmp_path, image_size=28)) == 3
    raw = tmp_path / "MNIST" / "raw"
    # A plain copy with other pixels beside the .gz: torchvision reads the plain file, and so must we.
    _write(raw / "train-images-idx3-ubyte", _idx(255 - images["train"]))
    _write(raw / "train-labels-idx1-ubyte", _idx(np.array([1, 2, 3], np.uint8)))
    ds = load_vdpm_dataset("mnist", tmp_path, image_size=28)
    assert ds.labels.tolist() == [1, 2, 3]
    assert torch.allclose(ds[0][0], _expected(255 - images["train"][0][..., None]), atol=TOL)


def test_mnist_default_is_the_originals_resize_to_32(tmp_path):
    transforms = pytest.importorskip("torchvision.transforms")
    images, _ = _mnist(tmp_path)
    ds = load_vdpm_dataset("mnist", str(tmp_path))
    assert ds.image_size == 32 == VDPM_DATASET_INFO["mnist"].image_size
    original = transforms.Compose([transforms.Resize(32), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    for i in range(3):
        reference = original(Image.fromarray(images["train"][i], mode="L"))
        x = ds[i][0]
        assert x.shape == (1, 32, 32)
        assert torch.allclose(x, reference, atol=TOL)
    assert not torch.allclose(ds[0][0][:, 2:30, 2:30], _expected(images["train"][0][..., None]), atol=0.1)


def test_missing_mnist_names_the_exact_paths(tmp_path):
    with pytest.raises(DataError) as caught:
        load_vdpm_dataset("mnist", tmp_path, split="test")
    message = str(caught.value)
    raw = os.path.join(str(tmp_path), "MNIST", "raw")
    for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        assert f"'{os.path.join(raw, name)}' (or '{os.path.join(raw, name)}.gz')" in message
    assert "train-images-idx3-ubyte'" not in message.split("; put")[0]  # only the test split was asked for
    assert "nothing is downloaded" in message and "<root>/MNIST/raw/" in message
    # A lower-case folder is not torchvision's layout; the message points at it.
    _write(tmp_path / "mnist" / "raw" / "t10k-images-idx3-ubyte", _idx(np.zeros((1, 28, 28), np.uint8)))
    with pytest.raises(DataError, match="were found in .*mnist.*raw.*move them there"):
        load_vdpm_dataset("mnist", tmp_path, split="test")


def test_corrupt_mnist_files_are_named(tmp_path):
    images, labels = _mnist(tmp_path, test_gz=False)
    raw = tmp_path / "MNIST" / "raw"
    image_file = str(raw / "t10k-images-idx3-ubyte")
    _write(image_file, _idx(labels["t10k"]))  # a labels file where the images belong
    with pytest.raises(DataError, match=f"'{image_file}' has magic number 0x00000801, expected 0x00000803"):
        load_vdpm_dataset("mnist", tmp_path, split="test")
    _write(image_file, _idx(images["t10k"])[:-5])
    with pytest.raises(DataError, match=f"'{image_file}' is truncated.*\\(2, 28, 28\\)"):
        load_vdpm_dataset("mnist", tmp_path, split="test")
    _write(image_file, _idx(images["t10k"])[:10])
    with pytest.raises(DataError, match=f"'{image_file}' is truncated: 10 bytes"):
        load_vdpm_dataset("mnist", tmp_path, split="test")
    _write(image_file, gzip.compress(_idx(images["t10k"])))  # gzipped content without the .gz name
    with pytest.raises(DataError, match="magic number 0x1F8B.*gzip-compressed"):
        load_vdpm_dataset("mnist", tmp_path, split="test")
    _write(image_file, _idx(images["t10k"][:1]))
    with pytest.raises(DataError, match=f"'{image_file}' holds 1 images but .*labels-idx1-ubyte' holds 2 labels"):
        load_vdpm_dataset("mnist", tmp_path, split="test")
    os.remove(image_file)
    gz_file = _write(raw / "t10k-images-idx3-ubyte", _idx(images["t10k"]), gz=True)
    with open(gz_file, "rb") as handle:
        packed = handle.read()
    with open(gz_file, "wb") as handle:
        handle.write(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=f"cannot read MNIST file '{gz_file}'.*corrupt or truncated"):
        load_vdpm_dataset("mnist", tmp_path, split="test")
    _write(raw / "train-labels-idx1-ubyte", _idx(np.array([1, 10, 2], np.uint8)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte' holds label 10"):
        load_vdpm_dataset("mnist", tmp_path, split="train")


# ---- CIFAR-10 ----------------------------------------------------------------------------------------


def _py2_pickle(data: np.ndarray, labels: list[int]) -> bytes:
    """The bytes Python 2's cPickle (protocol 2) writes for a CIFAR batch dict holding a NumPy 1.x array:
    py2 ``str`` (BINSTRING opcodes) and the old ``numpy.core.multiarray`` module name."""

    def text(b: bytes) -> bytes:
        return (b"U" + bytes([len(b)]) + b) if len(b) < 256 else (b"T" + struct.pack("<I", len(b)) + b)

    def integer(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    dtype = (b"cnumpy\ndtype\n" + text(b"u1") + integer(0) + integer(1) + b"\x87R(" + integer(3) + text(b"|")
             + b"NNN" + integer(-1) + integer(-1) + integer(0) + b"tb")
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + integer(0) + b"\x85" + text(b"b")
             + b"\x87R(" + integer(1) + integer(data.shape[0]) + integer(data.shape[1]) + b"\x86" + dtype
             + b"\x89" + text(data.tobytes()) + b"tb")
    label_list = b"](" + b"".join(integer(v) for v in labels) + b"e"
    return (b"\x80\x02}(" + text(b"batch_label") + text(b"fake batch") + text(b"data") + array
            + text(b"labels") + label_list + b"u.")


def _cifar(root):
    """Five train batches of 2 images (py2 pickles, py3 protocol 2 and py3 protocol 5) and 3 test images."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    os.makedirs(folder, exist_ok=True)
    rows, labels = {}, {}
    for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        n = 3 if name == "test_batch" else 2
        rows[name] = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        rows[name][:, 0], rows[name][:, 1] = 0, 255
        labels[name] = [int(v) for v in rng.integers(0, 10, size=n)]
        if k % 3 == 0:
            payload = _py2_pickle(rows[name], labels[name])
        else:
            entry = {b"batch_label": b"x", b"data": rows[name], b"labels": labels[name], b"filenames": [b"a"] * n}
            payload = pickle.dumps(entry, protocol=2 if k % 3 == 1 else 5)
        (folder / name).write_bytes(payload)
    return rows, labels


def _cifar_pixel(row: np.ndarray) -> np.ndarray:
    """The documented layout: 1024 red, 1024 green, 1024 blue values, each plane row-major 32x32."""
    hwc = np.zeros((32, 32, 3), np.uint8)
    for c in range(3):
        for y in range(32):
            for x in range(32):
                hwc[y, x, c] = row[c * 1024 + y * 32 + x]
    return hwc


def test_cifar10_batches_exact_pixels_labels_and_splits(tmp_path):
    rows, labels = _cifar(tmp_path)
    train = load_vdpm_dataset("cifar10", tmp_path, random_flip=False)
    assert len(train) == 10 and train.class_names[0] == "airplane" and train.class_names[9] == "truck"
    assert (train.in_channels, train.image_size, train.num_classes, train.multilabel) == (3, 32, 10, False)
    expected_labels = [v for i in range(1, 6) for v in labels[f"data_batch_{i}"]]
    assert train.labels.tolist() == expected_labels
    for i in range(10):
        row = rows[f"data_batch_{i // 2 + 1}"][i % 2]
        x, y = train[i]
        assert torch.allclose(x, _expected(_cifar_pixel(row)), atol=TOL) and y == expected_labels[i]
    assert float(train[0][0].min()) == -1.0 and float(train[0][0].max()) == 1.0
    test = load_vdpm_dataset("cifar10", tmp_path, split="test", random_flip=False)
    assert test.labels.tolist() == labels["test_batch"]
    assert torch.allclose(test[2][0], _expected(_cifar_pixel(rows["test_batch"][2])), atol=TOL)
    assert len(load_vdpm_dataset("cifar10", tmp_path, split="all")) == 13


def test_cifar10_flips_by_default_and_only_by_the_key(tmp_path):
    _cifar(tmp_path)
    flipping = load_vdpm_dataset("cifar10", tmp_path)
    assert flipping.random_flip is True
    plain = load_vdpm_dataset("cifar10", tmp_path, random_flip=False)[4][0]
    outcomes = [flipping[(4, seed)][0] for seed in range(16)]
    flipped = [torch.equal(x, plain.flip(-1)) for x in outcomes]
    assert all(f or torch.equal(x, plain) for f, x in zip(flipped, outcomes)) and 0 < sum(flipped) < 16
    assert torch.equal(flipping[(4, 3)][0], outcomes[3])
    small = load_vdpm_dataset("cifar10", tmp_path, image_size=16, random_flip=False)
    assert small[0][0].shape == (3, 16, 16)


def test_missing_cifar10_names_the_exact_file(tmp_path):
    with pytest.raises(DataError, match="test_batch'; extract cifar-10-python.tar.gz.*nothing is downloaded"):
        load_vdpm_dataset("cifar10", tmp_path, split="test")
    _cifar(tmp_path)
    os.remove(tmp_path / "cifar-10-batches-py" / "data_batch_3")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"archive")
    with pytest.raises(DataError) as caught:
        load_vdpm_dataset("cifar10", tmp_path)
    message = str(caught.value)
    assert f"missing '{os.path.join(str(tmp_path), 'cifar-10-batches-py', 'data_batch_3')}';" in message
    assert "data_batch_2'" not in message and "extract it with tar -xzf" in message
    assert len(load_vdpm_dataset("cifar10", tmp_path, split="test")) == 3  # the test split is complete


class _Evil:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_corrupt_or_hostile_cifar10_files_are_named(tmp_path):
    rows, labels = _cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=f"cannot read CIFAR-10 file '{path}'.*corrupt or truncated"):
        load_vdpm_dataset("cifar10", tmp_path, split="test")
    target = str(tmp_path / "pwned")
    path.write_bytes(pickle.dumps({b"data": _Evil(target), b"labels": []}, protocol=2))
    with pytest.raises(DataError, match=f"refusing to unpickle CIFAR-10 file '{path}'.*mkdir"):
        load_vdpm_dataset("cifar10", tmp_path, split="test")
    assert not os.path.exists(target)
    bad_entries = [
        ({b"data": rows["test_batch"].astype(np.float32), b"labels": labels["test_batch"]}, "uint8 array"),
        ({b"data": rows["test_batch"], b"labels": labels["test_batch"][:2]}, "3 images but 2 labels"),
        ({b"data": rows["test_batch"], b"labels": ["a", "b", "c"]}, "list of integers"),
        ({b"data": rows["test_batch"], b"labels": [1, 2, 10]}, "outside 0..9"),
        ({b"images": rows["test_batch"]}, "no 'data'/'labels'"),
        ([1, 2, 3], "not a batch dict"),
    ]
    for entry, fragment in bad_entries:
        path.write_bytes(pickle.dumps(entry, protocol=2))
        with pytest.raises(DataError, match=f"'{path}'.*{fragment}"):
            load_vdpm_dataset("cifar10", tmp_path, split="test")
    # Python 3 str keys and an int64 label array are the same data: accepted.
    path.write_bytes(pickle.dumps({"data": rows["test_batch"], "labels": np.array(labels["test_batch"])}))
    assert load_vdpm_dataset("cifar10", tmp_path, split="test").labels.tolist() == labels["test_batch"]


# ---- CelebA ------------------------------------------------------------------------------------------

ATTR_NAMES = [f"Attr_{k:02d}" for k in range(40)]


def _coordinates() -> np.ndarray:
    """178x218 RGB whose red is the column x and green the row y (blue constant)."""
    y, x = np.mgrid[0:218, 0:178]
    return np.stack([x, y, np.full_like(x, 128)], axis=-1).astype(np.uint8)


def _celeba(root, with_partition=True):
    folder = root / "celeba"
    images_dir = folder / "img_align_celeba"
    os.makedirs(images_dir)
    rng = np.random.default_rng(2)
    files = [f"{k:06d}.jpg" for k in range(1, 5)]
    for k, name in enumerate(files):
        arr = _coordinates() if k == 0 else rng.integers(0, 256, size=(218, 178, 3), dtype=np.uint8)
        Image.fromarray(arr).save(images_dir / name, format="JPEG", quality=100, subsampling=0)
    tags = rng.integers(0, 2, size=(4, 40))
    lines = ["4", " ".join(ATTR_NAMES)]
    lines += [name + "  " + " ".join("1" if t else "-1" for t in row) for name, row in zip(files, tags)]
    (folder / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    if with_partition:
        parts = [2, 0, 1, 0]  # 000002 and 000004 train, 000003 valid, 000001 test
        (folder / "list_eval_partition.txt").write_text("".join(f"{n} {p}\n" for n, p in zip(files, parts)))
    return files, tags


def test_celeba_splits_and_forty_tag_targets(tmp_path):
    files, tags = _celeba(tmp_path)
    train = load_vdpm_dataset("celeba", tmp_path, split="train")
    assert isinstance(train, CelebADataset) and train.filenames == ["000002.jpg", "000004.jpg"]
    assert (train.num_classes, train.label_dim, train.multilabel, train.in_channels) == (40, 40, True, 3)
    assert train.class_names == ATTR_NAMES and train.image_size == 64 and train.random_flip is True
    x, y = train[0]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert -1 <= float(x.min()) and float(x.max()) <= 1
    assert y.dtype == torch.float32 and y.shape == (40,)
    assert torch.equal(y, torch.tensor(tags[1], dtype=torch.float32))
    assert torch.equal(train[1][1], torch.tensor(tags[3], dtype=torch.float32))
    assert load_vdpm_dataset("celeba", tmp_path, split="valid").filenames == ["000003.jpg"]
    assert load_vdpm_dataset("celeba", tmp_path, split="val").filenames == ["000003.jpg"]
    assert load_vdpm_dataset("celeba", tmp_path, split="test").filenames == ["000001.jpg"]
    assert VDPM_DATASET_INFO["celeba"].train_split == "all"
    os.remove(tmp_path / "celeba" / "list_eval_partition.txt")  # "all" does not need the partition
    everything = load_vdpm_dataset("celeba", tmp_path, split="all")
    assert everything.filenames == files
    assert torch.equal(torch.from_numpy(everything.labels), torch.tensor(tags, dtype=torch.float32))
    assert everything.validate() == 4


def test_celeba_crop_box_and_resize_geometry(tmp_path):
    _celeba(tmp_path)
    # image_size 148: the crop alone. Output pixel (i, j) must come from source (x, y) = (15 + j, 40 + i).
    crop = load_vdpm_dataset("celeba", tmp_path, split="test", image_size=148, random_flip=False)[0][0]
    red, green = (crop[0].double() + 1) * 127.5, (crop[1].double() + 1) * 127.5
    index = torch.arange(148, dtype=torch.float64)
    # Means over the other axis average out the JPEG error (< 0.4 here); a one-pixel shift would be 1.0 off.
    assert float((red.mean(0) - (15 + index)).abs().max()) < 0.5
    assert float((green.mean(1) - (40 + index)).abs().max()) < 0.5
    assert float((red - (15 + index)[None, :]).abs().max()) <= 4
    assert float((green - (40 + index)[:, None]).abs().max()) <= 4
    # image_size 64 (the default): bilinear resampling of a ramp keeps it linear away from the border,
    # output centre j + 0.5 maps to source 15 + (j + 0.5) * 148 / 64 (pixel centres at +0.5).
    face = load_vdpm_dataset("celeba", tmp_path, split="test", random_flip=False)[0][0]
    red, green = (face[0].double() + 1) * 127.5, (face[1].double() + 1) * 127.5
    centre = (torch.arange(64, dtype=torch.float64) + 0.5) * 148 / 64 - 0.5
    inner = slice(2, 62)
    assert float((red.mean(0) - (15 + centre))[inner].abs().max()) < 0.5
    assert float((green.mean(1) - (40 + centre))[inner].abs().max()) < 0.5


def test_celeba_matches_the_originals_torchvision_pipeline(tmp_path):
    transforms = pytest.importorskip("torchvision.transforms")
    functional = pytest.importorskip("torchvision.transforms.functional")
    _celeba(tmp_path)
    original = transforms.Compose([
        transforms.Lambda(lambda im: functional.crop(im, top=40, left=15, height=148, width=148)),
        transforms.Resize(64),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    ds = load_vdpm_dataset("celeba", tmp_path, split="all", random_flip=False)
    for i, name in enumerate(ds.filenames):
        with Image.open(tmp_path / "celeba" / "img_align_celeba" / name) as img:
            reference = original(img.convert("RGB"))
        assert torch.allclose(ds[i][0], reference, atol=TOL)
    flipping = load_vdpm_dataset("celeba", tmp_path, split="all")
    flips = [torch.equal(flipping[(1, s)][0], ds[1][0].flip(-1)) for s in range(12)]
    assert 0 < sum(flips) < 12


def test_missing_celeba_lists_every_absent_path(tmp_path):
    folder = os.path.join(str(tmp_path), "celeba")
    with pytest.raises(DataError) as caught:
        load_vdpm_dataset("celeba", tmp_path)
    message = str(caught.value)
    for name in ("img_align_celeba", "list_attr_celeba.txt", "list_eval_partition.txt"):
        assert f"'{os.path.join(folder, name)}'" in message
    assert "nothing is downloaded" in message and "<root>/celeba/" in message
    with pytest.raises(DataError) as caught:
        load_vdpm_dataset("celeba", tmp_path, split="all")
    assert "list_eval_partition.txt'" not in str(caught.value).split("; put")[0]


def test_corrupt_or_incomplete_celeba_is_named(tmp_path):
    _celeba(tmp_path)
    folder = tmp_path / "celeba"
    images = folder / "img_align_celeba"
    jpeg = (images / "000003.jpg").read_bytes()
    (images / "000003.jpg").write_bytes(jpeg[: len(jpeg) // 3])
    valid = load_vdpm_dataset("celeba", tmp_path, split="valid")
    with pytest.raises(DataError, match="cannot read CelebA image '.*000003.jpg'"):
        valid[0]
    Image.new("RGB", (64, 64)).save(images / "000003.jpg", format="JPEG")
    with pytest.raises(DataError, match="'.*000003.jpg' is 64x64, not the aligned 178x218"):
        load_vdpm_dataset("celeba", tmp_path, split="valid").validate()
    os.remove(images / "000004.jpg")
    with pytest.raises(DataError, match="1 image\\(s\\) listed .* are missing, e.g. '.*000004.jpg'"):
        load_vdpm_dataset("celeba", tmp_path, split="train")
    assert len(load_vdpm_dataset("celeba", tmp_path, split="test")) == 1  # other splits still load
    attrs = folder / "list_attr_celeba.txt"
    lines = attrs.read_text().splitlines()
    attrs.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DataError, match=f"'{attrs}' declares 4 images but lists 3"):
        load_vdpm_dataset("celeba", tmp_path, split="test")
    for token in ("0", "-10", "1.0"):
        last = lines[-1].split()
        last[7] = token
        attrs.write_text("\n".join(lines[:-1] + [" ".join(last)]) + "\n")
        with pytest.raises(DataError, match=f"'{attrs}': the row of '000004.jpg' has attribute values other than"):
            load_vdpm_dataset("celeba", tmp_path, split="test")
    attrs.write_text("\n".join(lines[:-1] + [" ".join(lines[-1].split()[:-1])]) + "\n")
    with pytest.raises(DataError, match=f"'{attrs}': the row '000004.jpg .*has 39 values for 40 attributes"):
        load_vdpm_dataset("celeba", tmp_path, split="test")
    attrs.write_text("\n".join(lines) + "\n")
    (folder / "list_eval_partition.txt").write_text("000001.jpg 2\n000002.jpg 0\n")
    with pytest.raises(DataError, match="list_eval_partition.txt' does not list 2 image"):
        load_vdpm_dataset("celeba", tmp_path, split="test")


# ---- digits, dispatch and streaming ------------------------------------------------------------------


def test_digits_are_selectable_like_the_others():
    digits = load_vdpm_dataset("digits")
    builtin = load_builtin("digits", 16, random_flip=False)
    assert isinstance(digits, VDPMArrayDataset) and len(digits) == len(builtin) == 1797
    assert (digits.image_size, digits.in_channels, digits.num_classes, digits.random_flip) == (16, 3, 10, False)
    assert np.array_equal(digits.labels, builtin.labels)
    assert torch.equal(digits[5][0], builtin[5][0]) and digits[5][1] == builtin[5][1]
    assert load_vdpm_dataset("builtin:digits", split="all", image_size=8)[0][0].shape == (3, 8, 8)


def test_bad_names_splits_and_roots():
    with pytest.raises(DataError, match="unknown VDPM data set 'svhn'; pass one of: mnist, cifar10, celeba, digits"):
        load_vdpm_dataset("svhn", "/nowhere")
    with pytest.raises(DataError, match="mnist has no split 'valid'; pass one of: train, test, all"):
        load_vdpm_dataset("mnist", "/nowhere", split="valid")
    with pytest.raises(DataError, match="digits has no split 'test'"):
        load_vdpm_dataset("digits", split="test")
    with pytest.raises(DataError, match="cifar10 needs a data root"):
        load_vdpm_dataset("cifar10")
    with pytest.raises(DataError, match="image_size must be positive"):
        load_vdpm_dataset("mnist", "/nowhere", image_size=0)


def test_info_table_matches_the_loaded_sets(tmp_path):
    _mnist(tmp_path)
    _cifar(tmp_path)
    _celeba(tmp_path)
    for name in ("mnist", "cifar10", "celeba", "digits"):
        info = VDPM_DATASET_INFO[name]
        ds = load_vdpm_dataset(name, tmp_path, split="all")
        x, _ = ds[0]
        assert x.shape == (info.in_channels, info.image_size, info.image_size), name
        assert (ds.num_classes, ds.label_dim, ds.multilabel, ds.random_flip) == (
            info.num_classes, info.label_dim, info.multilabel, info.random_flip), name


def test_datasets_stream_through_batch_stream_and_load_data(tmp_path):
    _mnist(tmp_path)
    _celeba(tmp_path)
    mnist = load_vdpm_dataset("mnist", tmp_path, split="all")
    loader = torch.utils.data.DataLoader(mnist, batch_sampler=BatchStream(len(mnist), 4, seed=3))
    images, labels = next(iter(loader))
    assert images.shape == (4, 1, 32, 32) and labels.dtype == torch.int64
    assert set(labels.tolist()) <= {7, 0, 9, 3, 5}
    celeba = load_vdpm_dataset("celeba", tmp_path, split="all")
    batches = load_data(data_dir="", batch_size=3, image_size=64, class_cond=True, dataset=celeba, seed=1)
    x, cond = next(batches)
    assert x.shape == (3, 3, 64, 64) and cond["y"].shape == (3, 40) and cond["y"].dtype == torch.float32
    rows = {tuple(r) for r in celeba.labels.tolist()}
    assert all(tuple(r) in rows for r in cond["y"].tolist())
