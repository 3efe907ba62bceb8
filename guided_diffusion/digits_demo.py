"""The stages of the digits demo and the PPAP benchmark (``python_scripts/demo.py``, ``ppap_benchmark.py``).

Every stage is one of the ordinary scripts run with its usual flags, as its own process (exactly what a user
would type), and is skipped when its output exists, so both reruns continue where they stopped and the
benchmark reuses the demo's diffusion model and judge. The judge (a clean classifier) scores sample files.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
import torch

from .cli import load_model_checked
from .data import load_builtin
from .metrics.classifier_accuracy import sample_class_accuracy
from .metrics.image_batches import NpzBatch
from .ppap import add_lora, build_classifier, freeze_for_ppap
from .ppap.guidance import load_guidance_classifier
from .sample_writer import write_npz
from .script_util import add_dict_to_argparser, classifier_defaults, create_classifier, create_gaussian_diffusion
from .train import latest_checkpoint

SCRIPTS = Path(__file__).resolve().parents[1] / "python_scripts"
# The demo's model: a 1.2M-parameter UNet that trains at ~5 steps/s (batch 64) on two CPU cores.
MODEL = ["--image_size", 16, "--num_channels", 32, "--num_res_blocks", 1, "--channel_mult", "1,2,2",
         "--attention_resolutions", 8, "--num_head_channels", 32, "--diffusion_steps", 1000,
         "--noise_schedule", "cosine", "--predict_xstart", "True"]
CLASSIFIER = ["--image_size", 16, "--classifier_width", 32, "--classifier_depth", 1,
              "--classifier_channel_mult", "1,2,2", "--classifier_attention_resolutions", 8,
              "--classifier_num_head_channels", 32, "--classifier_num_classes", 10, "--diffusion_steps", 1000,
              "--noise_schedule", "cosine"]
DATA = ["--data_dir", "builtin:digits", "--random_flip", "False", "--random_crop", "False"]
RESNET = ["--classifier_name", "ResNet18", "--classifier_num_classes", 10, "--image_size", 16,
          "--diffusion_steps", 1000]
NOISY_TIMESTEPS = (200, 500, 800)


def demo_defaults() -> dict:
    return dict(out_dir="demo_output", diffusion_steps_train=1000, diffusion_lr=2e-3, classifier_steps=600,
                judge_steps=300, batch_size=64, num_samples=100, classifier_scale=4.0, timestep_respacing="ddim50",
                seed=0, ema_rate="0.995", ppap_row=True, ppap_clean_steps=200, ppap_num_generated=300,
                ppap_iterations=500, ppap_scale=7.5, vdpm_row=True, vdpm_steps=400, vdpm_lr=2e-3,
                vdpm_w="0,0.1,1,3")


def benchmark_defaults() -> dict:
    """The PPAP benchmark: the paper's noise (a linear-schedule diffusion model and guides), one iteration
    budget for every trained guide, the paper's optimiser settings (lr 1e-4, weight decay 0.05, linear
    annealing per expert; its batch is 256, ours 64), two seeds."""
    d = demo_defaults()
    d.update(noise_schedule="linear", clean_steps=400, iterations=2000, guide_lr=1e-4, guide_weight_decay=0.05,
             guide_anneal_lr=True, n_experts=5, gamma=16, lora_alpha=16, num_generated=2000, ppap_scale=7.5,
             methods="naive,finetune,multi_experts,ppap", seeds="0,1")
    return d


def ppap_row_settings(args) -> argparse.Namespace:
    """The demo's PPAP row: PPAP alone on the demo's cosine model, on a budget that fits the demo."""
    row = benchmark_defaults()
    row.update(batch_size=args.batch_size, seed=args.seed, num_samples=args.num_samples,
               timestep_respacing=args.timestep_respacing, clean_steps=args.ppap_clean_steps,
               num_generated=args.ppap_num_generated, iterations=args.ppap_iterations, noise_schedule="cosine",
               guide_lr=1e-3, guide_weight_decay=0.0, guide_anneal_lr=False)
    return argparse.Namespace(**row)


def run_script(name: str, argv: Sequence) -> None:
    """``python python_scripts/<name>.py argv`` as a child process sharing this terminal; a failure is an error
    that names the command."""
    cmd = [sys.executable, str(SCRIPTS / f"{name}.py")] + [str(a) for a in argv]
    done = subprocess.run(cmd, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if done.returncode != 0:
        raise RuntimeError(f"stage failed (exit {done.returncode}): {' '.join(cmd)}")


def run_stage(title: str, script: str, argv: Sequence, done_file: str) -> float:
    """Run ``script`` unless ``done_file`` exists; returns the seconds it took."""
    if os.path.exists(done_file):
        print(f"== {title}: already done ({done_file})", flush=True)
        return 0.0
    print(f"== {title}", flush=True)
    start = time.perf_counter()
    run_script(script, argv)
    return time.perf_counter() - start


def train_argv(args, folder: str, steps: int, extra) -> list:
    """Common training flags; resumes from the folder's latest checkpoint when a run was interrupted."""
    argv = DATA + ["--batch_size", args.batch_size, "--max_steps", steps, "--save_interval", max(steps // 4, 1),
                   "--log_interval", max(steps // 4, 1), "--seed", args.seed, "--log_path", folder] + list(extra)
    latest = latest_checkpoint(folder) if os.path.isdir(folder) else None
    return argv + (["--resume_checkpoint", latest] if latest else [])


def train_diffusion_model(args, out: str, schedule: str = "cosine") -> str:
    """The digits diffusion model (``MODEL`` with ``schedule``); returns its EMA checkpoint. The demo's (cosine)
    lives in <out>/diffusion, another schedule's in <out>/diffusion_<schedule>."""
    steps = args.diffusion_steps_train
    folder = os.path.join(out, "diffusion" if schedule == "cosine" else f"diffusion_{schedule}")
    model = [v if prev != "--noise_schedule" else schedule for prev, v in zip([None] + MODEL, MODEL)]
    run_stage(f"training the diffusion model ({schedule} schedule, {steps} steps)", "image_train",
              train_argv(args, folder, steps, model + ["--lr", args.diffusion_lr, "--ema_rate", args.ema_rate]),
              os.path.join(folder, f"model{steps:06d}.pt"))
    return os.path.join(folder, f"ema_{float(args.ema_rate)}_{steps:06d}.pt")


def train_judge(args, out: str) -> str:
    """The clean classifier that judges samples (it never guides); returns its checkpoint."""
    folder, steps = os.path.join(out, "judge"), args.judge_steps
    run_stage(f"training the clean classifier that judges the samples ({steps} steps)", "classifier_train",
              train_argv(args, folder, steps, CLASSIFIER + ["--lr", 1e-3, "--noised", "False"]),
              os.path.join(folder, f"model{steps:06d}.pt"))
    return os.path.join(folder, f"model{steps:06d}.pt")


def classifier_flags() -> dict:
    """The demo classifier's flags (CLASSIFIER over ADM's classifier defaults)."""
    parser = argparse.ArgumentParser()
    add_dict_to_argparser(parser, classifier_defaults())
    parsed, _ = parser.parse_known_args([str(a) for a in CLASSIFIER])
    return {k: getattr(parsed, k) for k in classifier_defaults()}


def judge(classifier_path: str, npz_path: str) -> dict:
    """The clean classifier's verdict on a sample batch: accuracy against ``arr_1`` and the class counts."""
    flags = classifier_flags()
    model = load_model_checked(create_classifier(**flags), classifier_path, flag="the demo's clean classifier")
    res = sample_class_accuracy(model, NpzBatch(npz_path))
    return {"accuracy": res["top1"], "num_samples": res["num_samples"],
            "predicted_class_counts": res["predicted_class_counts"]}


def judge_self_check(judge_path: str, out_dir: str) -> float:
    """The judge's accuracy on the real digits, so the report says how far to trust it."""
    data = load_builtin("digits", 16, random_flip=False)
    images = np.stack([((data[i][0].permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).byte().numpy()
                       for i in range(len(data))])
    path = os.path.join(out_dir, "judge", "digits_16x16.npz")
    write_npz(path, images, data.labels)
    return judge(judge_path, path)["accuracy"]


# ---------------------------------------------------------------------------------------------- PPAP
def ppap_train_argv(args, folder: str, method: str, iterations: int, data_dir: str, init: str = "") -> list:
    argv = RESNET + ["--noise_schedule", args.noise_schedule, "--method", method, "--data_dir", data_dir,
                     "--random_flip", "False", "--random_crop", "False", "--batch_size", args.batch_size,
                     "--iterations", iterations, "--lr", args.guide_lr, "--weight_decay", args.guide_weight_decay,
                     "--anneal_lr", args.guide_anneal_lr, "--n_experts", args.n_experts, "--gamma", args.gamma,
                     "--lora_alpha", args.lora_alpha, "--save_interval", 10 ** 9,
                     "--log_interval", max(iterations // 4, 1), "--seed", args.seed, "--log_path", folder]
    return argv + (["--classifier_init", init] if init else [])


def expert_paths(folder: str, n: int) -> List[str]:
    return [os.path.join(folder, f"{i}_max{n}.ckpt") for i in range(n)]


def trainable_parameters(method: str, args) -> int:
    """Parameters each method trains for guidance (naive trains none)."""
    if method == "naive":
        return 0
    full = sum(p.numel() for p in build_classifier("ResNet18", num_classes=10).parameters())
    if method == "finetune":
        return full
    if method == "multi_experts":
        return full * args.n_experts
    student = add_lora(build_classifier("ResNet18", num_classes=10), "ResNet18", r=args.gamma,
                       lora_alpha=args.lora_alpha)
    freeze_for_ppap(student, "ResNet18")
    return args.n_experts * sum(p.numel() for p in student.parameters() if p.requires_grad)


def train_guides(args, out: str, ema: str, methods, label: str = "") -> Dict[str, List[str]]:
    """The classifiers each method guides with: {method: [checkpoint paths]}, trained under ``out``."""
    folder = lambda name: os.path.join(out, name)  # noqa: E731
    clean = os.path.join(folder("resnet_clean"), "0_max1.ckpt")
    prefix = f"{label}: " if label else ""
    run_stage(f"{prefix}ResNet18 on clean digits ({args.clean_steps} steps): the off-the-shelf classifier",
              "classifier_train", ppap_train_argv(args, folder("resnet_clean"), "clean", args.clean_steps,
                                                  "builtin:digits"), clean)
    guides = {"naive": [clean]}
    for method, n in (("finetune", 1), ("multi_experts", args.n_experts)):
        if method in methods:
            paths = expert_paths(folder(method), n)
            run_stage(f"{prefix}{method}: {args.iterations} iterations over {n} expert(s)",
                      "classifier_train", ppap_train_argv(args, folder(method), method, args.iterations,
                                                          "builtin:digits", clean), paths[-1])
            guides[method] = paths
    if "ppap" in methods:
        gen = folder("generated")
        run_stage(f"{prefix}generating {args.num_generated} unlabeled images", "generate_dataset",
                  ["--model_path", ema, "--num_samples", args.num_generated, "--batch_size", 100,
                   "--timestep_respacing", "ddim25", "--use_ddim", "True", "--seed", 10 ** 6 + args.seed,
                   "--log_path", gen], os.path.join(gen, f"{args.num_generated - 1:06d}.png"))
        paths = expert_paths(folder("ppap"), args.n_experts)
        run_stage(f"{prefix}ppap: {args.iterations} iterations over {args.n_experts} LoRA experts (no labels)",
                  "classifier_train", ppap_train_argv(args, folder("ppap"), "ppap", args.iterations, gen,
                                                      clean), paths[-1])
        guides["ppap"] = paths
    return guides


def sample_with(args, out: str, ema: str, method: str, paths, scale: float) -> tuple:
    """Sample the digits model guided by ``method``'s classifiers ("unguided": scale 0 with the naive guide,
    the same seeds and target labels): (npz path, seconds)."""
    folder = os.path.join(out, f"samples_{method}")
    npz = os.path.join(folder, f"samples_{args.num_samples}x16x16x3.npz")
    scale = 0 if method == "unguided" else scale
    argv = RESNET + [
        "--method", "naive" if method == "unguided" else method, "--model_path", ema, "--classifier_path", *paths,
        "--classifier_scale", scale, "--n_experts", len(paths), "--gamma",
        args.gamma, "--lora_alpha", args.lora_alpha, "--num_samples", args.num_samples, "--batch_size",
        args.num_samples, "--seed", args.seed, "--timestep_respacing", args.timestep_respacing,
        "--use_ddim", "True", "--log_path", folder]
    seconds = run_stage(f"sampling with {method} guidance (scale {scale})", "classifier_sample", argv, npz)
    return npz, seconds


def noisy_accuracy(method: str, paths, args, timesteps=NOISY_TIMESTEPS) -> dict:
    """How well a guide classifies the real digits after forward diffusion to each train index t.

    This is what guidance needs from it at that noise level; a naive classifier's column shows how far into
    the noise a clean classifier still reads the class. The noise is seeded by ``args.seed``.
    """
    if method == "unguided":
        return {}
    guide = load_guidance_classifier(method, paths, classifier_name="ResNet18", num_classes=10,
                                     n_experts=None if method == "naive" else len(paths), gamma=args.gamma,
                                     lora_alpha=args.lora_alpha, noise_schedule=args.noise_schedule)
    data = load_builtin("digits", 16, random_flip=False)
    x0 = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.as_tensor(data.labels)
    diffusion = create_gaussian_diffusion(steps=1000, noise_schedule=args.noise_schedule)
    gen = torch.Generator().manual_seed(args.seed)
    result = {}
    for t in timesteps:
        tt = torch.full((len(x0),), t)
        x_t = diffusion.q_sample(x0, tt, noise=torch.randn(x0.shape, generator=gen))
        with torch.no_grad():
            pred = torch.cat([guide(x_t[i:i + 500], tt[i:i + 500]).argmax(1) for i in range(0, len(x0), 500)])
        result[str(t)] = (pred == labels).float().mean().item()
    return result


__all__ = ["MODEL", "CLASSIFIER", "DATA", "RESNET", "demo_defaults", "benchmark_defaults", "ppap_row_settings",
           "run_script", "run_stage", "train_argv", "train_diffusion_model", "train_judge", "judge",
           "judge_self_check", "train_guides", "sample_with", "noisy_accuracy", "trainable_parameters",
           "expert_paths"]
