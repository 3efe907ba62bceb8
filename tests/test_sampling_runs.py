"""Seeded, sharded, resumable sampling runs (one process; the 2-rank case is in test_distributed_runs)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from guided_diffusion.adm.sampling import adm_batch_sampler
from guided_diffusion.sample_writer import image_grid, run_seeded_sampling, to_uint8
from guided_diffusion.script_util import create_model_and_diffusion, model_and_diffusion_defaults
from guided_diffusion.seeded import StackedRandomGenerator, parse_seeds


@pytest.fixture(scope="module")
def sampler():
    flags = model_and_diffusion_defaults()
    flags.update(image_size=8, num_channels=32, num_res_blocks=1, channel_mult="1,2", attention_resolutions="4",
                 num_head_channels=16, diffusion_steps=100, timestep_respacing="10", class_cond=True,
                 num_classes=10)
    torch.manual_seed(1)
    model, diffusion = create_model_and_diffusion(**flags)
    with torch.no_grad():
        for p in model.out.parameters():
            p.normal_(0, 0.05)
    return adm_batch_sampler(model.eval(), diffusion, image_size=8, num_classes=10, class_cond=True)


def test_parse_seeds():
    assert parse_seeds("0-3,10") == [0, 1, 2, 3, 10]
    assert parse_seeds(7) == [7]
    with pytest.raises(ValueError, match="0-49999"):
        parse_seeds("a-b")


def test_stacked_generator_rows_depend_only_on_their_seed():
    a = StackedRandomGenerator("cpu", [5, 6, 7]).randn((3, 2, 4))
    b = StackedRandomGenerator("cpu", [7, 5]).randn((2, 2, 4))
    torch.testing.assert_close(a[2], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[0], b[1], rtol=0, atol=0)
    assert not torch.equal(a[0], a[1])
    with pytest.raises(ValueError, match="number of seeds"):
        StackedRandomGenerator("cpu", [1]).randn((2, 3))


def test_uint8_conversion_truncates_like_adm():
    x = torch.tensor([-1.0, -0.999, 0.0, 0.999, 1.0, 1.5]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    assert to_uint8(x)[0, 0, :, 0].tolist() == [0, 0, 127, 254, 255, 255]


def test_grid_layout():
    imgs = np.stack([np.full((2, 2, 3), i, np.uint8) for i in range(1, 6)])
    g = image_grid(imgs, nrow=3, pad=1)
    assert g.shape == (2 * 3 + 1, 3 * 3 + 1, 3)
    assert g[1, 1, 0] == 1 and g[1, 4, 0] == 2 and g[4, 1, 0] == 4 and g[4, 7, 0] == 0  # 6th cell empty


def test_interrupted_sampling_resumes_to_the_same_npz(tmp_path, sampler):
    seeds = list(range(10))
    ident = {"model": "tiny"}
    full = run_seeded_sampling(sampler, seeds=seeds, batch_size=4, out_dir=str(tmp_path / "full"),
                               image_shape=(8, 8), identity=ident, progress=False)

    calls = []

    def interrupted(chunk):
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C (or a lost node) after two batches
        calls.append(list(chunk))
        return sampler(chunk)

    out = str(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        run_seeded_sampling(interrupted, seeds=seeds, batch_size=4, out_dir=out, image_shape=(8, 8),
                            identity=ident, progress=False)
    assert not (tmp_path / "resumed" / "samples_10x8x8x3.npz").exists()
    resumed_calls = []

    def counting(chunk):
        resumed_calls.append(list(chunk))
        return sampler(chunk)

    # The restart may even use another batch size: shards are found by seed.
    path = run_seeded_sampling(counting, seeds=seeds, batch_size=3, out_dir=out, image_shape=(8, 8),
                               identity=ident, progress=False)
    assert resumed_calls == [[8, 9]]
    a, b = np.load(full), np.load(path)
    np.testing.assert_array_equal(a["arr_0"], b["arr_0"])
    np.testing.assert_array_equal(a["arr_1"], b["arr_1"])
    assert not (tmp_path / "resumed" / "shards").exists()
    assert (tmp_path / "resumed" / "samples_10x8x8x3_grid.png").is_file()
    # Run again: the npz is there, nothing is sampled.
    run_seeded_sampling(counting, seeds=seeds, batch_size=3, out_dir=out, image_shape=(8, 8), identity=ident,
                        progress=False)
    assert resumed_calls == [[8, 9]]


def test_shards_of_other_flags_are_refused(tmp_path, sampler):
    def stop_after_one(chunk):
        if chunk != [0]:
            raise KeyboardInterrupt
        return sampler(chunk)

    with pytest.raises(KeyboardInterrupt):
        run_seeded_sampling(stop_after_one, seeds=[0, 1], batch_size=1, out_dir=str(tmp_path), image_shape=(8, 8),
                            identity={"classifier_scale": 1.0}, progress=False)
    with pytest.raises(ValueError, match="classifier_scale"):
        run_seeded_sampling(sampler, seeds=[0, 1], batch_size=1, out_dir=str(tmp_path), image_shape=(8, 8),
                            identity={"classifier_scale": 2.0}, progress=False)
    final = run_seeded_sampling(sampler, seeds=[0, 1], batch_size=1, out_dir=str(tmp_path), image_shape=(8, 8),
                                identity={"classifier_scale": 1.0}, progress=False)
    assert np.load(final)["arr_0"].shape == (2, 8, 8, 3)


def test_a_run_that_failed_before_its_first_batch_does_not_block_the_corrected_command(tmp_path, sampler):
    def fail(chunk):
        raise ValueError("bad flag")

    with pytest.raises(ValueError, match="bad flag"):
        run_seeded_sampling(fail, seeds=[0, 1], batch_size=1, out_dir=str(tmp_path), image_shape=(8, 8),
                            identity={"classifier_scale": float("nan")}, progress=False)
    final = run_seeded_sampling(sampler, seeds=[0, 1], batch_size=1, out_dir=str(tmp_path), image_shape=(8, 8),
                                identity={"classifier_scale": 2.0}, progress=False)
    assert np.load(final)["arr_0"].shape == (2, 8, 8, 3)


def test_repeated_seeds_are_refused(tmp_path, sampler):
    with pytest.raises(ValueError, match="repeats"):
        run_seeded_sampling(sampler, seeds=[1, 1], batch_size=2, out_dir=str(tmp_path), image_shape=(8, 8),
                            identity={}, progress=False)
