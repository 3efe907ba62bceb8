"""classifier_train.py --method clean | finetune | multi_experts | ppap on tiny digits: files, layouts, losses."""

from __future__ import annotations

import json
import os

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from guided_diffusion.cli import run_cli
from guided_diffusion.ppap import add_lora, build_classifier, check_state_dict_layout, read_state_dict
from guided_diffusion.ppap.training import distillation_loss
from script_runs import import_script

classifier_train = import_script("classifier_train")
COMMON = ["--classifier_name", "ResNet18", "--classifier_num_classes", 10, "--image_size", 8,
          "--diffusion_steps", 100, "--random_flip", "False", "--batch_size", 8, "--save_interval", 1000,
          "--progress", "False"]


def train(tmp_path, name, method, iterations, *extra):
    argv = COMMON + ["--method", method, "--iterations", iterations, "--log_path", tmp_path / name, *extra]
    run_cli(classifier_train.main, [str(a) for a in argv])
    return tmp_path / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ppap_runs")
    clean = train(root, "clean", "clean", 6, "--data_dir", "builtin:digits")
    gen = root / "generated"
    gen.mkdir()
    for i in range(12):  # stands in for PPAP's generate_dataset.py output: unlabeled PNGs ...
        Image.fromarray((torch.rand(8, 8, 3) * 255).byte().numpy()).save(gen / f"{i:06d}.png")
    # ... beside its logger's files, and one image smaller than --image_size (ImageNet has such images).
    (gen / "log.txt").write_text("Logging to generated\n12 images are saved.\n")
    (gen / "progress.csv").write_text("step\n0\n")
    Image.fromarray((torch.rand(6, 7, 3) * 255).byte().numpy()).save(gen / "000012.png")
    out = {"clean": clean, "gen": gen}
    init = ["--classifier_init", clean / "0_max1.ckpt"]
    out["finetune"] = train(root, "finetune", "finetune", 4, "--data_dir", "builtin:digits", *init)
    out["multi"] = train(root, "multi", "multi_experts", 4, "--n_experts", 2, "--data_dir", "builtin:digits",
                         *init)
    out["ppap"] = train(root, "ppap", "ppap", 4, "--n_experts", 2, "--gamma", 4, "--lora_alpha", 4,
                        "--data_dir", gen, *init)
    return out


def test_checkpoint_names_and_layouts(runs):
    names = lambda d: sorted(f for f in os.listdir(d) if f.endswith(".ckpt"))  # noqa: E731
    assert names(runs["finetune"]) == ["0_iteration4_max1.ckpt", "0_max1.ckpt"]
    assert names(runs["multi"]) == ["0_iteration2_max2.ckpt", "0_max2.ckpt", "1_iteration2_max2.ckpt",
                                    "1_max2.ckpt"]
    plain = build_classifier("ResNet18", num_classes=10)
    student = add_lora(plain, "ResNet18", r=4, lora_alpha=4)
    check_state_dict_layout(plain, read_state_dict(str(runs["multi"] / "1_max2.ckpt")))
    check_state_dict_layout(student, read_state_dict(str(runs["ppap"] / "1_max2.ckpt")))


def test_ppap_reads_a_generate_dataset_folder_and_upscales_small_images(runs):
    """The logger's files beside the images are skipped, not refused, and the one 6x7 image of 13 is upscaled
    by default for PPAP's methods, with the count in the run's log (ADM's methods still refuse it)."""
    log = (runs["ppap"] / "log.txt").read_text()
    assert "1 of 13 images are smaller than 8 px and are upscaled" in log
    flags = json.loads((runs["ppap"] / "flags.json").read_text())
    assert flags["allow_upscale"] is True and flags["lora_scale_convention"] == "released"


def test_ppap_experts_change_only_their_trainable_part(runs):
    clean = read_state_dict(str(runs["clean"] / "0_max1.ckpt"))
    e0, e1 = (read_state_dict(str(runs["ppap"] / f"{i}_max2.ckpt")) for i in range(2))
    student = add_lora(build_classifier("ResNet18", num_classes=10), "ResNet18", r=4, lora_alpha=4)
    from guided_diffusion.ppap import ppap_trainable_names
    trainable = set(ppap_trainable_names(student, "ResNet18"))
    for key, value in e0.items():
        base_key = key[len("resnet."):].replace(".conv.weight", ".weight")
        if key in trainable or "running_" in key or "num_batches" in key:
            continue
        if "lora_" not in key:  # the frozen backbone is the teacher's, untouched, and shared by the experts
            torch.testing.assert_close(value, clean[base_key], rtol=0, atol=0, msg=key)
            torch.testing.assert_close(e1[key], value, rtol=0, atol=0, msg=key)
    lora_b = [k for k in trainable if k.endswith("lora_B")]
    assert all(e0[k].abs().sum() > 0 for k in lora_b[:3])  # B starts at zero: training moved it
    assert any(not torch.equal(e0[k], e1[k]) for k in lora_b)  # the two experts differ


def test_finetune_moves_every_weight(runs):
    clean = read_state_dict(str(runs["clean"] / "0_max1.ckpt"))
    ft = read_state_dict(str(runs["finetune"] / "0_max1.ckpt"))
    assert not torch.equal(clean["conv1.weight"], ft["conv1.weight"])
    assert not torch.equal(clean["fc.weight"], ft["fc.weight"])


@pytest.mark.parametrize("method,name,extra", [
    ("multi_experts", "multi", ["--data_dir", "builtin:digits"]),
    ("ppap", "ppap", ["--gamma", 4, "--lora_alpha", 4, "--data_dir", "GEN"]),
])
def test_chained_experts_start_from_the_previous_one(runs, tmp_path, method, name, extra):
    """Expert 1 of a chained run continues from expert 0: rebuilt identically when a rerun reads expert 0
    back from its file, and different from an expert 1 started from the off-the-shelf weights."""
    extra = [runs["gen"] if a == "GEN" else a for a in extra]
    init = ["--classifier_init", runs["clean"] / "0_max1.ckpt", "--n_experts", 2, *extra]
    chained = {i: read_state_dict(str(runs[name] / f"{i}_max2.ckpt")) for i in range(2)}
    rerun = tmp_path / "rerun"
    rerun.mkdir()
    torch.save(chained[0], rerun / "0_max2.ckpt")  # expert 0 done: the rerun trains expert 1 only
    train(tmp_path, "rerun", method, 4, *init)
    fresh = train(tmp_path, "fresh", method, 4, "--expert_init", "pretrained", *init)
    again = read_state_dict(str(rerun / "1_max2.ckpt"))
    independent = {i: read_state_dict(str(fresh / f"{i}_max2.ckpt")) for i in range(2)}
    for key, value in chained[1].items():
        torch.testing.assert_close(again[key], value, rtol=0, atol=1e-6, msg=key)
        torch.testing.assert_close(independent[0][key], chained[0][key], rtol=0, atol=1e-6, msg=key)
    moved = [k for k in chained[1] if not torch.allclose(chained[1][k].float(), independent[1][k].float())]
    assert moved, "a chained expert 1 equals one trained from the off-the-shelf weights"


def test_distillation_loss_is_the_class_averaged_kl_to_the_sharpened_teacher():
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    p = F.softmax(t / 0.25, -1)
    expected = F.kl_div(F.log_softmax(s, -1), p, reduction="none").mean()
    torch.testing.assert_close(distillation_loss(t, s), expected)
    assert distillation_loss(t, t * 4).item() == pytest.approx(0.0, abs=1e-6)  # student = sharpened teacher


def test_experts_draw_timesteps_inside_their_range(monkeypatch, tmp_path):
    """3 experts of 100 steps (3 does not divide 100): PPAP's trainer floors the edges, int(i / n * T), and draws
    t ~ U{lo, ..., hi - 1} for int(iterations / n) steps each. Without --classifier_init, finetune and
    multi_experts start from random weights and say so."""
    from guided_diffusion.adm import diffusion as gd
    seen = []
    real = gd.GaussianDiffusion.q_sample

    def spy(self, x_start, t, noise=None):
        seen.append(t.clone())
        return real(self, x_start, t, noise)

    monkeypatch.setattr(gd.GaussianDiffusion, "q_sample", spy)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        run = train(tmp_path, "m", "multi_experts", 7, "--n_experts", 3, "--data_dir", "builtin:digits")
    edges = [int(i / 3 * 100) for i in range(4)]
    assert edges == [0, 33, 66, 100] and len(seen) == 3 * int(7 / 3)
    for i in range(3):
        drawn = torch.cat(seen[2 * i:2 * i + 2])
        assert drawn.min() >= edges[i] and drawn.max() < edges[i + 1], (i, drawn)
    assert sorted(p.name for p in run.glob("?_max3.ckpt")) == ["0_max3.ckpt", "1_max3.ckpt", "2_max3.ckpt"]
    assert "WARNING: --method multi_experts starts the ResNet18 from RANDOM weights" in (run / "log.txt").read_text()

    # The three files load (their names and flags.json say 3 experts) and guide by PPAP's sampler rule:
    # edges int(i * 100 / 3) = 0, 33, 66, 100 with closed ranges, the boundary going to the lower expert.
    from guided_diffusion.ppap.guidance import load_guidance_classifier
    paths = [str(run / f"{i}_max3.ckpt") for i in range(3)]
    module = load_guidance_classifier("multi_experts", paths, classifier_name="ResNet18", num_classes=10,
                                      total_steps=100, noise_schedule="linear")
    nets = [build_classifier("ResNet18", p, num_classes=10).eval() for p in paths]
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        for t, i in ((0, 0), (33, 0), (34, 1), (66, 1), (67, 2), (99, 2)):
            assert torch.equal(module(x, torch.full((2,), t)), nets[i](x)), t


@pytest.mark.parametrize("extra,words", [
    (["--method", "multi_experts", "--n_experts", 101, "--data_dir", "builtin:digits"],
     ["n_experts=101", "100 diffusion steps"]),
    (["--method", "ppap", "--data_dir", "builtin:digits"],
     ["--classifier_init", "ResNet18_Weights.IMAGENET1K_V1", "1000 classes, not 10"]),
    (["--method", "ppap", "--data_dir", "builtin:digits", "--lora_scale_convention", "half"],
     ["--lora_scale_convention", "released"]),
    (["--method", "finetune", "--classifier_name", "VGG11", "--data_dir", "builtin:digits"], ["VGG11"]),
    (["--method", "ppap", "--data_dir", "EMPTY", "--classifier_init", "INIT"], ["no image files"]),
    (["--method", "multi_experts", "--expert_init", "random", "--data_dir", "builtin:digits"],
     ["--expert_init", "chained"]),
    (["--method", "ppap", "--data_dir", "builtin:digits", "--classifier_init", "nowhere.ckpt"],
     ["nowhere.ckpt", "does not exist"]),
])
def test_bad_input(tmp_path, capsys, extra, words):
    (tmp_path / "EMPTY").mkdir()
    torch.save(build_classifier("ResNet18", num_classes=10).state_dict(), tmp_path / "init.pt")
    extra = [{"EMPTY": tmp_path / "EMPTY", "INIT": tmp_path / "init.pt"}.get(a, a) for a in extra]
    with pytest.raises(SystemExit) as exc:  # the last --classifier_name wins
        run_cli(classifier_train.main, [str(a) for a in COMMON + ["--iterations", 2, "--log_path",
                                                                     tmp_path / "run"] + extra])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err
    assert not (tmp_path / "run").exists()


def test_an_expert_saves_into_its_save_dir_not_the_logger_folder(tmp_path):
    from guided_diffusion import logger
    from guided_diffusion.ppap.experts import ExpertRanges
    from guided_diffusion.ppap.training import NoisyClassifierTrainer
    from guided_diffusion.script_util import create_gaussian_diffusion

    def data(start):
        g = torch.Generator().manual_seed(start)
        while True:
            yield torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, {"y": torch.randint(0, 10, (4,), generator=g)}

    logger.configure(str(tmp_path / "log"), format_strs=["log"])
    diffusion = create_gaussian_diffusion(steps=100)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10))
    t_range = ExpertRanges(2, 100).training_ranges[1]
    trainer = NoisyClassifierTrainer(model=model, diffusion=diffusion, t_range=t_range,
                                     expert=1, n_experts=2, state_fn=model.state_dict, data=data,
                                     batch_size=4, max_steps=2, save_interval=1, progress=False,
                                     save_dir=str(tmp_path / "ckpt"))
    trainer.run_loop()
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["1_iteration1_max2.ckpt", "1_iteration2_max2.ckpt"]
    assert sorted(os.listdir(tmp_path / "log")) == ["log.txt"]
    logger.configure(str(tmp_path / "other"), format_strs=[])  # detach from tmp_path


def test_keep_checkpoints_prunes_each_experts_intermediate_files(tmp_path):
    """With keep_checkpoints 2, an expert keeps its 2 newest {i}_iteration{step}_max{n}.ckpt; other experts'
    files, later steps (another run's) and the final {i}_max{n}.ckpt are left alone."""
    from types import SimpleNamespace

    from guided_diffusion.ppap.training import _ExpertTrainer

    names = [f"1_iteration{s}_max5.ckpt" for s in (10, 20, 30, 40, 50)] + ["0_iteration10_max5.ckpt",
                                                                          "1_max5.ckpt", "1_iteration10_max3.ckpt"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    trainer = SimpleNamespace(expert=1, n_experts=5, save_dir=str(tmp_path), total_steps=40, keep_checkpoints=2)
    _ExpertTrainer._prune_expert_files(trainer)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["1_iteration30_max5.ckpt", "1_iteration40_max5.ckpt", "1_iteration50_max5.ckpt",
                           "0_iteration10_max5.ckpt", "1_max5.ckpt", "1_iteration10_max3.ckpt"])
