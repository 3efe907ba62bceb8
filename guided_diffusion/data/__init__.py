"""Training data: image folders (ADM and PPAP label conventions), .npz arrays, bundled sets and the VDPM sets
(MNIST, CIFAR-10, CelebA from local files in torchvision's layouts), read
through one deterministic, resumable, sharded batch stream.

``load_data`` keeps ADM's call; ``build_dataset`` lets a script read ``num_classes`` and ``class_names``
before training. Every bad input raises ``DataError``, whose message names the problem and its fix.
"""

from .builtin import (
    BUILTIN_NAMES,
    ArrayDataset,
    build_dataset,
    load_builtin,
    load_npz_dataset,
)
from .image_folder import (
    IMAGE_EXTENSIONS,
    LABEL_SOURCES,
    BaseImageDataset,
    DataError,
    ImageFolderDataset,
    center_crop_arr,
    list_image_files,
    random_crop_arr,
)
from .stream import BatchStream, load_data
from .vdpm_datasets import (
    VDPM_DATASET_INFO,
    VDPM_DATASETS,
    CelebADataset,
    VDPMArrayDataset,
    VDPMDatasetInfo,
    load_vdpm_dataset,
)

__all__ = [
    "BUILTIN_NAMES",
    "IMAGE_EXTENSIONS",
    "LABEL_SOURCES",
    "VDPM_DATASETS",
    "VDPM_DATASET_INFO",
    "ArrayDataset",
    "BaseImageDataset",
    "BatchStream",
    "CelebADataset",
    "DataError",
    "ImageFolderDataset",
    "VDPMArrayDataset",
    "VDPMDatasetInfo",
    "build_dataset",
    "center_crop_arr",
    "list_image_files",
    "load_builtin",
    "load_data",
    "load_npz_dataset",
    "load_vdpm_dataset",
    "random_crop_arr",
]
