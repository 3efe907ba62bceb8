"""The evaluation scripts end to end with the seeded tiny feature network (no weights, no network)."""

from __future__ import annotations

import importlib.util
import json
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from guided_diffusion.cli import run_cli
from guided_diffusion.metrics.evaluate import evaluate, make_reference
from guided_diffusion.metrics.image_batches import NpzBatch
from guided_diffusion.metrics.inception import load_feature_net
from guided_diffusion.sample_writer import run_seeded_sampling, write_npz
from script_runs import REPO, run_script


def _load(name):
    spec = importlib.util.spec_from_file_location(f"eval_{name}", REPO / "evaluations" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


evaluator, fid_cli, class_acc_cli = _load("evaluator"), _load("fid"), _load("class_accuracy")


def images(n, seed=0, size=16):
    """Smooth random images (blobs), so that features vary in a structured way."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 4, 4, 3))
    up = np.kron(base, np.ones((1, size // 4, size // 4, 1)))
    return np.clip(127.5 + 60 * up + rng.normal(0, 8, up.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def net():
    return load_feature_net("tiny-random", None)


@pytest.fixture(scope="module")
def batches(tmp_path_factory):
    d = tmp_path_factory.mktemp("batches")
    pool = images(200)
    ours = run_seeded_sampling(  # the sampling scripts' writer: shards, then the assembled npz
        lambda seeds: (pool[seeds], np.asarray(seeds) % 10), seeds=range(200), batch_size=64,
        out_dir=str(d / "sampled"), image_shape=(16, 16), identity={}, progress=False)
    by_hand = d / "by_hand.npz"
    np.savez(by_hand, images(200))  # ADM's positional arr_0, made with NumPy alone
    compressed = d / "compressed.npz"
    np.savez_compressed(compressed, arr_0=images(200))
    other = d / "other.npz"
    np.savez(other, images(300, seed=1))
    return {"ours": ours, "by_hand": by_hand, "compressed": compressed, "other": other, "dir": d}


def test_streamed_reading_equals_np_load(batches):
    for key in ("ours", "compressed"):
        streamed = np.concatenate(list(NpzBatch(str(batches[key])).iter_images(64)))
        np.testing.assert_array_equal(streamed, np.load(batches[key])["arr_0"])


def test_a_batch_against_itself_scores_zero_and_full_coverage(batches, net):
    res = evaluate(str(batches["by_hand"]), str(batches["ours"]), net, progress=False)
    assert abs(res["fid"]) < 1e-6 and abs(res["sfid"]) < 1e-6
    assert res["precision"] == 1.0 and res["recall"] == 1.0
    assert res["num_samples"] == 200 and res["feature_net"] == net.name


def test_stored_reference_statistics_are_used_and_agree(batches, net):
    ref = batches["dir"] / "ref.npz"
    arrays = make_reference(str(batches["other"]), str(ref), net, num_pr_images=100, progress=False)
    assert arrays["arr_0"].shape == (100, 16, 16, 3) and arrays["mu"].shape == (net.pool_dim,)
    assert arrays["sigma_s"].shape == (net.spatial_dim, net.spatial_dim)
    from_stats = evaluate(str(ref), str(batches["ours"]), net, progress=False)
    from_images = evaluate(str(batches["other"]), str(batches["ours"]), net, progress=False)
    # FID/sFID from the stored full-set statistics equal those recomputed from all 300 images.
    assert from_stats["fid"] == pytest.approx(from_images["fid"], rel=1e-6)
    assert from_stats["sfid"] == pytest.approx(from_images["sfid"], rel=1e-6)
    assert from_stats["num_reference_images"] == 100  # only arr_0 serves precision/recall


def _bad_statistics(kind: str, dim: int):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(dim, 3 * dim))
    sigma = a @ a.T / (3 * dim)
    if kind == "asymmetric":
        sigma[0, 1] += 0.5
    elif kind == "negative":
        sigma -= 2 * np.eye(dim) * np.linalg.eigvalsh(sigma)[-1]
    elif kind == "nan":
        sigma[2, 2] = np.nan
    return {"mu": np.zeros(dim), "sigma": sigma}


@pytest.mark.parametrize("kind,words", [("asymmetric", "not symmetric"), ("negative", "negative eigenvalue"),
                                        ("nan", "non-finite")])
def test_reference_statistics_that_cannot_be_are_refused_by_both_scripts(batches, net, tmp_path, capsys, kind,
                                                                         words):
    ref = tmp_path / f"{kind}.npz"
    np.savez(ref, **_bad_statistics(kind, net.pool_dim))
    out = tmp_path / "res.json"
    runs = [(evaluator.main, [str(ref), str(batches["ours"]), "--feature_net", "tiny-random", "--out", str(out),
                              "--progress", "false"]),
            (fid_cli.main, ["calc", "--images", str(batches["ours"]), "--ref", str(ref), "--num", "50",
                               "--feature_net", "tiny-random"])]
    for main, argv in runs:
        with pytest.raises(SystemExit) as exc:
            run_cli(main, argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and str(ref) in err and words in err and "rebuild" in err, err
    assert not out.exists()


def test_fid_grows_with_corruption(batches, net, tmp_path):
    clean = np.load(batches["by_hand"])["arr_0"]
    fids = []
    for sigma in (0, 20, 60):
        noisy = np.clip(clean + np.random.default_rng(0).normal(0, sigma, clean.shape), 0, 255).astype(np.uint8)
        write_npz(str(tmp_path / f"n{sigma}.npz"), noisy)
        fids.append(evaluate(str(batches["by_hand"]), str(tmp_path / f"n{sigma}.npz"), net, progress=False)["fid"])
    assert fids[0] < 1e-6 < fids[1] < fids[2]


def test_evaluator_cli_prints_adm_lines_and_json(batches, tmp_path, capsys):
    out = tmp_path / "res.json"
    evaluator.main([str(batches["other"]), str(batches["ours"]), "--feature_net", "tiny-random", "--out", str(out),
                    "--progress", "false"])
    text = capsys.readouterr().out
    for line in ("Inception Score: ", "FID: ", "sFID: ", "Precision: ", "Recall: "):
        assert line in text
    res = json.loads(out.read_text())
    assert f"FID: {res['fid']}" in text and res["num_samples"] == 200


def test_evaluator_takes_ppaps_named_flags_and_writes_its_yaml(batches, tmp_path, capsys):
    """PPAP's README: --ref_batch X --sample_batch Y --save_result_path Z writes YAML to Z.csv with the keys of
    PPAP's evaluator; the numbers are those of the positional form."""
    import yaml
    common = ["--feature_net", "tiny-random", "--progress", "false"]
    evaluator.main([str(batches["other"]), str(batches["ours"]), "--out", str(tmp_path / "pos.json"), *common])
    named = tmp_path / "results" / "ppap_run"
    evaluator.main(["--ref_batch", str(batches["other"]), "--sample_batch", str(batches["ours"]),
                    "--save_result_path", str(named), *common])
    assert f"results written to {named}.csv" in capsys.readouterr().out
    assert not named.exists() and sorted(p.name for p in named.parent.iterdir()) == ["ppap_run.csv"]
    saved = yaml.safe_load((tmp_path / "results" / "ppap_run.csv").read_text())
    assert set(saved) == {"name", "ref_batch", "sample_batch", "inception_score", "fid", "precision", "recall"}
    assert saved["name"] == str(named) and saved["sample_batch"] == str(batches["ours"])
    expected = json.loads((tmp_path / "pos.json").read_text())
    for key in ("inception_score", "fid", "precision", "recall"):
        assert saved[key] == pytest.approx(expected[key], rel=1e-12), key
    with pytest.raises(SystemExit) as exc:  # the same batch given twice, differently
        run_cli(evaluator.main, [str(batches["other"]), str(batches["ours"]), "--ref_batch", str(batches["ours"]),
                                 *common])
    assert exc.value.code == 2 and "given twice" in capsys.readouterr().err


@pytest.mark.parametrize("make,words", [
    (lambda p: np.savez(p, images(4).astype(np.float32) / 127.5 - 1), ["float32", "uint8", "127.5"]),
    (lambda p: np.savez(p, images(4).transpose(0, 3, 1, 2)), ["(N, H, W, 3)", "transpose"]),
    (lambda p: np.savez(p, images(4).astype(np.int64) * 4), ["outside 0..255"]),
    (lambda p: np.savez(p, samples=images(4)), ["arr_0"]),
    (lambda p: p.write_bytes(b"not a zip"), ["not an npz"]),
])
def test_bad_batches_are_refused_by_name(tmp_path, batches, capsys, make, words):
    bad = tmp_path / "bad.npz"
    make(bad)
    with pytest.raises(SystemExit) as exc:
        run_cli(evaluator.main, [str(batches["other"]), str(bad), "--feature_net", "tiny-random",
                                 "--progress", "false"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    for w in words:
        assert w in err, err


def test_missing_inception_weights_name_the_file(batches, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("GD_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SystemExit):
        run_cli(evaluator.main, [str(batches["other"]), str(batches["ours"])])
    err = capsys.readouterr().err
    assert "pt_inception-2015-12-05-6726825d.pth" in err and "--inception_weights" in err


@pytest.mark.slow
def test_fid_cli_on_folders_and_zips_and_two_ranks(tmp_path, batches):
    folder, zpath = tmp_path / "imgs", tmp_path / "imgs.zip"
    folder.mkdir()
    with zipfile.ZipFile(zpath, "w") as z:
        for i, img in enumerate(images(40, seed=3)):
            Image.fromarray(img).save(folder / f"{i:05d}.png")
            z.write(folder / f"{i:05d}.png", f"sub/{i:05d}.png")
    tiny = ["--feature_net", "tiny-random", "--progress", "false", "--batch", 8]
    run_script("../evaluations/fid.py", ["ref", "--data", batches["other"], "--dest", tmp_path / "stats.npz"] + tiny)
    with np.load(tmp_path / "stats.npz") as s:
        assert set(s.files) == {"mu", "sigma"}
    one = run_script("../evaluations/fid.py", ["calc", "--images", folder, "--ref", tmp_path / "stats.npz",
                                                "--num", 40] + tiny)
    two = run_script("../evaluations/fid.py", ["calc", "--images", zpath, "--ref", tmp_path / "stats.npz",
                                                "--num_images", 40] + tiny, kind="torchrun", nproc=2)
    fid1, fid2 = float(one.stdout.split()[-1]), float(two.stdout.split()[-1])
    assert fid1 > 0 and fid2 == pytest.approx(fid1, rel=1e-5)
    short = run_script("../evaluations/fid.py", ["calc", "--images", folder, "--ref", tmp_path / "stats.npz",
                                                  "--num", 50] + tiny, check=False)
    assert short.returncode == 2 and "fewer than --num 50" in short.stderr


def test_class_accuracy_of_samples(tmp_path, capsys):
    from guided_diffusion.script_util import classifier_defaults, create_classifier
    from guided_diffusion.train import write_json
    flags = classifier_defaults()
    flags.update(image_size=16, classifier_width=32, classifier_depth=1, classifier_channel_mult="1,2,2",
                 classifier_attention_resolutions="8", classifier_num_head_channels=32, classifier_num_classes=10)
    torch.manual_seed(0)
    clf = create_classifier(**flags).eval()
    for p in clf.out.parameters():  # ADM zero-initialises the head; any non-constant prediction will do
        torch.nn.init.normal_(p, std=0.5)
    (tmp_path / "clf").mkdir()
    torch.save(clf.state_dict(), tmp_path / "clf" / "model000001.pt")
    write_json(flags, str(tmp_path / "clf" / "flags.json"))
    imgs = images(32, seed=5)
    with torch.no_grad():
        x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 127.5 - 1
        pred = clf(x, torch.zeros(32, dtype=torch.long)).argmax(-1).numpy()
    wrong = (pred + 1) % 10
    labels = np.where(np.arange(32) < 24, pred, wrong)  # 24 of 32 right: top-1 = 0.75
    write_npz(str(tmp_path / "s.npz"), imgs, labels)
    class_acc_cli.main([str(tmp_path / "s.npz"), "--classifier_path", str(tmp_path / "clf" / "model000001.pt"),
                        "--out", str(tmp_path / "acc.json")])
    res = json.loads((tmp_path / "acc.json").read_text())
    assert res["top1"] == 0.75 and res["top5"] >= 0.75
    assert "Top-1 accuracy: 0.75" in capsys.readouterr().out
    write_npz(str(tmp_path / "nolabels.npz"), imgs)
    with pytest.raises(SystemExit):
        run_cli(class_acc_cli.main, [str(tmp_path / "nolabels.npz"), "--classifier_path",
                                     str(tmp_path / "clf" / "model000001.pt")])
    assert "arr_1" in capsys.readouterr().err
    for name, bad, words in [("negative", np.where(np.arange(32) == 3, -1, labels), "not classes of this classifier"),
                             ("beyond", labels + 10, "it has 10: 0..9"),
                             ("float", labels + 0.5, "not class indices")]:
        np.savez(tmp_path / f"{name}.npz", imgs, bad)  # arr_1 as given (write_npz would cast it)
        with pytest.raises(SystemExit) as exc:
            run_cli(class_acc_cli.main, [str(tmp_path / f"{name}.npz"), "--classifier_path",
                                         str(tmp_path / "clf" / "model000001.pt"), "--out", str(tmp_path / "x.json")])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"{name}.npz" in err and words in err, err
        assert not (tmp_path / "x.json").exists()


def test_clip_score_from_a_local_tiny_open_clip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    from guided_diffusion.metrics.clip_score import clip_score, load_open_clip
    cfg = {"embed_dim": 32, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "tiny-clip-test.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(str(tmp_path / "cfg"))
    torch.manual_seed(0)
    ref_model = open_clip.create_model("tiny-clip-test", pretrained=None)
    torch.save(ref_model.state_dict(), tmp_path / "tiny.pt")
    model, tok = load_open_clip("tiny-clip-test", str(tmp_path / "tiny.pt"))
    imgs, texts = images(3, size=32), ["a red cat", "a digit seven", "noise"]
    res = clip_score(model, tok, imgs, texts)
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255  # 32px already: no resize, only normalise
    mean = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = torch.nn.functional.cosine_similarity(ref_model.encode_image((x - mean) / std),
                                                         ref_model.encode_text(tok(texts)), dim=-1)
    np.testing.assert_allclose(res["cosines"], expected.double().numpy(), atol=1e-5)
    assert res["clip_score"] == pytest.approx(100 * expected.clamp(min=0).mean().item(), abs=1e-3)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_open_clip("tiny-clip-test", str(tmp_path / "missing.pt"))
