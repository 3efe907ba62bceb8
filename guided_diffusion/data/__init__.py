"""Training data: image folders (ADM and PPAP label conventions), .npz arrays and bundled sets, read
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

__all__ = [
    "BUILTIN_NAMES",
    "IMAGE_EXTENSIONS",
    "LABEL_SOURCES",
    "ArrayDataset",
    "BaseImageDataset",
    "BatchStream",
    "DataError",
    "ImageFolderDataset",
    "build_dataset",
    "center_crop_arr",
    "list_image_files",
    "load_builtin",
    "load_data",
    "load_npz_dataset",
    "random_crop_arr",
]
