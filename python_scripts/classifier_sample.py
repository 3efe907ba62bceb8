"""Sample with ADM classifier guidance: a diffusion model steered by a noisy classifier's gradient.

    python python_scripts/classifier_sample.py --model_path runs/digits/ema_0.9999_002000.pt \
        --classifier_path runs/digits_classifier/model001000.pt --classifier_scale 4.0 \
        --num_samples 64 --timestep_respacing ddim25 --use_ddim True --log_path runs/guided

Writes ``samples_NxHxWx3.npz`` with ``arr_1`` = the target labels, a PNG grid and the flags. Model and
classifier flags left off the command line are read from the ``flags.json`` beside each checkpoint.
Sample i uses seed ``--seed + i`` for its noise and its target label; resumable like image_sample.py.
"""

from __future__ import annotations

import argparse
import sys

from guided_diffusion import dist_util, logger
from guided_diffusion.adm_sampling import load_model_checked
from guided_diffusion.cli import fill_flags_from_checkpoint, resolve_log_path, run_cli
from guided_diffusion.guidance import classifier_cond_fn
from guided_diffusion.script_util import add_dict_to_argparser, args_to_dict, classifier_defaults, create_classifier

from image_sample import SAMPLE_DEFAULTS, load_diffusion_model, sample_seeds
from image_sample import create_argparser as image_sample_argparser


def create_argparser() -> argparse.ArgumentParser:
    parser = image_sample_argparser()
    parser.description = __doc__
    defaults = dict(classifier_path="", classifier_scale=1.0)
    defaults.update({k: v for k, v in classifier_defaults().items() if k not in SAMPLE_DEFAULTS
                     and k != "image_size"})
    add_dict_to_argparser(parser, defaults)
    return parser


def load_classifier(args, argv):
    if not args.classifier_path:
        raise FileNotFoundError("--classifier_path is required: the noisy classifier's modelNNNNNN.pt")
    keys = [k for k in classifier_defaults() if k.startswith("classifier_") and k != "classifier_use_fp16"]
    fill_flags_from_checkpoint(args, args.classifier_path, keys, argv)
    flags = args_to_dict(args, classifier_defaults().keys())
    classifier = create_classifier(**flags)
    return load_model_checked(classifier, args.classifier_path, flags=flags, flag="--classifier_path",
                              use_fp16=args.classifier_use_fp16)


def main(argv=None) -> None:
    args = create_argparser().parse_args(argv)
    dist_util.setup_dist(args.gpus)
    model, diffusion = load_diffusion_model(args, argv)
    classifier = load_classifier(args, argv)
    num_classes = args.classifier_num_classes
    if args.class_cond and args.num_classes != num_classes:
        raise ValueError(f"the model has {args.num_classes} classes and the classifier {num_classes}; "
                         "they must agree")
    log_path = resolve_log_path(args, "classifier_sample")
    logger.configure(log_path)
    # Scale 0 samples unguided with the same seeds and target labels: a paired baseline.
    cond_fn = classifier_cond_fn(classifier, args.classifier_scale) if args.classifier_scale else None
    sample_seeds(args, model, diffusion, log_path, num_classes=num_classes, cond_fn=cond_fn)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
