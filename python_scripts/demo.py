"""Demo: train a diffusion model and a noisy classifier on the built-in digits, then guide the sampler.

On a 2-core CPU it takes about fourteen minutes, with no download. Each stage is one of the ordinary
scripts run as its own process with its usual flags:

1. ``image_train.py``: a small unconditional diffusion UNet on 16x16 digits. It predicts x0
   (``--predict_xstart True``): an eps-predicting model this small and this briefly trained turns its
   errors at high noise, amplified by 1/alpha_t, into coloured tints that it never removes.
2. ``classifier_train.py``: ADM's noisy classifier (the guide).
3. ``classifier_train.py --noised False``: a clean classifier (the judge; it never guides).
4. ``classifier_sample.py``: the same seeds and target labels sampled unguided (scale 0) and guided.
5. PPAP (``--ppap_row True``): a ResNet18 trained on clean digits stands in for an off-the-shelf
   classifier; ``generate_dataset.py`` samples unlabeled images; ``classifier_train.py --method ppap``
   distills the ResNet into 5 LoRA experts on noisy versions of them (no labels); the same seeds are
   sampled with their guidance. ``ppap_benchmark.py`` runs the full comparison.
6. VDPM (``--vdpm_row True``): ``vdpm_train.py`` trains a class-conditional v-prediction model in
   continuous log-SNR time with label dropout, and ``vdpm_generate.py`` samples the same seeds with
   classifier-free guidance at each w of ``--vdpm_w`` ((1 + w) * cond - w * uncond; w = 0 is the plain
   conditional model).
7. The judge labels every sample; the report gives each run's accuracy against the target labels.
   Unguided samples match their random targets about 10% of the time (chance); guided samples should
   beat that by far.

Outputs under ``--out_dir`` (default ``demo_output/``): each stage's run folder (checkpoints, logs, npz,
PNG grid, flags) and ``report.json`` + ``report.md``. Rerunning continues: finished stages are skipped,
an interrupted training resumes from its latest checkpoint.

    python python_scripts/demo.py                      # the full demo
    python python_scripts/demo.py --diffusion_steps_train 200 --num_samples 40   # a quick look
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from guided_diffusion.cli import run_cli
from guided_diffusion.digits_demo import (CLASSIFIER, MODEL, demo_defaults, judge, judge_self_check,
                                          ppap_row_settings, run_stage, sample_with, train_argv,
                                          train_diffusion_model, train_guides, train_judge)
from guided_diffusion.files import atomic_write_bytes, write_json
from guided_diffusion.script_util import add_dict_to_argparser
from guided_diffusion.train import latest_checkpoint


def write_report(out_dir: str, report: dict) -> None:
    write_json(report, os.path.join(out_dir, "report.json"))
    lines = ["# Demo report: classifier guidance on the built-in digits", "",
             "| samples | target labels | accuracy (clean classifier) | npz | samples |", "|---|---|---|---|---|"]
    for name, r in report["samples"].items():
        grid = r["npz"][:-len(".npz")] + "_grid.png"
        lines.append(f"| {name} ({r['guidance']}) | uniform random | {100 * r['accuracy']:.1f}% | {r['npz']} | "
                     f"![{name}]({grid}) |")
    lines += ["", f"Chance is 10%. The clean classifier scores {100 * report['judge_accuracy']:.1f}% on the "
              "training digits themselves.", "", f"Stage times (s): {report['seconds']}"]
    atomic_write_bytes(("\n".join(lines) + "\n").encode(), os.path.join(out_dir, "report.md"))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_dict_to_argparser(parser, demo_defaults())
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    # Loss tables go to each run's log.txt and progress.csv; the terminal keeps the progress bars.
    os.environ.setdefault("OPENAI_LOG_FORMAT", "log,csv")
    out = os.path.abspath(args.out_dir)
    os.makedirs(out, exist_ok=True)
    print(f"demo output: {out}", flush=True)
    folders = {k: os.path.join(out, k) for k in ("classifier", "unguided", "guided")}
    classifier = os.path.join(folders["classifier"], f"model{args.classifier_steps:06d}.pt")
    seconds = {}

    start = time.perf_counter()
    ema = train_diffusion_model(args, out)  # 1: the x0-predicting UNet, cosine schedule
    seconds["diffusion"] = time.perf_counter() - start
    seconds["classifier"] = run_stage(
        f"2 training the noisy classifier ({args.classifier_steps} steps)", "classifier_train",
        train_argv(args, folders["classifier"], args.classifier_steps, CLASSIFIER + ["--lr", 1e-3]), classifier)
    start = time.perf_counter()
    judge_path = train_judge(args, out)  # 3
    seconds["judge"] = time.perf_counter() - start

    report = {"flags": vars(args), "samples": {}, "seconds": seconds}
    for i, (name, scale) in enumerate((("unguided", 0.0), ("guided", args.classifier_scale))):
        npz = os.path.join(folders[name], f"samples_{args.num_samples}x16x16x3.npz")
        sample_argv = MODEL + CLASSIFIER + [
            "--model_path", ema, "--classifier_path", classifier, "--classifier_scale", scale,
            "--num_samples", args.num_samples, "--batch_size", args.num_samples, "--seed", args.seed,
            "--timestep_respacing", args.timestep_respacing, "--use_ddim", "True", "--log_path", folders[name]]
        seconds[name] = run_stage(f"4.{1 + i} sampling {name} (classifier scale {scale})", "classifier_sample",
                                  sample_argv, npz)
        report["samples"][name] = {**judge(judge_path, npz), "guidance": f"classifier scale {scale}",
                                   "npz": os.path.relpath(npz, out)}
    if args.ppap_row:
        npz, seconds["ppap"] = ppap_row(args, out, ema)
        report["samples"]["ppap"] = {**judge(judge_path, npz), "guidance": f"classifier scale {args.ppap_scale}",
                                     "npz": os.path.relpath(npz, out)}
    if args.vdpm_row:
        start = time.perf_counter()
        for w, npz in vdpm_rows(args, out).items():
            report["samples"][f"vdpm w={w:g}"] = {**judge(judge_path, npz), "guidance": f"CFG w={w:g}",
                                                  "npz": os.path.relpath(npz, out)}
        seconds["vdpm"] = time.perf_counter() - start
    report["judge_accuracy"] = judge_self_check(judge_path, out)
    write_report(out, report)

    print("\n== report")
    for name, r in report["samples"].items():
        print(f"{name:>9}: class accuracy {100 * r['accuracy']:5.1f}%  (clean classifier's verdicts per class: "
              f"{r['predicted_class_counts']})")
    print(f"chance is 10%; the clean classifier scores {100 * report['judge_accuracy']:.1f}% on real digits")
    grids = [os.path.relpath(os.path.dirname(os.path.join(out, r["npz"])), out) + "/*_grid.png"
             for r in report["samples"].values()]
    print(f"report: {os.path.join(out, 'report.md')}; sample grids: {', '.join(grids)}")


def vdpm_rows(args, out: str) -> dict:
    """The v-objective + CFG model on the digits and its samples at each w: {w: npz path}."""
    run = os.path.join(out, "vdpm")
    steps = args.vdpm_steps
    vdpm_argv = ["--dataset", "digits", "--image-size", 16, "--use-cfg", "--p-uncond", 0.1,
                  "--model-out-type", "v", "--reweight-type", "truncated_snr", "--logsnr-schedule", "cosine",
                  "--hid-channels", 32, "--ch-multipliers", "1,2,2", "--num-res-blocks", 1, "--apply-attn", "0,1,0",
                  "--drop-rate", 0, "--batch-size", args.batch_size, "--lr", args.vdpm_lr, "--max-steps", steps,
                  "--save-steps", max(steps // 4, 1), "--use-ema", "--ema-decay", args.ema_rate,
                  "--image-intv", 0, "--seed", args.seed, "--ckpt-dir", out, "--ckpt-name", "vdpm"]
    if os.path.isdir(run) and latest_checkpoint(run):
        vdpm_argv.append("--resume")
    run_stage(f"5 training the v-objective model with label dropout ({steps} steps)", "vdpm_train", vdpm_argv,
              os.path.join(run, f"model{steps:06d}.pt"))
    npzs = {}
    for w in (float(v) for v in str(args.vdpm_w).split(",") if v):
        folder = os.path.join(out, f"vdpm_w{w:g}")
        npzs[w] = os.path.join(folder, f"samples_{args.num_samples}x16x16x3.npz")
        run_stage(f"5 sampling the v-objective model, classifier-free guidance w={w:g}", "vdpm_generate",
                  ["--ckpt-path", run, "--use-ema", "--use-ddim", "--sample-timesteps", 25, "--w-guide", w,
                   "--total-size", args.num_samples, "--batch-size", args.num_samples, "--seed", args.seed,
                   "--save-dir", folder], npzs[w])
    return npzs


def ppap_row(args, out: str, ema: str):
    """PPAP on a demo budget, in ``<out>/ppap_demo``: returns the guided npz and the seconds taken."""
    start = time.perf_counter()
    bench = ppap_row_settings(args)
    root = os.path.join(out, "ppap_demo")
    guides = train_guides(bench, root, ema, ["ppap"], label="PPAP row")
    npz, _ = sample_with(bench, root, ema, "ppap", guides["ppap"], args.ppap_scale)
    return npz, time.perf_counter() - start


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
