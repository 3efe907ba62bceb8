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

from guided_diffusion.cli import run_cli
from guided_diffusion.digits_demo import (NOISY_TIMESTEPS, benchmark_defaults, demo_defaults, judge, noisy_accuracy,
                                          run_script, sample_with, train_guides, trainable_parameters)
from guided_diffusion.files import atomic_write_bytes, write_json
from guided_diffusion.metrics.evaluate import evaluate
from guided_diffusion.metrics.inception import load_feature_net
from guided_diffusion.script_util import add_dict_to_argparser


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, benchmark_defaults())
    args = parser.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    out = os.path.abspath(args.out_dir)
    demo_argv = [f"--{k}={v}" for k, v in vars(args).items() if k in demo_defaults()]
    run_script("demo", demo_argv)  # the diffusion model, the ADM guide and the judge (skipped when present)
    start = time.perf_counter()
    steps = args.diffusion_steps_train
    ema = os.path.join(out, "diffusion", f"ema_{float(args.ema_rate)}_{steps:06d}.pt")
    judge_path = os.path.join(out, "judge", f"model{args.judge_steps:06d}.pt")
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
        acc = judge(judge_path, npz)
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
