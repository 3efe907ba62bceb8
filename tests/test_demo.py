"""The demo's plumbing on a shortened schedule: every stage's outputs, the report, and the skip on rerun."""

from __future__ import annotations

import json

import numpy as np
import pytest

from script_runs import run_script

pytestmark = pytest.mark.slow

QUICK = ["--diffusion_steps_train", 8, "--classifier_steps", 8, "--judge_steps", 8, "--num_samples", 6,
         "--batch_size", 16, "--timestep_respacing", "ddim5", "--ppap_clean_steps", 4, "--ppap_num_generated", 8,
         "--ppap_iterations", 5, "--vdpm_steps", 4]


def test_quick_demo_writes_report_and_resumes(tmp_path):
    out = tmp_path / "demo"
    first = run_script("demo.py", QUICK + ["--out_dir", out])
    report = json.loads((out / "report.json").read_text())
    for name, scale in (("unguided", 0.0), ("guided", 4.0), ("ppap", 7.5)):
        r = report["samples"][name]
        assert r["guidance"] == f"classifier scale {scale}" and r["num_samples"] == 6
        assert 0.0 <= r["accuracy"] <= 1.0 and sum(r["predicted_class_counts"]) == 6
        with np.load(out / r["npz"]) as f:
            assert f["arr_0"].shape == (6, 16, 16, 3) and f["arr_0"].dtype == np.uint8
            assert f["arr_1"].tolist() == np.load(out / report["samples"]["unguided"]["npz"])["arr_1"].tolist()
        assert (out / r["npz"]).with_name("samples_6x16x16x3_grid.png").is_file()
    for stage in ("diffusion", "classifier", "judge"):
        assert (out / stage / "model000008.pt").is_file() and (out / stage / "flags.json").is_file()
    assert "class accuracy" in first.stdout and "chance is 10%" in first.stdout
    report_md = (out / "report.md").read_text()
    assert "| guided (classifier scale 4.0) |" in report_md
    assert "![guided](guided/samples_6x16x16x3_grid.png)" in report_md  # a picture per row
    assert sorted(p.name for p in (out / "ppap_demo" / "ppap").glob("?_max5.ckpt")) == [
        f"{i}_max5.ckpt" for i in range(5)]

    vdpm = [report["samples"][f"vdpm w={w}"] for w in ("0", "0.1", "1", "3")]
    assert [r["guidance"] for r in vdpm] == ["CFG w=0", "CFG w=0.1", "CFG w=1", "CFG w=3"]
    vdpm_labels = [np.load(out / r["npz"])["arr_1"].tolist() for r in vdpm]
    assert all(labels == vdpm_labels[0] for labels in vdpm_labels)  # same seeds, same targets at every w
    assert min(vdpm_labels[0]) >= 0 and max(vdpm_labels[0]) <= 9  # classes, not the model's shifted labels
    assert (out / "vdpm" / "model000004.pt").is_file()

    again = run_script("demo.py", QUICK + ["--out_dir", out])
    assert again.stdout.count("already done") == 14  # nothing is trained or sampled twice
    assert json.loads((out / "report.json").read_text())["samples"] == report["samples"]
