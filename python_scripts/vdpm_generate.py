"""Sample a VDPM checkpoint into ``samples_NxHxWx3.npz`` (ADM's layout, labels in ``arr_1``) with a PNG grid and
the flags beside it.

    python python_scripts/vdpm_generate.py --ckpt-path chkpts/vdpm_cifar10 --use-ema --use-ddim \
        --sample-timesteps 1024 --w-guide 0.1 --total-size 50000 --batch-size 128 --save-dir images/eval
    torchrun --nproc_per_node 2 python_scripts/vdpm_generate.py --ckpt-path ... --distributed

--ckpt-path is a modelNNNNNN.pt, an ema_<decay>_NNNNNN.pt, or a run folder (its latest checkpoint; the EMA
file with --use-ema). The model and process flags come from the run's flags.json; --sample-timesteps and
--w-guide default to the run's. Sample i uses seed --seed + i for its noise, its label and every step's noise,
so an image depends on its seed only (not on --batch-size or the number of ranks), and a restarted run continues
from the batches it finished. Labels: --labels random (default), cycle, or classes such as 3 or 0,1,2 (seed s
gets L[s % len(L)]); --uncond feeds the null label with w = 0. CelebA's tag vectors are drawn from the rows of
list_attr_celeba.txt under --root and stored in arr_1 as bit masks (bit j = tag j).
Guidance: --guidance posterior_mean is the seed's (1 + w) * cond - w * uncond on the clipped-x0 posterior mean;
--guidance eps applies uncond + (1 + w) * (cond - uncond) to the raw predictions.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

import torch

from guided_diffusion import dist_util, logger
from guided_diffusion.cli import load_model_checked
from guided_diffusion.cli import flags_of, run_cli
from guided_diffusion.data import VDPM_DATASET_INFO, load_vdpm_dataset
from guided_diffusion.logger import default_log_path
from guided_diffusion.sample_writer import run_seeded_sampling
from guided_diffusion.flags import read_flags_beside
from guided_diffusion.train import latest_checkpoint
from guided_diffusion.train.checkpointing import parse_resume_step_from_filename
from guided_diffusion.vdpm import (CHECKPOINT_FLAG_NAMES, DIFFUSION_FLAGS, NETWORK_FLAGS, dataset_image_size,
                                   diffusion_from_flags, model_from_flags, vdpm_batch_sampler)

NOT_IN_IDENTITY = ("batch_size", "save_dir", "progress", "device", "distributed")


def create_argparser() -> argparse.ArgumentParser:
    onoff = argparse.BooleanOptionalAction
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--ckpt-path", required=True, help="modelNNNNNN.pt, ema_<decay>_NNNNNN.pt or a run folder")
    p.add_argument("--use-ema", action=onoff, default=False, help="the EMA weights beside the checkpoint")
    p.add_argument("--use-ddim", action=onoff, default=False)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (the seed: 0)")
    p.add_argument("--sample-timesteps", type=int, default=0, help="0: the run's")
    p.add_argument("--w-guide", type=float, default=None, help="default: the run's")
    p.add_argument("--guidance", choices=("posterior_mean", "eps"), default="posterior_mean")
    p.add_argument("--labels", default="random", help="random, cycle, or classes such as 3 or 0,1,2")
    p.add_argument("--uncond", action=onoff, default=False, help="null labels, w = 0")
    p.add_argument("--root", default="~/datasets", help="celeba: where list_attr_celeba.txt is (tag rows)")
    p.add_argument("--total-size", "--num-samples", dest="total_size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-dir", default="", help="output folder (default logs/vdpm_generate-<date>-<time>)")
    p.add_argument("--device", default="", help="single process only (default: cuda if available)")
    p.add_argument("--distributed", action=onoff, default=False, help="run under torchrun (or mpiexec)")
    p.add_argument("--progress", action=onoff, default=True)
    return p


def resolve_checkpoint(path: str, use_ema: bool) -> str:
    """The weight file to load: a run folder's latest checkpoint, and its EMA file with --use-ema."""
    if os.path.isdir(path):
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"--ckpt-path {path!r} is a folder with no modelNNNNNN.pt")
        path = found
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--ckpt-path {path!r} does not exist")
    name = os.path.basename(path)
    if use_ema and not name.startswith("ema_"):
        step = parse_resume_step_from_filename(path)
        folder = os.path.dirname(path)
        emas = sorted(f for f in os.listdir(folder) if re.fullmatch(rf"ema_[0-9.]+_{step:06d}\.pt", f))
        if not emas:
            raise FileNotFoundError(f"--use-ema: no ema_<decay>_{step:06d}.pt beside {path} (was the run trained "
                                    "with --use-ema?)")
        path = os.path.join(folder, emas[0])
    return path


def parse_labels(text: str, num_classes: int):
    if text in ("random", "cycle"):
        return text
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise ValueError(f"--labels takes random, cycle or comma-separated classes; got {text!r}") from None
    bad = [v for v in values if not 0 <= v < num_classes]
    if not values or bad:
        raise ValueError(f"--labels {text}: classes must lie in 0..{num_classes - 1}")
    return values


def main(argv=None) -> None:
    args = create_argparser().parse_args(argv)
    kind = dist_util.launcher()
    if args.distributed == (kind == "single"):
        raise ValueError("--distributed needs torchrun (or mpiexec)" if args.distributed
                         else f"this process was started by {kind}; add --distributed")
    if args.total_size < 1 or args.batch_size < 1:
        raise ValueError("--total-size and --batch-size must be >= 1")
    dist_util.setup_dist()
    if args.device and not args.distributed:
        dist_util.set_device(args.device)
    ckpt = resolve_checkpoint(args.ckpt_path, args.use_ema)
    flags = read_flags_beside(ckpt)
    if not flags or any(k not in flags for k in NETWORK_FLAGS + DIFFUSION_FLAGS):
        raise FileNotFoundError(f"no complete vdpm_train.py flags.json beside {ckpt}; the model cannot be rebuilt")
    info = VDPM_DATASET_INFO[flags["dataset"]]
    conditional = bool(flags["use_cfg"])
    w_guide = flags.get("w_guide", 0.0) if args.w_guide is None else args.w_guide
    if args.uncond or not conditional:
        w_guide = 0.0
    if w_guide < 0:
        raise ValueError(f"--w-guide must be >= 0, got {w_guide}")
    steps = args.sample_timesteps or int(flags["sample_timesteps"])
    diffusion = diffusion_from_flags(flags, sample_timesteps=steps)
    model = load_model_checked(model_from_flags(flags), ckpt, flags=flags, flag="--ckpt-path",
                               flag_names=CHECKPOINT_FLAG_NAMES)
    num_classes, labels, tag_rows = (info.num_classes if conditional else 0), "random", None
    if conditional and args.uncond:
        labels = "null"
    elif conditional and info.multilabel:
        tag_rows = torch.from_numpy(load_vdpm_dataset(flags["dataset"], args.root, split="all").labels)
    elif conditional:
        labels = parse_labels(args.labels, num_classes)
    size = dataset_image_size(flags)
    sample_batch = vdpm_batch_sampler(
        model, diffusion, shape=(info.in_channels, size, size), num_classes=num_classes, multitags=info.multilabel,
        labels=labels, tag_rows=tag_rows, w_guide=w_guide, guidance=args.guidance, use_ddim=args.use_ddim,
        eta=args.eta, device=dist_util.dev())
    save_dir = args.save_dir or dist_util.broadcast_object(default_log_path("vdpm_generate"))
    logger.configure(save_dir)
    logger.log(f"sampling {args.total_size} images from {ckpt} ({steps} {'DDIM' if args.use_ddim else 'ancestral'} "
               f"steps, w = {w_guide}) into {os.path.abspath(save_dir)}")
    record = {**flags_of(args), "checkpoint": os.path.abspath(ckpt), "train_flags": flags, "w_guide": w_guide,
              "sample_timesteps": steps}
    identity = {k: v for k, v in record.items() if k not in NOT_IN_IDENTITY}
    path = run_seeded_sampling(sample_batch, seeds=range(args.seed, args.seed + args.total_size),
                               batch_size=args.batch_size, out_dir=save_dir, image_shape=(size, size),
                               identity=identity, flags=record, progress=args.progress)
    logger.log(f"samples in {os.path.abspath(path)}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
