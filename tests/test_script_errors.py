"""Bad input to the scripts: one clear message, exit status 2, and no run folder or partial file left."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from guided_diffusion.cli import run_cli
from script_runs import TINY_MODEL, TINY_TRAIN, import_script

image_train = import_script("image_train")
image_sample = import_script("image_sample")


def fails(capsys, main, argv, *words) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cli(main, [str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    for w in words:
        assert w in err, err
    return err


def png(path, size=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 10, 10)).save(path)


def train_argv(tmp_path, data_dir, *extra):
    argv = TINY_TRAIN + ["--max_steps", 2, "--log_path", tmp_path / "run", "--data_dir", data_dir]
    return argv + list(extra)


def test_missing_data_dir(tmp_path, capsys):
    fails(capsys, image_train.main, train_argv(tmp_path, tmp_path / "nowhere"), "does not exist", "--data_dir")
    assert not (tmp_path / "run").exists()


def test_no_data_dir_flag(tmp_path, capsys):
    argv = [a for a in train_argv(tmp_path, "x") if a not in ("--data_dir", "builtin:digits", "x")]
    fails(capsys, image_train.main, argv, "--data_dir is required")


def test_empty_data_dir(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    fails(capsys, image_train.main, train_argv(tmp_path, tmp_path / "empty"), "no image files")
    assert not (tmp_path / "run").exists()


def test_non_image_file_is_named(tmp_path, capsys):
    png(tmp_path / "data" / "a_1.png")
    (tmp_path / "data" / "notes.txt").write_text("hello")
    fails(capsys, image_train.main, train_argv(tmp_path, tmp_path / "data"), "notes.txt", "not images",
          "move them out")
    assert not (tmp_path / "run").exists()


def test_undecodable_image_is_named(tmp_path, capsys):
    png(tmp_path / "data" / "a_1.png")
    (tmp_path / "data" / "b_2.png").write_bytes(b"not a png at all")
    fails(capsys, image_train.main, train_argv(tmp_path, tmp_path / "data"), "b_2.png")
    assert not (tmp_path / "run").exists()


def test_image_smaller_than_image_size(tmp_path, capsys):
    png(tmp_path / "data" / "a_1.png", (16, 16))
    png(tmp_path / "data" / "b_1.png", (6, 9))
    fails(capsys, image_train.main, train_argv(tmp_path, tmp_path / "data"), "b_1.png", "6x9", "--image_size",
          "--allow_upscale True")
    assert not (tmp_path / "run").exists()


def test_resume_checkpoint_that_does_not_exist(tmp_path, capsys):
    argv = train_argv(tmp_path, "builtin:digits", "--resume_checkpoint", tmp_path / "model000100.pt")
    fails(capsys, image_train.main, argv, "model000100.pt", "does not exist", "--resume_checkpoint")
    assert not (tmp_path / "run").exists()


def tiny_state_dict(num_channels: int) -> dict:
    """Random weights of TINY_MODEL's UNet, with ``num_channels`` channels."""
    from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
    flags = model_and_diffusion_defaults()
    flags.update(image_size=8, num_channels=num_channels, num_res_blocks=1, channel_mult="1,2",
                 attention_resolutions="4", num_head_channels=16, diffusion_steps=100)
    return create_model_and_diffusion(**flags)[0].state_dict()


def test_resume_checkpoint_that_does_not_match_the_flags(tmp_path, capsys):
    ckpt = tmp_path / "old" / "model000010.pt"
    ckpt.parent.mkdir()
    torch.save(tiny_state_dict(64), ckpt)  # no flags.json beside it: the typed flags (32 channels) are used
    before = sorted(p.name for p in ckpt.parent.iterdir())
    fails(capsys, image_train.main, train_argv(tmp_path, "builtin:digits", "--resume_checkpoint", ckpt),
          "num_channels", "64")
    assert not (tmp_path / "run").exists()
    assert sorted(p.name for p in ckpt.parent.iterdir()) == before


@pytest.mark.parametrize("content", [b"", b"<html>not found</html>"])
def test_sample_from_a_file_that_is_no_checkpoint(tmp_path, capsys, content):
    (tmp_path / "model.pt").write_bytes(content)
    err = fails(capsys, image_sample.main, TINY_MODEL + ["--model_path", tmp_path / "model.pt", "--log_path",
                                                        tmp_path / "s"], "model.pt", "--model_path")
    assert "could run code" not in err
    assert not (tmp_path / "s").exists()


def test_sample_from_nan_weights_stops_before_writing_images(tmp_path, capsys):
    state = tiny_state_dict(32)
    state["out.2.weight"] = torch.full_like(state["out.2.weight"], float("nan"))
    torch.save(state, tmp_path / "model.pt")
    argv = TINY_MODEL + ["--model_path", tmp_path / "model.pt", "--num_samples", 4, "--batch_size", 4,
                         "--timestep_respacing", "5", "--progress", "False", "--log_path", tmp_path / "s"]
    fails(capsys, image_sample.main, argv, "non-finite", "NaN or inf weights", "seeds 0..3")
    assert not list((tmp_path / "s").glob("*.npz")) and not list((tmp_path / "s").glob("*.png"))


def test_sample_without_model_path(tmp_path, capsys):
    fails(capsys, image_sample.main, TINY_MODEL + ["--log_path", tmp_path / "s"], "--model_path is required")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("script", ["image_train", "image_sample", "classifier_train", "classifier_sample",
                                    "generate_dataset"])
def test_every_script_takes_gpus_as_a_list_or_comma_separated(script):
    """PPAP's command lines write --gpus 0 1 2 3 (nargs "+"); ADM-style 0,1,2,3 means the same."""
    from guided_diffusion.dist_util import parse_gpus
    parser = import_script(script).create_argparser()
    for argv in (["--gpus", "0", "1", "2", "3"], ["--gpus", "0,1,2,3"], ["--gpus", "0,1", "2", "3"]):
        args = parser.parse_args(argv + ["--batch_size", "3"])
        assert parse_gpus(args.gpus) == [0, 1, 2, 3] and args.batch_size == 3, argv
    assert parse_gpus(parser.parse_args([]).gpus) is None


def test_gpus_as_a_list_reach_setup(tmp_path, capsys):
    # The list passes parsing and process-group setup; the run then stops at the next missing input.
    fails(capsys, image_sample.main, TINY_MODEL + ["--gpus", 0, 1, "--log_path", tmp_path / "s"],
          "--model_path is required")
    fails(capsys, image_sample.main, TINY_MODEL + ["--gpus", "0", "x", "--log_path", tmp_path / "s"],
          "--gpus takes GPU ids", "'x'")
    assert not (tmp_path / "s").exists()


def test_folder_training_with_folder_labels_and_resume_from_the_folder(tmp_path):
    """PPAP's layout (class = parent folder), class-conditional; then resume by naming the run folder."""
    for cls, colour in (("cat", (250, 0, 0)), ("dog", (0, 0, 250))):
        for i in range(3):
            path = tmp_path / "data" / cls / f"img{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (12, 10), colour).save(path)
    run = tmp_path / "run"
    argv = [a for a in TINY_TRAIN if a not in ("--data_dir", "builtin:digits")]
    argv += ["--data_dir", tmp_path / "data", "--label_from", "folder", "--class_cond", "True",
             "--num_classes", 2, "--save_interval", 2, "--log_interval", 3, "--log_path", run]
    run_cli(image_train.main, [str(a) for a in argv + ["--max_steps", 2]])
    state = torch.load(run / "model000002.pt", weights_only=True)
    assert state["label_emb.weight"].shape[0] == 2
    run_cli(image_train.main, [str(a) for a in argv + ["--max_steps", 4, "--resume_checkpoint", run]])
    assert torch.load(run / "train_state000004.pt", weights_only=True)["step"] == 4
    with open(run / "progress.csv") as f:
        steps = [line.split(",") for line in f.read().splitlines()]
    col = steps[0].index("step")
    assert [int(r[col]) for r in steps[1:]] == [2, 3, 4]  # the end of each run flushes its last interval
