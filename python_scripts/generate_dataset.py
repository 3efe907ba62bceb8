"""Generate an unlabeled image dataset with an unconditional ADM model (the data PPAP experts distil on).

    python python_scripts/generate_dataset.py --model_path runs/dm/ema_0.995_002000.pt \
        --num_samples 5000 --batch_size 100 --timestep_respacing ddim25 --use_ddim True --log_path gen/

Writes exactly ``--num_samples`` files ``{idx:06d}.png`` (idx 0 .. N-1) into ``--log_path``, each written
to a temp file and renamed. On K ranks, rank r writes idx = r, r + K, r + 2K, ... (PPAP's
``n_saved * world_size + rank``). Image idx uses seed ``--seed + idx`` alone, so the dataset does not
depend on the number of ranks or the batch size, and a restarted run only makes the files still missing.
Logs and flags go to the hidden ``.run/`` inside the folder, so the folder itself reads as a dataset
(``--data_dir gen/``).
"""

from __future__ import annotations

import argparse
import io
import os
import sys

from PIL import Image
from tqdm.auto import tqdm

from guided_diffusion import dist_util, logger
from guided_diffusion.adm_sampling import make_batch_sampler
from guided_diffusion.cli import add_run_flags, flags_of, resolve_log_path, run_cli
from guided_diffusion.script_util import add_dict_to_argparser, model_and_diffusion_defaults
from guided_diffusion.train.checkpointing import atomic_write_bytes, write_json

from image_sample import load_diffusion_model


def create_argparser() -> argparse.ArgumentParser:
    defaults = dict(clip_denoised=True, num_samples=500000, batch_size=16, use_ddim=False, model_path="",
                    seed=0, ddim_eta=0.0, progress=True)
    defaults.update(model_and_diffusion_defaults())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, defaults)
    add_run_flags(parser, "generated")
    return parser


def png_bytes(image) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def main(argv=None) -> None:
    args = create_argparser().parse_args(argv)
    if args.num_samples < 1:
        raise ValueError(f"--num_samples must be positive, got {args.num_samples}")
    dist_util.setup_dist(args.gpus)
    model, diffusion = load_diffusion_model(args, argv)
    if args.class_cond:
        raise ValueError("generate_dataset.py makes unlabeled data with an unconditional model; "
                         "the checkpoint's flags say class_cond True")
    out = resolve_log_path(args, "generated")
    rank, world = dist_util.get_rank(), dist_util.get_world_size()
    logger.configure(os.path.join(out, ".run"))
    if rank == 0:
        write_json(flags_of(args, drop=("gpus",)), os.path.join(out, ".run", "flags.json"))
    name = lambda idx: os.path.join(out, f"{idx:06d}.png")  # noqa: E731
    todo = [i for i in range(args.num_samples) if not os.path.exists(name(i))]
    dist_util.barrier()  # every rank has listed the folder before anyone writes to it
    if rank == 0 and len(todo) < args.num_samples:
        logger.log(f"resuming: {args.num_samples - len(todo)} of {args.num_samples} images already in {out}")
    mine = todo[rank::world]
    sample_batch = make_batch_sampler(model, diffusion, image_size=args.image_size, use_ddim=args.use_ddim,
                                      clip_denoised=args.clip_denoised, eta=args.ddim_eta)
    bar = tqdm(total=len(todo), unit="img", disable=not (args.progress and rank == 0), dynamic_ncols=True)
    for start in range(0, len(mine), args.batch_size):
        chunk = mine[start:start + args.batch_size]
        images, _ = sample_batch([args.seed + i for i in chunk])
        for idx, img in zip(chunk, images):
            atomic_write_bytes(png_bytes(img), name(idx))
        bar.update(len(chunk) * world)
    bar.close()
    dist_util.barrier()
    logger.log(f"{args.num_samples} images in {out}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
