"""Class accuracy of a sample batch: the share of samples a classifier assigns to their requested label.

    python evaluations/class_accuracy.py runs/guided/samples_100x16x16x3.npz \
        --classifier_path runs/judge/model000300.pt [--out acc.json]

The npz needs ``arr_1`` (the requested labels; classifier_sample.py writes them). The classifier is
ADM's ``EncoderUNetModel`` queried at ``--timestep`` (0 = clean images); its flags are read from the
``flags.json`` beside the checkpoint unless given here. Prints top-1 and top-5 accuracy.
"""

from __future__ import annotations

import argparse
import sys

from guided_diffusion import dist_util
from guided_diffusion.cli import load_model_checked, run_cli
from guided_diffusion.flags import merge_flags
from guided_diffusion.metrics.classifier_accuracy import sample_class_accuracy
from guided_diffusion.metrics.image_batches import NpzBatch
from guided_diffusion.script_util import (add_dict_to_argparser, args_to_dict, classifier_defaults,
                                          create_classifier)
from guided_diffusion.train.checkpointing import write_json


def load_classifier(path: str, parser, args, argv):
    """ADM's classifier from a checkpoint, flags from the command line or the flags.json beside it."""
    merge_flags(parser, args, argv, beside=path, keys=list(classifier_defaults()))
    flags = args_to_dict(args, classifier_defaults().keys())
    return load_model_checked(create_classifier(**flags), path, flags=flags, flag="--classifier_path")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sample_batch")
    p.add_argument("--classifier_path", required=True)
    p.add_argument("--timestep", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--out", default="")
    add_dict_to_argparser(p, classifier_defaults())
    args = p.parse_args(argv)
    classifier = load_classifier(args.classifier_path, p, args, argv)
    classifier.to(dist_util.dev())
    res = sample_class_accuracy(classifier, NpzBatch(args.sample_batch), batch_size=args.batch_size,
                                timestep=args.timestep)
    print(f"Top-1 accuracy: {res['top1']}")
    print(f"Top-5 accuracy: {res['top5']}")
    if args.out:
        write_json({**res, "sample_batch": args.sample_batch, "classifier_path": args.classifier_path}, args.out)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
