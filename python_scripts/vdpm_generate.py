"""Sample a VDPM checkpoint into ``samples_NxHxWx3.npz`` (ADM's layout, labels in ``arr_1``) with a PNG grid and
the flags beside it, and/or into a folder of PNGs (the original's output, what its eval.py reads).

    python python_scripts/vdpm_generate.py --ckpt-path chkpts/vdpm_cifar10 --use-ema --use-ddim --save-dir out
    python python_scripts/vdpm_generate.py --config-path configs/cifar10_cond.json --ckpt-path ckpt_5120.pt \
        --use-ema --use-ddim --format png --save-dir images/eval
    torchrun --nproc_per_node 2 python_scripts/vdpm_generate.py --ckpt-path ... --distributed

The flags are the original's generate.py (tqch/v-diffusion-torch, 2024 and 2023 versions) with its defaults:
50,000 samples (--total-size) in batches of 128, 1,024 sampling steps (--sample-timesteps), --uncond for the null
label; --w-guide defaults to the run's (or the config's) value, 0.1 in the original's conditional configs.

Checkpoint: --ckpt-path (alias --chkpt-path) is a modelNNNNNN.pt, an ema_<decay>_NNNNNN.pt, a run folder (its latest
checkpoint; with --use-ema its EMA file), or a checkpoint of the original ({"model", "ema": {"shadow"}, ...}; with
--use-ema its EMA weights). Without it: the run folder <--ckpt-dir>/vdpm_<--dataset>.
Model and process: from --config-path (a config of the original's format, 2023 or 2024, completed from
--default-config-path as its generate.py did; or one of configs/vdpm) when given; else from the run's flags.json
beside the checkpoint; else from the data set's config (--dataset, default cifar10: cifar10_cond for
class-conditional weights, cifar10_uncond otherwise; celeba). With a config, the weights decide whether the model
is class-conditional, as in the original. The weights load strictly into the architecture the flags name.

Sample i uses seed --seed + i for its noise, its label and every step's noise, so an image depends on its seed only
(not on --batch-size or the number of ranks), and a restarted run continues from the batches it finished. Labels:
--labels random (default), cycle, or classes such as 3 or 0,1,2 (seed s gets L[s % len(L)]); --uncond feeds the
null label with w = 0. CelebA's tag vectors are drawn from the rows of list_attr_celeba.txt under --root (alias
--data-root) and stored in arr_1 as bit masks (bit j = tag j).
Guidance: --guidance posterior_mean is the original's (1 + w) * cond - w * uncond on the clipped-x0 posterior mean;
--guidance eps applies uncond + (1 + w) * (cond - uncond) to the raw predictions.
Output: --format npz (default), png (one {seed:06d}.png per sample in <save dir>/images: point the original's
eval.py there with --eval-dir <save dir> --folder-name images) or both. Pixels are truncated, (x + 1) * 127.5, as
the original's generate.py does. The save dir is --save-dir (default logs/vdpm_generate-<date>-<time>) followed
by --suffix.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from guided_diffusion import dist_util, logger
from guided_diffusion.cli import flags_of, run_cli
from guided_diffusion.data import VDPM_DATASET_INFO, load_vdpm_dataset
from guided_diffusion.files import atomic_write_bytes, write_json
from guided_diffusion.flags import read_flags_beside, resolve_config_path
from guided_diffusion.logger import default_log_path
from guided_diffusion.sample_writer import png_bytes, run_seeded_sampling, seed_png_name, write_seed_pngs
from guided_diffusion.train import latest_checkpoint
from guided_diffusion.train.checkpointing import parse_resume_step_from_filename
from guided_diffusion.vdpm import (CHECKPOINT_FLAG_NAMES, DEFAULT_CONFIG_DIR, DEFAULTS_CONFIG, REQUIRED_FLAGS,
                                   dataset_image_size, diffusion_from_flags, model_from_flags, vdpm_batch_sampler)
from guided_diffusion.vdpm.original import (dataset_config_name, has_label_embedding, load_network, read_config,
                                            read_weights)

NOT_IN_IDENTITY = ("batch_size", "save_dir", "progress", "device", "distributed", "format", "suffix")
# What a config may leave out: the 2023 generate.py's command-line defaults and the original UNet's own.
CONFIG_FALLBACKS = {"image_size": 0, "arch": "original", "head_dim": -1, "num_heads": 0, "embedding_dim": 0,
                    "use_xformers": False, "drop_rate": 0.0, "logsnr_schedule": "cosine", "logsnr_min": -20.0,
                    "logsnr_max": 20.0, "train_timesteps": 0, "sample_timesteps": 256, "model_out_type": "both",
                    "model_var_type": "fixed_large", "intp_frac": 0.0, "reweight_type": "truncated_snr",
                    "loss_type": "mse", "w_guide": 0.1}


def create_argparser() -> argparse.ArgumentParser:
    onoff = argparse.BooleanOptionalAction
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=False)
    p.add_argument("--ckpt-path", "--chkpt-path", dest="ckpt_path", default="",
                   help="modelNNNNNN.pt, ema_<decay>_NNNNNN.pt, a run folder, or the original's .pt")
    p.add_argument("--ckpt-dir", "--chkpt-dir", dest="ckpt_dir", default="./chkpts",
                   help="without --ckpt-path: the run folder <ckpt-dir>/vdpm_<dataset>")
    p.add_argument("--dataset", choices=("",) + tuple(VDPM_DATASET_INFO), default="",
                   help="the data set (default: the run's or the config's, else cifar10)")
    p.add_argument("--config-path", default="", help="a config (path or name in --config-dir) for model and process")
    p.add_argument("--config-dir", default=DEFAULT_CONFIG_DIR)
    p.add_argument("--default-config-path", default=DEFAULTS_CONFIG,
                   help="fills what a config of the original's format leaves out ('' for none)")
    p.add_argument("--use-ema", action=onoff, default=False, help="the EMA weights")
    p.add_argument("--use-ddim", action=onoff, default=False)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (the original: 0)")
    p.add_argument("--sample-timesteps", type=int, default=1024)
    p.add_argument("--w-guide", type=float, default=None, help="default: the run's or the config's")
    p.add_argument("--guidance", choices=("posterior_mean", "eps"), default="posterior_mean")
    p.add_argument("--labels", default="random", help="random, cycle, or classes such as 3 or 0,1,2")
    p.add_argument("--uncond", action=onoff, default=False, help="null labels, w = 0")
    p.add_argument("--root", "--data-root", "--data_root", dest="root", default="~/datasets",
                   help="celeba: where list_attr_celeba.txt is (tag rows)")
    p.add_argument("--total-size", "--num-samples", dest="total_size", type=int, default=50000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-dir", default="", help="output folder (default logs/vdpm_generate-<date>-<time>)")
    p.add_argument("--suffix", default="", help="appended to the output folder's name")
    p.add_argument("--format", choices=("npz", "png", "both"), default="npz",
                   help="npz (ADM's evaluator), png (a folder of PNGs, the original's eval.py) or both")
    p.add_argument("--device", default="", help="single process only (default: cuda if available)")
    p.add_argument("--distributed", action=onoff, default=False, help="run under torchrun (or mpiexec)")
    p.add_argument("--progress", action=onoff, default=True)
    return p


def resolve_checkpoint(path: str) -> str:
    """The file to read: a run folder's latest modelNNNNNN.pt, or ``path`` itself."""
    if os.path.isdir(path):
        found = latest_checkpoint(path)
        if found is None:
            raise FileNotFoundError(f"--ckpt-path {path!r} is a folder with no modelNNNNNN.pt")
        path = found
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--ckpt-path {path!r} does not exist")
    return path


def ema_file_beside(path: str) -> str:
    """This package's EMA file for the step of ``path`` (modelNNNNNN.pt)."""
    step = parse_resume_step_from_filename(path)
    folder = os.path.dirname(path) or "."
    emas = sorted(f for f in os.listdir(folder) if re.fullmatch(rf"ema_[0-9.]+_{step:06d}\.pt", f))
    if not emas:
        raise FileNotFoundError(f"--use-ema: no ema_<decay>_{step:06d}.pt beside {path} (was the run trained "
                                "with --use-ema?)")
    return os.path.join(folder, emas[0])


def load_weights(args) -> Tuple[Dict[str, torch.Tensor], str, str]:
    """(state dict, the file it came from, "original" or "plain")."""
    path = resolve_checkpoint(args.ckpt_path or os.path.join(args.ckpt_dir, f"vdpm_{args.dataset or 'cifar10'}"))
    state, kind = read_weights(path, args.use_ema)
    if kind == "plain" and args.use_ema and not os.path.basename(path).startswith("ema_"):
        path = ema_file_beside(path)
        state, kind = read_weights(path, True)
    return state, path, kind


def model_flags(args, state: Dict[str, torch.Tensor], ckpt: str) -> Tuple[Dict, str]:
    """The flags that build the model and the process, and where they came from."""
    config = args.config_path
    if not config:
        saved = read_flags_beside(ckpt)
        if saved:
            missing = [k for k in REQUIRED_FLAGS if k not in saved]
            if missing:
                raise ValueError(f"the flags.json beside {ckpt} lacks {', '.join(missing)}; pass --config-path")
            return saved, os.path.join(os.path.dirname(os.path.abspath(ckpt)), "flags.json")
        dataset = args.dataset or "cifar10"
        config = dataset_config_name(dataset, has_label_embedding(state))
        if config is None:
            raise ValueError(f"no flags.json beside {ckpt} and the original ships no config for {dataset}; "
                             "pass --config-path")
    path = resolve_config_path(config, args.config_dir, "--config-path")
    values, notes = read_config(path, defaults=args.default_config_path or None, flag="--config-path")
    for note in notes:
        print(f"note: {note}", flush=True)
    flags = {**CONFIG_FALLBACKS, **values}
    flags["use_cfg"] = has_label_embedding(state)  # the original decides this from the weights
    if args.dataset:
        flags["dataset"] = args.dataset
    if "dataset" not in flags:
        raise ValueError(f"{path} names no data set; pass --dataset")
    missing = [k for k in REQUIRED_FLAGS if k not in flags]
    if missing:
        raise ValueError(f"{path} leaves out {', '.join(missing)} and nothing fills them; pass "
                         "--default-config-path or complete the config")
    return flags, str(path)


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


def write_pngs_from_npz(npz: str, seeds, folder: str) -> None:
    """One {seed:06d}.png per sample of a finished npz (rank 0; files already there are kept)."""
    if not dist_util.is_main():
        return
    with np.load(npz) as f:
        images = f["arr_0"]
    for seed, image in zip(seeds, images):
        path = os.path.join(folder, seed_png_name(seed))
        if not os.path.exists(path):
            atomic_write_bytes(png_bytes(image), path)


def check_png_folder(save_dir: str, identity: Dict) -> None:
    """A PNG folder is resumed only by the same flags: its flags.json (written when it completes, and here at the
    start) must name the same identity."""
    path = os.path.join(save_dir, "flags.json")
    if os.path.isfile(path):
        with open(path) as f:
            earlier = json.load(f).get("identity")
        if earlier != json.loads(json.dumps(identity, default=str)):
            raise ValueError(f"{save_dir} holds samples made with other flags; use another --save-dir")
    elif dist_util.is_main():
        write_json({"identity": identity}, path)
    dist_util.barrier()


def main(argv: Optional[list] = None) -> None:
    args = create_argparser().parse_args(argv)
    kind = dist_util.launcher()
    if args.distributed == (kind == "single"):
        raise ValueError("--distributed needs torchrun (or mpiexec)" if args.distributed
                         else f"this process was started by {kind}; add --distributed")
    if args.total_size < 1 or args.batch_size < 1 or args.sample_timesteps < 1:
        raise ValueError("--total-size, --batch-size and --sample-timesteps must be >= 1")
    dist_util.setup_dist()
    if args.device and not args.distributed:
        dist_util.set_device(args.device)
    state, ckpt, ckpt_kind = load_weights(args)
    flags, flags_from = model_flags(args, state, ckpt)
    info = VDPM_DATASET_INFO[flags["dataset"]]
    conditional = bool(flags["use_cfg"])
    w_guide = flags.get("w_guide", 0.0) if args.w_guide is None else args.w_guide
    if args.uncond or not conditional:
        w_guide = 0.0
    if w_guide < 0:
        raise ValueError(f"--w-guide must be >= 0, got {w_guide}")
    steps = args.sample_timesteps
    diffusion = diffusion_from_flags(flags, sample_timesteps=steps)
    model = load_network(model_from_flags(flags), state, flags, CHECKPOINT_FLAG_NAMES, where=ckpt)
    model = model.to(dist_util.dev()).eval()
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
    save_dir = (args.save_dir or dist_util.broadcast_object(default_log_path("vdpm_generate"))) + args.suffix
    logger.configure(save_dir)
    logger.log(f"sampling {args.total_size} images from {ckpt} ({ckpt_kind} weights; model and process from "
               f"{flags_from}; {steps} {'DDIM' if args.use_ddim else 'ancestral'} steps, w = {w_guide}) into "
               f"{os.path.abspath(save_dir)}")
    record = {**flags_of(args), "checkpoint": os.path.abspath(ckpt), "train_flags": flags, "flags_from": flags_from,
              "w_guide": w_guide, "sample_timesteps": steps}
    identity = {k: v for k, v in record.items() if k not in NOT_IN_IDENTITY}
    seeds = range(args.seed, args.seed + args.total_size)
    png_dir = os.path.join(save_dir, "images")
    if args.format == "png":
        check_png_folder(save_dir, identity)
        write_seed_pngs(sample_batch, seeds=seeds, batch_size=args.batch_size, out_dir=png_dir,
                        progress=args.progress)
        if dist_util.is_main():
            write_json({**record, "identity": identity}, os.path.join(save_dir, "flags.json"))
        logger.log(f"{args.total_size} PNGs in {os.path.abspath(png_dir)}")
        return
    path = run_seeded_sampling(sample_batch, seeds=seeds, batch_size=args.batch_size, out_dir=save_dir,
                               image_shape=(size, size), identity=identity, flags=record, progress=args.progress)
    logger.log(f"samples in {os.path.abspath(path)}")
    if args.format == "both":
        write_pngs_from_npz(path, seeds, png_dir)
        dist_util.barrier()
        logger.log(f"{args.total_size} PNGs in {os.path.abspath(png_dir)}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
