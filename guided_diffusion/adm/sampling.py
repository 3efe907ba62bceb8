"""What ADM's sampling scripts share (image_sample, classifier_sample, generate_dataset): their flags, the model
loaded with the flags saved beside its checkpoint, and the ADM recipe for the one seeded batch sampler.

Sample i draws its start noise, then its class label (when one is needed), then every step's noise from the
generator seeded with its own seed (EDM's order), so its image depends on the seed alone.
"""

from __future__ import annotations

import argparse
import functools
import os
from typing import Optional, Sequence

from .. import dist_util, logger
from ..cli import add_run_flags, flags_of, load_model_checked
from ..flags import merge_flags
from ..guidance.guides import Guide
from ..sample_writer import run_seeded_sampling
from ..sampling import BatchFn, ClassLabels, make_batch_sampler
from ..samplers import sample_ancestral, sample_ddim
from ..script_util import add_dict_to_argparser, args_to_dict, create_model_and_diffusion, model_and_diffusion_defaults
from ..timesteps import DiscreteSchedule

# target_label -1: labels drawn from each sample's seed; K >= 0: every sample gets class K.
SAMPLE_DEFAULTS = dict(clip_denoised=True, num_samples=10000, batch_size=16, use_ddim=False, model_path="",
                       seed=0, ddim_eta=0.0, progress=True, target_label=-1)
# Flags that never change the pictures, so a resumed run may differ in them.
NOT_IN_IDENTITY = ("batch_size", "log_path", "gpus", "progress")
# Chosen at sampling time, never taken from the training flags.
SAMPLING_TIME_FLAGS = ("timestep_respacing", "use_fp16")


def sample_argparser(description: str, name: str, defaults: Optional[dict] = None) -> argparse.ArgumentParser:
    """ADM's sampling flags (SAMPLE_DEFAULTS and the model flags, ``defaults`` overriding) plus --log_path and
    --gpus."""
    values = dict(SAMPLE_DEFAULTS)
    values.update(model_and_diffusion_defaults())
    values.update(defaults or {})
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, values)
    add_run_flags(parser, name)
    return parser


def load_diffusion_model(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Optional[Sequence[str]]):
    """Model flags from flags.json beside ``--model_path`` (unless typed), then the model, checked and on this
    rank's device, and its diffusion."""
    if not args.model_path:
        raise FileNotFoundError("--model_path is required: a modelNNNNNN.pt or ema_RATE_NNNNNN.pt checkpoint")
    keys = [k for k in model_and_diffusion_defaults() if k not in SAMPLING_TIME_FLAGS]
    filled = merge_flags(parser, args, argv, beside=args.model_path, keys=keys)["beside"]
    if filled and dist_util.is_main():
        print(f"model flags from the checkpoint's flags.json: {', '.join(filled)}")
    flags = args_to_dict(args, model_and_diffusion_defaults().keys())
    model, diffusion = create_model_and_diffusion(**flags)
    load_model_checked(model, args.model_path, flags=flags, use_fp16=args.use_fp16)
    return model, diffusion


def guide_schedule(diffusion) -> DiscreteSchedule:
    """The training schedule of ``diffusion``: the train indices a classifier trained on its noise reads."""
    return diffusion.train_trajectory.schedule


def adm_batch_sampler(model, diffusion, *, image_size: int, use_ddim: bool = False, clip_denoised: bool = True,
                      num_classes: Optional[int] = None, class_cond: bool = False, guide: Optional[Guide] = None,
                      eta: float = 0.0, progress: bool = False, target_label: Optional[int] = None) -> BatchFn:
    """ADM's sampling (``p_sample_loop`` or ``ddim_sample_loop`` with an optional classifier guide) as the one
    seeded batch sampler: ``seeds -> (uint8 NHWC images, labels or None)``.

    Labels are drawn when ``num_classes`` is given (for a class-conditional model, for classifier guidance,
    or both); a class-conditional model receives them as ``y``, the guide always does. ``target_label``
    replaces every drawn label after the draw, so each seed's noise stream, and hence the image pairing with
    a random-label run, is unchanged.
    """
    def model_fn(x, t, y=None):
        return model(x, t, y if class_cond else None)

    if use_ddim:
        sampler = functools.partial(sample_ddim, eta=eta, clip_denoised=clip_denoised, guide=guide)
    else:
        sampler = functools.partial(sample_ancestral, variance=diffusion.model_var_type.value,
                                    clip_denoised=clip_denoised, guide=guide)
    labels = None
    if num_classes:
        labels = ClassLabels(num_classes, "random" if target_label is None else int(target_label))
    return make_batch_sampler(diffusion.denoiser(model_fn), diffusion.trajectory, sampler,
                              shape=(3, image_size, image_size), device=dist_util.dev(), conditions=labels,
                              progress=progress)


def sample_seeds(args: argparse.Namespace, model, diffusion, log_path: str, *, num_classes: Optional[int],
                 guide: Optional[Guide] = None) -> str:
    """Seeds ``--seed`` .. ``--seed + num_samples - 1`` into the npz, grid and flags in ``log_path``."""
    if num_classes and args.target_label >= num_classes:
        raise ValueError(f"--target_label {args.target_label} is not one of the {num_classes} classes")
    sample_batch = adm_batch_sampler(
        model, diffusion, image_size=args.image_size, use_ddim=args.use_ddim, clip_denoised=args.clip_denoised,
        num_classes=num_classes, class_cond=args.class_cond, guide=guide, eta=args.ddim_eta,
        target_label=args.target_label if args.target_label >= 0 else None)
    seeds = range(args.seed, args.seed + args.num_samples)
    path = run_seeded_sampling(sample_batch, seeds=seeds, batch_size=args.batch_size, out_dir=log_path,
                               image_shape=(args.image_size, args.image_size),
                               identity=flags_of(args, drop=NOT_IN_IDENTITY),
                               flags=flags_of(args, drop=("gpus",)), progress=args.progress)
    logger.log(f"samples in {os.path.abspath(path)}")
    return path


__all__ = ["SAMPLE_DEFAULTS", "NOT_IN_IDENTITY", "SAMPLING_TIME_FLAGS", "sample_argparser", "load_diffusion_model",
           "guide_schedule", "adm_batch_sampler", "sample_seeds"]
