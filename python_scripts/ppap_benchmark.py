"""PPAP on the built-in digits: naive, finetune, multi-experts and PPAP guidance of one unconditional model.

    python python_scripts/ppap_benchmark.py            # about 20 minutes on a 2-core CPU

It reuses the demo's stages and folder (``--out_dir demo_output``: the diffusion model and the judge are
trained once for both), then:

1. a clean ResNet18 on the digits with ImageNet-normalised input: the "off-the-shelf" classifier;
2. ``finetune``: it, fine-tuned on noisy labelled digits (t ~ U[0, 1000));
3. ``multi_experts``: 5 copies, each fine-tuned on a fifth of the timesteps (same total iterations);
4. ``generate_dataset.py``: unlabeled images from the diffusion model;
5. ``ppap``: 5 LoRA experts distilled from the clean ResNet18 on those images, without labels;
6. guided sampling with each (same seeds and target labels), judged by the demo's clean ADM classifier
   (another architecture), with FID against the digits from the evaluation suite's small network.

The table (top-1 accuracy, FID, trainable parameters, sampling seconds per sample) is printed and written
to ``<out_dir>/ppap_benchmark.json`` and ``.md``. Every stage is skipped when its output exists.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import classifier_sample  # noqa: E402
import classifier_train  # noqa: E402
import demo  # noqa: E402
import generate_dataset  # noqa: E402
from guided_diffusion.cli import run_cli  # noqa: E402
from guided_diffusion.data import load_builtin  # noqa: E402
from guided_diffusion.script_util import create_gaussian_diffusion  # noqa: E402
from guided_diffusion.metrics.evaluate import evaluate  # noqa: E402
from guided_diffusion.metrics.inception import load_feature_net  # noqa: E402
from guided_diffusion.ppap import add_lora, build_classifier, freeze_for_ppap  # noqa: E402
from guided_diffusion.ppap.guidance import load_guidance_classifier  # noqa: E402
from guided_diffusion.script_util import add_dict_to_argparser  # noqa: E402
from guided_diffusion.train import write_json  # noqa: E402
from guided_diffusion.train.checkpointing import atomic_write_bytes  # noqa: E402

NOISY_TIMESTEPS = (200, 500, 800)
RESNET = ["--classifier_name", "ResNet18", "--classifier_num_classes", 10, "--image_size", 16,
          "--diffusion_steps", 1000, "--noise_schedule", "cosine"]


def benchmark_defaults() -> dict:
    d = demo.demo_defaults()
    d.update(clean_steps=400, finetune_iterations=1000, ppap_iterations=2500, n_experts=5, gamma=16,
             lora_alpha=16, num_generated=2000, ppap_scale=7.5, methods="naive,finetune,multi_experts,ppap",
             ppap_row=False, vdpm_row=False)  # the demo's own PPAP and VDPM runs are not needed here
    return d


def ppap_train_argv(args, folder: str, method: str, iterations: int, data_dir: str, init: str = "") -> list:
    argv = RESNET + ["--method", method, "--data_dir", data_dir, "--random_flip", "False", "--random_crop",
                     "False", "--batch_size", args.batch_size, "--iterations", iterations, "--lr", 1e-3,
                     "--n_experts", args.n_experts, "--gamma", args.gamma, "--lora_alpha", args.lora_alpha,
                     "--save_interval", 10 ** 9, "--log_interval", max(iterations // 4, 1), "--seed", args.seed,
                     "--log_path", folder]
    return argv + (["--classifier_init", init] if init else [])


def expert_paths(folder: str, n: int) -> list:
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


def train_guides(args, out: str, ema: str, methods, label: str = "") -> dict:
    """The classifiers each method guides with: {method: [checkpoint paths]}, trained under ``out``."""
    folder = lambda name: os.path.join(out, name)  # noqa: E731
    clean = os.path.join(folder("resnet_clean"), "0_max1.ckpt")
    prefix = f"{label}: " if label else ""
    demo.run_stage(f"{prefix}ResNet18 on clean digits ({args.clean_steps} steps): the off-the-shelf classifier",
                   classifier_train, ppap_train_argv(args, folder("resnet_clean"), "clean", args.clean_steps,
                                                     "builtin:digits"), clean)
    guides = {"naive": [clean]}
    for method, n in (("finetune", 1), ("multi_experts", args.n_experts)):
        if method in methods:
            paths = expert_paths(folder(method), n)
            demo.run_stage(f"{prefix}{method}: {args.finetune_iterations} iterations over {n} expert(s)",
                           classifier_train, ppap_train_argv(args, folder(method), method,
                                                             args.finetune_iterations, "builtin:digits", clean),
                           paths[-1])
            guides[method] = paths
    if "ppap" in methods:
        gen = folder("generated")
        demo.run_stage(f"{prefix}generating {args.num_generated} unlabeled images", generate_dataset,
                       demo.MODEL + ["--model_path", ema, "--num_samples", args.num_generated, "--batch_size",
                                     100, "--timestep_respacing", "ddim25", "--use_ddim", "True",
                                     "--seed", 10 ** 6, "--log_path", gen],
                       os.path.join(gen, f"{args.num_generated - 1:06d}.png"))
        paths = expert_paths(folder("ppap"), args.n_experts)
        demo.run_stage(f"{prefix}ppap: {args.ppap_iterations} iterations over {args.n_experts} LoRA experts "
                       "(no labels)",
                       classifier_train, ppap_train_argv(args, folder("ppap"), "ppap", args.ppap_iterations,
                                                         gen, clean), paths[-1])
        guides["ppap"] = paths
    return guides


def sample_with(args, out: str, ema: str, method: str, paths, scale: float) -> tuple:
    folder = os.path.join(out, f"samples_{method}")
    npz = os.path.join(folder, f"samples_{args.num_samples}x16x16x3.npz")
    argv = demo.MODEL + RESNET + [
        "--method", method, "--model_path", ema, "--classifier_path", *paths, "--classifier_scale", scale,
        "--n_experts", len(paths), "--gamma", args.gamma, "--lora_alpha", args.lora_alpha,
        "--num_samples", args.num_samples, "--batch_size", args.num_samples, "--seed", args.seed,
        "--timestep_respacing", args.timestep_respacing, "--use_ddim", "True", "--log_path", folder]
    seconds = demo.run_stage(f"sampling with {method} guidance (scale {scale})", classifier_sample, argv, npz)
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
                                     lora_alpha=args.lora_alpha, noise_schedule="cosine")
    data = load_builtin("digits", 16, random_flip=False)
    x0 = torch.stack([data[i][0] for i in range(len(data))])
    labels = torch.as_tensor(data.labels)
    diffusion = create_gaussian_diffusion(steps=1000, noise_schedule="cosine")
    gen = torch.Generator().manual_seed(args.seed)
    result = {}
    for t in timesteps:
        tt = torch.full((len(x0),), t)
        x_t = diffusion.q_sample(x0, tt, noise=torch.randn(x0.shape, generator=gen))
        with torch.no_grad():
            pred = torch.cat([guide(x_t[i:i + 500], tt[i:i + 500]).argmax(1) for i in range(0, len(x0), 500)])
        result[str(t)] = (pred == labels).float().mean().item()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, benchmark_defaults())
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    out = os.path.abspath(args.out_dir)
    demo_argv = [f"--{k}={v}" for k, v in vars(args).items() if k in demo.demo_defaults()]
    demo.main(demo_argv)  # the diffusion model, the ADM guide and the judge (skipped when present)
    start = time.perf_counter()
    steps = args.diffusion_steps_train
    ema = os.path.join(out, "diffusion", f"ema_{float(args.ema_rate)}_{steps:06d}.pt")
    judge = os.path.join(out, "judge", f"model{args.judge_steps:06d}.pt")
    reference = os.path.join(out, "judge", "digits_16x16.npz")
    guides = train_guides(args, out, ema, methods)
    net = load_feature_net("tiny-random")
    rows = {}
    baseline = os.path.join(out, "unguided", f"samples_{args.num_samples}x16x16x3.npz")
    for method in ["unguided"] + methods:
        if method == "unguided":
            npz, seconds = baseline, None
        else:
            npz, seconds = sample_with(args, out, ema, method, guides[method], args.ppap_scale)
        acc = demo.judge(judge, npz)
        fid = evaluate(reference, npz, net, progress=False)["fid"]
        rows[method] = {"accuracy_top1": acc["accuracy"], "fid_tiny": fid,
                        "trainable_parameters": 0 if method == "unguided" else trainable_parameters(method, args),
                        "seconds_per_sample": None if not seconds else seconds / args.num_samples,
                        "accuracy_on_noisy_digits": noisy_accuracy(method, guides.get(method), args),
                        "npz": os.path.relpath(npz, out)}
    report = {"flags": vars(args), "rows": rows, "seconds": time.perf_counter() - start}
    write_json(report, os.path.join(out, "ppap_benchmark.json"))
    noisy = " / ".join(f"t={t}" for t in NOISY_TIMESTEPS)
    lines = [f"| guidance | top-1 accuracy (judge) | FID (tiny net) | trainable parameters | s / sample | "
             f"guide's accuracy on noisy digits ({noisy}) |", "|---|---|---|---|---|---|"]
    for m, r in rows.items():
        sec = "-" if r["seconds_per_sample"] is None else f"{r['seconds_per_sample']:.3f}"
        acc_t = " / ".join(f"{100 * a:.0f}%" for a in r["accuracy_on_noisy_digits"].values()) or "-"
        lines.append(f"| {m} | {100 * r['accuracy_top1']:.1f}% | {r['fid_tiny']:.3f} | "
                     f"{r['trainable_parameters']:,} | {sec} | {acc_t} |")
    table = "\n".join(lines)
    atomic_write_bytes((table + "\n").encode(), os.path.join(out, "ppap_benchmark.md"))
    print("\n== PPAP benchmark on the digits (chance: 10%)\n" + table, flush=True)


if __name__ == "__main__":
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    run_cli(main, sys.argv[1:])
