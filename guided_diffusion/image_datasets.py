"""ADM import shim: ``from guided_diffusion.image_datasets import load_data`` keeps working."""

from .data import center_crop_arr, list_image_files, load_data, random_crop_arr  # noqa: F401
