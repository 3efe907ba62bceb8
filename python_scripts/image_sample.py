"""Sample an ADM diffusion model into ``samples_NxHxWx3.npz`` (ADM's layout) with a PNG grid beside it.

    python python_scripts/image_sample.py --model_path runs/digits/ema_0.9999_002000.pt \
        --num_samples 64 --batch_size 32 --timestep_respacing ddim25 --use_ddim True --log_path runs/samples

Model flags left off the command line are read from the ``flags.json`` beside ``--model_path``.
Sample i uses seed ``--seed + i`` for its noise (and label): the same seed gives the same image on any
number of ranks and at any batch size. An interrupted run, restarted with the same command, continues
from the batches it finished.
"""

from __future__ import annotations

import sys

from guided_diffusion import dist_util, logger
from guided_diffusion.adm.sampling import load_diffusion_model, sample_argparser, sample_seeds
from guided_diffusion.cli import resolve_log_path, run_cli


def create_argparser():
    return sample_argparser(__doc__, "image_sample")


def main(argv=None) -> None:
    parser = create_argparser()
    args = parser.parse_args(argv)
    dist_util.setup_dist(args.gpus)
    model, diffusion = load_diffusion_model(parser, args, argv)
    log_path = resolve_log_path(args, "image_sample")
    logger.configure(log_path)
    sample_seeds(args, model, diffusion, log_path, num_classes=args.num_classes if args.class_cond else None)


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
