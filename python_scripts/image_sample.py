"""Sample an ADM diffusion model into ``samples_NxHxWx3.npz`` (ADM's layout) with a PNG grid beside it.

    python python_scripts/image_sample.py --model_path runs/digits/ema_0.9999_002000.pt \
        --num_samples 64 --batch_size 32 --timestep_respacing ddim25 --use_ddim True --log_path runs/samples

Model flags left off the command line are read from the ``flags.json`` beside ``--model_path``.
Sample i uses seed ``--seed + i`` for its noise (and label): the same seed gives the same image on any
number of ranks and at any batch size. An interrupted run, restarted with the same command, continues
from the batches it finished.
"""

from __future__ import annotations

import argparse
import os
import sys

from guided_diffusion import dist_util, logger
from guided_diffusion.adm_sampling import load_model_checked, make_batch_sampler
from guided_diffusion.cli import (add_run_flags, fill_flags_from_checkpoint, flags_of, resolve_log_path,
                                  run_cli)
from guided_diffusion.sample_writer import run_seeded_sampling
from guided_diffusion.script_util import (add_dict_to_argparser, args_to_dict, create_model_and_diffusion,
                                          model_and_diffusion_defaults)

# target_label -1: labels drawn from each sample's seed; K >= 0: every sample gets class K.
SAMPLE_DEFAULTS = dict(clip_denoised=True, num_samples=10000, batch_size=16, use_ddim=False, model_path="",
                       seed=0, ddim_eta=0.0, progress=True, target_label=-1)
# Flags that never change the pictures, so a resumed run may differ in them.
NOT_IN_IDENTITY = ("batch_size", "log_path", "gpus", "progress")
# Chosen at sampling time, never taken from the training flags.
SAMPLING_TIME_FLAGS = ("timestep_respacing", "use_fp16")


def create_argparser() -> argparse.ArgumentParser:
    defaults = dict(SAMPLE_DEFAULTS)
    defaults.update(model_and_diffusion_defaults())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, defaults)
    add_run_flags(parser, "image_sample")
    return parser


def load_diffusion_model(args, argv):
    """Model flags from flags.json beside the checkpoint (unless typed), then the model, checked."""
    if not args.model_path:
        raise FileNotFoundError("--model_path is required: a modelNNNNNN.pt or ema_RATE_NNNNNN.pt checkpoint")
    keys = [k for k in model_and_diffusion_defaults() if k not in SAMPLING_TIME_FLAGS]
    filled = fill_flags_from_checkpoint(args, args.model_path, keys, argv)
    if filled and dist_util.is_main():
        print(f"model flags from the checkpoint's flags.json: {', '.join(filled)}")
    flags = args_to_dict(args, model_and_diffusion_defaults().keys())
    model, diffusion = create_model_and_diffusion(**flags)
    load_model_checked(model, args.model_path, flags=flags, use_fp16=args.use_fp16)
    return model, diffusion


def sample_seeds(args, model, diffusion, log_path: str, *, num_classes, cond_fn=None) -> str:
    """Seeds ``--seed`` .. ``--seed + num_samples - 1`` into the npz, grid and flags in ``log_path``."""
    if num_classes and args.target_label >= num_classes:
        raise ValueError(f"--target_label {args.target_label} is not one of the {num_classes} classes")
    sample_batch = make_batch_sampler(
        model, diffusion, image_size=args.image_size, use_ddim=args.use_ddim, clip_denoised=args.clip_denoised,
        num_classes=num_classes, class_cond=args.class_cond, cond_fn=cond_fn, eta=args.ddim_eta,
        fixed_label=args.target_label if args.target_label >= 0 else None)
    seeds = range(args.seed, args.seed + args.num_samples)
    path = run_seeded_sampling(sample_batch, seeds=seeds, batch_size=args.batch_size, out_dir=log_path,
                               image_shape=(args.image_size, args.image_size),
                               identity=flags_of(args, drop=NOT_IN_IDENTITY),
                               flags=flags_of(args, drop=("gpus",)), progress=args.progress)
    logger.log(f"samples in {os.path.abspath(path)}")
    return path


def main(argv=None) -> None:
    args = create_argparser().parse_args(argv)
    dist_util.setup_dist(args.gpus)
    model, diffusion = load_diffusion_model(args, argv)
    log_path = resolve_log_path(args, "image_sample")
    logger.configure(log_path)
    sample_seeds(args, model, diffusion, log_path, num_classes=args.num_classes if args.class_cond else None)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
