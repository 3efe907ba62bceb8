"""guided_diffusion.data: folders, crops, arrays, the digits set, the batch stream and the errors."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.data import (
    ArrayDataset,
    BatchStream,
    DataError,
    ImageFolderDataset,
    build_dataset,
    list_image_files,
    load_data,
)


def _save(path, size=(8, 8), color=(128, 64, 32), array=None, fmt=None):
    """Write an RGB image of size (width, height), solid colour unless an HWC array is given."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(array) if array is not None else Image.new("RGB", size, color)
    image.save(path, format=fmt)
    return str(path)


def _halves(width=40, height=20):
    """Left half red, right half blue: orientation and crop position are visible in the pixels."""
    arr = np.zeros((height, width, 3), dtype=np.uint8)
    arr[:, : width // 2, 0] = 255
    arr[:, width // 2 :, 2] = 255
    return arr


# ---- folders and labels -------------------------------------------------------------------------------


def _tree(root):
    _save(root / "zebra" / "cat_1.png")
    _save(root / "zebra" / "dog_3.png")
    _save(root / "apple" / "dog_2.png")
    _save(root / "apple" / "sub" / "cat_0.png")
    _save(root / "zebra" / "eel_4.JPEG", fmt="JPEG")
    (root / ".DS_Store").write_bytes(b"finder state")
    os.makedirs(root / ".cache")
    (root / ".cache" / "notes.txt").write_text("tool state")


def test_listing_is_recursive_sorted_and_skips_hidden_entries(tmp_path):
    _tree(tmp_path)
    relative = [os.path.relpath(p, tmp_path) for p in list_image_files(str(tmp_path))]
    assert relative == [
        os.path.join("apple", "dog_2.png"),
        os.path.join("apple", "sub", "cat_0.png"),
        os.path.join("zebra", "cat_1.png"),
        os.path.join("zebra", "dog_3.png"),
        os.path.join("zebra", "eel_4.JPEG"),
    ]


def test_prefix_and_folder_labels(tmp_path):
    _tree(tmp_path)
    by_prefix = ImageFolderDataset(str(tmp_path), 8, label_from="prefix")
    assert by_prefix.class_names == ["cat", "dog", "eel"] and by_prefix.num_classes == 3
    assert by_prefix.labels.dtype == np.int64
    assert by_prefix.labels.tolist() == [1, 0, 0, 1, 2]
    by_folder = ImageFolderDataset(str(tmp_path), 8, label_from="folder")
    assert by_folder.class_names == ["apple", "sub", "zebra"]
    assert by_folder.labels.tolist() == [0, 1, 2, 2, 2]
    assert [by_folder[i][1] for i in range(5)] == [0, 1, 2, 2, 2]


# ---- preprocessing ------------------------------------------------------------------------------------


def test_center_crop_keeps_the_middle_and_maps_to_minus_one_one(tmp_path):
    _save(tmp_path / "x_0.png", array=_halves(40, 20))
    x, label = ImageFolderDataset(str(tmp_path), 8, random_flip=False)[0]
    assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and label == 0
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    # 40x20 -> BOX 20x10 -> BICUBIC 16x8 -> columns 4..11: red on the left, blue on the right.
    red, blue = torch.tensor([1.0, -1.0, -1.0]), torch.tensor([-1.0, -1.0, 1.0])
    tol = 2 / 127.5
    assert torch.allclose(x[:, :, :2], red[:, None, None].expand(3, 8, 2), atol=tol)
    assert torch.allclose(x[:, :, -2:], blue[:, None, None].expand(3, 8, 2), atol=tol)
    assert float(x[1].abs().sub(1).abs().max()) < tol  # green stays off everywhere


def test_center_crop_halves_with_box_and_takes_the_central_square(tmp_path):
    source = np.random.default_rng(0).integers(0, 256, size=(16, 32, 3), dtype=np.uint8)
    _save(tmp_path / "x_0.png", array=source)
    x, _ = ImageFolderDataset(str(tmp_path), 8, random_flip=False)[0]
    # 32x16 halves once to 16x8 (2x2 means), which is already 8 high; the crop keeps columns 4..11.
    means = source.astype(np.float64).reshape(8, 2, 16, 2, 3).mean(axis=(1, 3))[:, 4:12]
    expected = torch.from_numpy(means.transpose(2, 0, 1) / 127.5 - 1).float()
    assert torch.allclose(x, expected, atol=1.01 / 127.5)


def test_flip_and_random_crop_depend_only_on_the_key(tmp_path):
    _save(tmp_path / "x_0.png", array=_halves(40, 20))
    flipping = ImageFolderDataset(str(tmp_path), 8, random_flip=True)
    plain = ImageFolderDataset(str(tmp_path), 8, random_flip=False)[0][0]
    assert torch.equal(flipping[(0, 7)][0], flipping[(0, 7)][0])
    assert torch.equal(flipping[0][0], flipping[(0, 0)][0])
    outcomes = [flipping[(0, seed)][0] for seed in range(16)]
    flipped = [torch.equal(x, plain.flip(-1)) for x in outcomes]
    assert all(f or torch.equal(x, plain) for f, x in zip(flipped, outcomes))
    assert 0 < sum(flipped) < 16
    cropping = ImageFolderDataset(str(tmp_path), 8, random_crop=True, random_flip=False)
    crops = [cropping[(0, seed)][0] for seed in range(12)]
    assert all(c.shape == (3, 8, 8) for c in crops)
    assert torch.equal(cropping[(0, 3)][0], crops[3])
    assert len({c.numpy().tobytes() for c in crops}) > 1


# ---- the batch stream ---------------------------------------------------------------------------------


def _take(stream, n):
    iterator = iter(stream)
    return [next(iterator) for _ in range(n)]


def test_ranks_are_disjoint_and_each_epoch_covers_the_rank():
    owned = []
    for rank in range(3):
        stream = BatchStream(10, 2, seed=1, rank=rank, world_size=3)
        per_epoch = stream.items_per_epoch
        keys = [key for batch in _take(stream, per_epoch) for key in batch]
        first, second = [k[0] for k in keys[:per_epoch]], [k[0] for k in keys[per_epoch : 2 * per_epoch]]
        assert sorted(first) == sorted(second) == list(range(rank, 10, 3))
        owned.append(set(first))
    assert set.union(*owned) == set(range(10)) and sum(len(s) for s in owned) == 10


def test_start_step_reproduces_the_stream_across_epoch_boundaries():
    reference = _take(BatchStream(10, 3, seed=5), 14)
    # Batch 3 holds positions 9..11 and batch 6 positions 18..20: both straddle an epoch boundary.
    for start in (1, 3, 6, 9):
        assert _take(BatchStream(10, 3, seed=5, start_step=start), 5) == reference[start : start + 5]
    epochs = [[k[0] for b in reference for k in b][10 * e : 10 * (e + 1)] for e in range(4)]
    assert all(sorted(e) == list(range(10)) for e in epochs)
    assert len({tuple(e) for e in epochs}) > 1  # reshuffled per epoch
    far = next(iter(BatchStream(10, 3, seed=5, start_step=10**9)))  # computed, not skipped
    assert len(far) == 3


def test_stream_seed_order_and_augmentation_seeds():
    assert _take(BatchStream(20, 4, seed=2), 6) == _take(BatchStream(20, 4, seed=2), 6)
    assert _take(BatchStream(20, 4, seed=2), 6) != _take(BatchStream(20, 4, seed=3), 6)
    ordered = [k[0] for b in _take(BatchStream(5, 2, shuffle=False), 5) for k in b]
    assert ordered == [0, 1, 2, 3, 4] * 2
    keys = [k for b in _take(BatchStream(5, 2, seed=0), 5) for k in b]
    aug = [k[1] for k in keys]
    assert len(set(aug)) == len(aug) and all(0 <= s < 2**63 for s in aug)  # fresh seed per position
    other_rank = [k[1] for b in _take(BatchStream(10, 2, rank=1, world_size=2), 5) for k in b]
    assert not set(aug) & set(other_rank)


def test_stream_rejects_more_ranks_than_items():
    with pytest.raises(DataError, match="fewer than the 4 ranks"):
        BatchStream(3, 1, rank=3, world_size=4)
    with pytest.raises(DataError, match="rank"):
        BatchStream(10, 1, rank=2, world_size=2)


# ---- load_data ----------------------------------------------------------------------------------------


def _labelled_folder(root, n=6):
    for i in range(n):
        _save(root / f"{'ab'[i % 2]}_{i}.png", size=(12, 10), color=(20 * i, 100, 200 - 20 * i))
    return str(root)


def test_load_data_yields_nchw_batches_with_labels(tmp_path):
    data_dir = _labelled_folder(tmp_path)
    batches = load_data(data_dir=data_dir, batch_size=4, image_size=8, class_cond=True)
    for _ in range(3):
        images, cond = next(batches)
        assert images.shape == (4, 3, 8, 8) and images.dtype == torch.float32
        assert float(images.min()) >= -1 and float(images.max()) <= 1
        assert cond["y"].dtype == torch.int64 and cond["y"].shape == (4,)
        assert set(cond["y"].tolist()) <= {0, 1}
    images, cond = next(load_data(data_dir=data_dir, batch_size=2, image_size=8))
    assert cond == {} and images.shape == (2, 3, 8, 8)


def test_load_data_resumes_exactly_and_matches_the_adm_path(tmp_path):
    from guided_diffusion.image_datasets import load_data as adm_load_data

    data_dir = _labelled_folder(tmp_path)
    kwargs = {"data_dir": data_dir, "batch_size": 4, "image_size": 8, "class_cond": True, "seed": 3}
    full = adm_load_data(**kwargs)
    reference = [next(full) for _ in range(4)]
    resumed = load_data(start_step=2, **kwargs)
    for expected in reference[2:]:
        images, cond = next(resumed)
        assert torch.equal(images, expected[0]) and torch.equal(cond["y"], expected[1]["y"])
    # Augmentation lives in the keys, so worker processes cannot change a batch.
    workers = load_data(num_workers=2, random_crop=True, **kwargs)
    plain = load_data(random_crop=True, **kwargs)
    for _ in range(3):
        (a, cond_a), (b, cond_b) = next(workers), next(plain)
        assert torch.equal(a, b) and torch.equal(cond_a["y"], cond_b["y"])


# ---- arrays: npz and builtin digits -------------------------------------------------------------------


def test_npz_round_trip(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, size=(5, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 2, 1, 2, 0])
    path = str(tmp_path / "samples.npz")
    np.savez(path, images, labels)
    dataset = build_dataset(path, 8, random_flip=False)
    assert isinstance(dataset, ArrayDataset) and len(dataset) == 5 and dataset.num_classes == 3
    for i in range(5):
        x, y = dataset[(i, 11)]
        assert y == labels[i]
        expected = torch.from_numpy(images[i].transpose(2, 0, 1) / 127.5 - 1).float()
        assert torch.allclose(x, expected, atol=1e-6)
    unlabelled = str(tmp_path / "unlabelled.npz")
    np.savez(unlabelled, images)
    assert build_dataset(unlabelled, 8)[0][1] == -1
    with pytest.raises(DataError, match="class_cond False"):
        load_data(data_dir=unlabelled, batch_size=2, image_size=8, class_cond=True)


def test_npz_errors_name_the_fix(tmp_path):
    images = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "ok.npz", images)
    with pytest.raises(DataError, match="--image_size 8"):
        build_dataset(str(tmp_path / "ok.npz"), 16)
    np.savez(tmp_path / "named.npz", images=images)
    with pytest.raises(DataError, match="arr_0"):
        build_dataset(str(tmp_path / "named.npz"), 8)
    np.savez(tmp_path / "float.npz", images.astype(np.float32))
    with pytest.raises(DataError, match="uint8"):
        build_dataset(str(tmp_path / "float.npz"), 8)
    with pytest.raises(DataError, match="does not exist"):
        build_dataset(str(tmp_path / "missing.npz"), 8)


def test_builtin_digits_are_sklearns_scans():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    target = sklearn_datasets.load_digits().target
    dataset = build_dataset("builtin:digits", 16, random_flip=False)
    assert len(dataset) == 1797 and dataset.num_classes == 10
    assert dataset.class_names == [str(k) for k in range(10)]
    assert np.array_equal(dataset.labels, target)
    x, y = dataset[0]
    assert x.shape == (3, 16, 16) and y == target[0]
    assert float(x.min()) >= -1 and float(x.max()) <= 1 and float(x.std()) > 0.3
    assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])  # grey replicated to RGB
    assert float(x.mean()) < 0  # a white digit on black
    big, _ = build_dataset("builtin:digits", 32)[5]
    assert big.shape == (3, 32, 32) and float(big.std()) > 0.3
    with pytest.raises(DataError, match="--image_size 8 or more"):
        build_dataset("builtin:digits", 4)


# ---- folder errors ------------------------------------------------------------------------------------


def test_missing_and_empty_directories(tmp_path):
    with pytest.raises(DataError, match="does not exist; pass --data_dir"):
        build_dataset(str(tmp_path / "nope"), 8)
    os.makedirs(tmp_path / "empty" / "sub")
    (tmp_path / "empty" / ".hidden.png").write_bytes(b"")
    with pytest.raises(DataError, match="no image files.*png"):
        build_dataset(str(tmp_path / "empty"), 8)


def test_non_image_files_are_listed(tmp_path):
    _save(tmp_path / "a_0.png")
    for i in range(7):
        (tmp_path / f"notes{i}.txt").write_text("not an image")
    with pytest.raises(DataError, match="move them out of the data directory") as caught:
        ImageFolderDataset(str(tmp_path), 8)
    message = str(caught.value)
    assert "notes0.txt" in message and "notes4.txt" in message and "notes5.txt" not in message
    assert "7 in all" in message


@pytest.mark.filterwarnings("ignore:data directory")  # the refusals below warn again before refusing
def test_logger_files_of_generate_dataset_are_skipped_with_one_warning(tmp_path):
    """PPAP's generate_dataset.py writes its logger's log.txt and progress.csv (log-rank001.txt on other ranks)
    beside the PNGs: skipped, said once; any other non-image is still refused."""
    for i in range(3):
        _save(tmp_path / f"{i:06d}.png")
    for name in ("log.txt", "progress.csv", "log-rank001.txt", "progress.json"):
        (tmp_path / name).write_text("logging")
    with pytest.warns(UserWarning, match="log files beside the images, skipped") as caught:
        dataset = ImageFolderDataset(str(tmp_path), 8)
    assert len(caught) == 1 and "(4 in all)" in str(caught[0].message)
    assert len(dataset) == 3 and [os.path.basename(p) for p in dataset.paths] == ["000000.png", "000001.png",
                                                                                  "000002.png"]
    assert sorted(os.path.basename(p) for p in dataset.skipped_files) == ["log-rank001.txt", "log.txt",
                                                                          "progress.csv", "progress.json"]
    for other in ("log.txt.bak", "mylog.txt", "progress.tsv"):
        (tmp_path / other).write_text("x")
        with pytest.raises(DataError, match=f"not images: .*{other}"):
            ImageFolderDataset(str(tmp_path), 8)
        (tmp_path / other).unlink()


def test_undecodable_image_is_named(tmp_path):
    _save(tmp_path / "a_0.png")
    (tmp_path / "b_1.png").write_bytes(b"this is not a png")
    dataset = ImageFolderDataset(str(tmp_path), 8)
    assert dataset.validate(max_files=1) == 1
    with pytest.raises(DataError, match="b_1.png.*re-save"):
        dataset.validate()
    with pytest.raises(DataError, match="b_1.png.*re-save"):
        dataset[1]


def test_small_images_need_allow_upscale(tmp_path):
    _save(tmp_path / "a_0.png", size=(12, 6))
    dataset = ImageFolderDataset(str(tmp_path), 8)
    with pytest.raises(DataError, match="12x6.*image_size=8.*allow_upscale=True"):
        dataset.validate()
    with pytest.raises(DataError, match="smaller --image_size"):
        dataset[0]
    upscaled = ImageFolderDataset(str(tmp_path), 8, allow_upscale=True)
    assert upscaled.validate() == 1 and upscaled[0][0].shape == (3, 8, 8)
    _save(tmp_path / "b_0.png", size=(9, 8))
    _save(tmp_path / "c_0.png", size=(7, 30))
    counted = ImageFolderDataset(str(tmp_path), 8, allow_upscale=True)
    assert counted.validate() == 3 and (counted.num_checked, counted.num_small) == (3, 2)
    assert counted.validate(max_files=1) == 1 and (counted.num_checked, counted.num_small) == (1, 1)


def test_bad_label_from_and_builtin_name(tmp_path):
    _save(tmp_path / "a_0.png")
    with pytest.raises(DataError, match="label_from='folder'"):
        ImageFolderDataset(str(tmp_path), 8, label_from="directory")
    with pytest.raises(DataError, match="label_from='prefix'"):
        build_dataset("builtin:digits", 8, label_from="name")
    with pytest.raises(DataError, match="pass one of: builtin:digits"):
        build_dataset("builtin:mnist", 8)
