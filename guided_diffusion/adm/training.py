"""What ADM's training scripts share (image_train, classifier_train): the data and run flags, the dataset
opened and checked before anything is written, and the resumable batch stream."""

from __future__ import annotations

import argparse
import os

from .. import dist_util
from ..data import DataError, ImageFolderDataset, build_dataset, load_data

# Flags that only choose how data is read.
# num_workers -1: decoding workers for image folders on GPU machines; none for in-memory data (npz,
# builtin) or on CPU, where workers would take the cores the model needs.
DATA_DEFAULTS = dict(data_dir="", label_from="prefix", random_flip=True, random_crop=False, allow_upscale=False,
                     num_workers=-1)
# Flags that describe the run rather than the model.
RUN_DEFAULTS = dict(seed=0, max_steps=0, use_bf16=False, progress=True)


def open_dataset(args: argparse.Namespace, class_cond: bool):
    """Build and check the dataset before anything is written (a bad folder fails fast, leaving nothing)."""
    if not args.data_dir:
        raise DataError("--data_dir is required: a folder of images, an .npz file, or builtin:digits")
    dataset = build_dataset(args.data_dir, args.image_size, label_from=args.label_from,
                            random_crop=args.random_crop, random_flip=args.random_flip,
                            allow_upscale=args.allow_upscale)
    if hasattr(dataset, "validate"):
        dataset.validate(max_files=10000)
    if class_cond and dataset.labels is None:
        raise DataError(f"{args.data_dir} has no class labels; train without class conditioning")
    return dataset


def data_stream(args: argparse.Namespace, dataset, class_cond: bool):
    """``start_step -> batches``, so a resumed run continues the stream where its checkpoint left it."""
    workers = args.num_workers
    if workers < 0:
        folder = isinstance(dataset, ImageFolderDataset) and dist_util.dev().type == "cuda"
        workers = min(4, os.cpu_count() or 1) if folder else 0
    return lambda start_step: load_data(
        data_dir=args.data_dir, batch_size=args.batch_size, image_size=args.image_size, class_cond=class_cond,
        random_crop=args.random_crop, random_flip=args.random_flip, label_from=args.label_from,
        allow_upscale=args.allow_upscale, seed=args.seed, start_step=start_step, num_workers=workers,
        dataset=dataset)


__all__ = ["DATA_DEFAULTS", "RUN_DEFAULTS", "open_dataset", "data_stream"]
