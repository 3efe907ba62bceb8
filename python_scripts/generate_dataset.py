"""Generate an unlabeled image dataset with an unconditional ADM model (the data PPAP experts distil on).

    python python_scripts/generate_dataset.py --model_path runs/dm/ema_0.995_002000.pt \
        --num_samples 5000 --batch_size 100 --timestep_respacing ddim25 --use_ddim True --log_path gen/

Writes exactly ``--num_samples`` files ``{idx:06d}.png`` (idx 0 .. N-1) into ``--log_path``, each written
to a temp file and renamed. Image idx uses seed ``--seed + idx`` alone, so the dataset does not depend on the
number of ranks or the batch size (ranks share the images still missing), and a restarted run only makes
the files still missing. Logs and flags go to the hidden ``.run/`` inside the folder, so the folder itself
reads as a dataset (``--data_dir gen/``).
"""

from __future__ import annotations

import os
import sys

from guided_diffusion import dist_util, logger
from guided_diffusion.adm.sampling import adm_batch_sampler, load_diffusion_model, sample_argparser
from guided_diffusion.cli import flags_of, resolve_log_path, run_cli
from guided_diffusion.files import write_json
from guided_diffusion.sample_writer import write_seed_pngs


def create_argparser():
    return sample_argparser(__doc__, "generated", defaults=dict(num_samples=500000))


def main(argv=None) -> None:
    parser = create_argparser()
    args = parser.parse_args(argv)
    if args.num_samples < 1:
        raise ValueError(f"--num_samples must be positive, got {args.num_samples}")
    dist_util.setup_dist(args.gpus)
    model, diffusion = load_diffusion_model(parser, args, argv)
    if args.class_cond:
        raise ValueError("generate_dataset.py makes unlabeled data with an unconditional model; "
                         "the checkpoint's flags say class_cond True")
    out = resolve_log_path(args, "generated")
    logger.configure(os.path.join(out, ".run"))
    if dist_util.is_main():
        write_json(flags_of(args, drop=("gpus",)), os.path.join(out, ".run", "flags.json"))
    sample_batch = adm_batch_sampler(model, diffusion, image_size=args.image_size, use_ddim=args.use_ddim,
                                     clip_denoised=args.clip_denoised, eta=args.ddim_eta)
    write_seed_pngs(sample_batch, seeds=range(args.seed, args.seed + args.num_samples), batch_size=args.batch_size,
                    out_dir=out, name=lambda seed: f"{seed - args.seed:06d}.png", progress=args.progress)
    logger.log(f"{args.num_samples} images in {out}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
