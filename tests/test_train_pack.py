"""Training packs (`sam3d pack`) and the trainer's device / resume options, on a small fake data set
in the engine's file format (no Blender needed)."""

import json

import numpy as np
import pytest

from sam3d_addon.data.occupancy import pack_occupancy
from sam3d_addon.errors import InputError
from sam3d_addon.train.data import POINT_KEYS, TrainingData, load_split, nearest_rows
from sam3d_addon.train.pack import load_pack_split, make_pack

RES = 64


def _fake_sample(rng, index):
    rgb = rng.integers(0, 256, (RES, RES, 3), dtype=np.uint8)
    rgb = (rgb // 16 + 96 + np.arange(RES)[:, None, None]).astype(np.uint8)  # smooth, like a photo
    mask = np.zeros((RES, RES), bool)
    x0, y0 = rng.integers(4, 24, 2)
    mask[y0:y0 + 20, x0:x0 + 28] = True
    pointmap = np.full((RES, RES, 3), np.nan, np.float32)
    pointmap[mask] = rng.normal(size=(int(mask.sum()), 3)).astype(np.float32) + [0, 0, 3]
    occ = rng.random((32, 32, 32)) < 0.2
    packed, shape = pack_occupancy(occ)
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]], np.float32)
    return dict(rgb=rgb, mask=mask, amodal_mask=mask, pointmap=pointmap, depth=pointmap[..., 2],
                occupancy=packed, occupancy_shape=shape, rotation=rot,
                translation=np.array([0.1, -0.2, 2.0 + index * 0.01], np.float32),
                scale=np.full(3, 0.5 + 0.01 * index, np.float32), fov_deg=np.float32(50.0),
                category=np.array("box"), seed=np.int64(index), occluded=np.bool_(False))


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_data")
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 3)):
        (root / split).mkdir()
        for i in range(n):
            np.savez_compressed(root / split / f"{i:06d}.npz", **_fake_sample(rng, i))
    (root / "meta.json").write_text(json.dumps({"format": "sam3d-blender/data", "n_train": 10, "n_test": 3, "seed": 7}))
    return root


def test_pack_round_trip_is_exact_but_for_the_jpeg_photos(fake_data, tmp_path):
    info = make_pack(fake_data, tmp_path / "pack", input_size=84, point_size=16, quality=95, chunk_size=4)
    assert [c["n"] for c in info["chunks"]] == [4, 4, 2, 3] and info["data_meta"]["seed"] == 7
    for split in ("train", "test"):
        raw = load_split(fake_data, split, 84, point_size=16)
        packed = load_pack_split(tmp_path / "pack", split, 84, 16)
        assert len(packed) == len(raw)
        for k in ("mask", "rgb_image_mask"):
            np.testing.assert_array_equal(packed.images[k], raw.images[k])
        for k in POINT_KEYS:
            np.testing.assert_array_equal(packed.points[k], raw.points[k])
        np.testing.assert_array_equal(packed.occupancy, raw.occupancy)
        for k in ("rotation", "translation", "scale"):
            np.testing.assert_array_equal(getattr(packed, k), getattr(raw, k))
        for k in ("image", "rgb_image"):
            err = np.abs(packed.images[k].astype(int) - raw.images[k].astype(int))
            assert err.mean() < 3.0, (k, err.mean())
    # A missing train chunk (moved in parts) is skipped; limit counts samples.
    (tmp_path / "pack" / "train-001.npz").unlink()
    assert len(load_pack_split(tmp_path / "pack", "train", 84, 16)) == 6
    assert len(load_pack_split(tmp_path / "pack", "train", 84, 16, limit=3)) == 3
    with pytest.raises(InputError, match="packed for input 84"):
        load_pack_split(tmp_path / "pack", "train", 112, 16)
    assert TrainingData(tmp_path / "pack").fov_deg() == 50.0



def _fake_data_set(root, seed, n_train, fov=50.0):
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    for i in range(n_train):
        sample = _fake_sample(rng, i)
        sample["fov_deg"] = np.float32(fov)
        np.savez_compressed(root / "train" / f"{i:06d}.npz", **sample)
    (root / "meta.json").write_text(json.dumps({"format": "sam3d-blender/data", "n_train": n_train, "n_test": 0,
                                                "seed": seed}))
    return root


def test_several_data_sets_are_read_in_order_as_one(fake_data, tmp_path):
    """`train --data A --data B`: a pack and a directory read as one set, in order; the limit counts
    across them; the meta sums the counts and lists the seeds; a repeated set or another camera is
    refused in one line."""
    make_pack(fake_data, tmp_path / "pack", input_size=84, point_size=16, quality=95, chunk_size=4)
    other = _fake_data_set(tmp_path / "other", seed=8, n_train=4)
    data = TrainingData([tmp_path / "pack", other])
    both = data.load("train", 84, 16)
    first = load_pack_split(tmp_path / "pack", "train", 84, 16)
    second = load_split(other, "train", 84, point_size=16)
    assert len(both) == 14 and both.paths == first.paths + second.paths
    np.testing.assert_array_equal(both.occupancy, np.concatenate([first.occupancy, second.occupancy]))
    np.testing.assert_array_equal(both.images["image"][10:], second.images["image"])
    np.testing.assert_array_equal(both.translation[:10], first.translation)
    assert len(data.load("train", 84, 16, limit=12)) == 12 and len(data.load("train", 84, 16, limit=7)) == 7
    assert len(data.load("test", 84, 16)) == 3  # only the first set has a test split
    assert data.meta["n_train"] == 14 and data.meta["seed"] == [7, 8]
    assert data.source() == f"{fake_data} + {other}" and data.fov_deg() == 50.0
    with pytest.raises(InputError, match="twice"):
        TrainingData([other, tmp_path / "other"])
    with pytest.raises(InputError, match="different fields of view"):
        TrainingData([other, _fake_data_set(tmp_path / "wide", seed=9, n_train=2, fov=65.0)])
    with pytest.raises(InputError, match="no train/ split"):
        TrainingData([other, tmp_path / "missing"])

def test_points_at_the_embedders_pixels_give_the_same_condition_tokens(fake_data):
    """Point maps stored at 16 px (the pixels the point embedder's nearest resize reads) give the
    condition encoder exactly the input the full 84 px map gives."""
    torch = pytest.importorskip("torch")
    from sam3d_addon.nn.bundle import build_models
    from sam3d_addon.nn.condition import nearest_indices

    assert nearest_rows(84, 16).tolist() == nearest_indices(84, 16).tolist()
    full = load_split(fake_data, "train", 84, limit=2)
    small = load_split(fake_data, "train", 84, limit=2, point_size=16)
    torch.manual_seed(0)
    encoder = build_models("tiny").condition_encoder.eval()

    def tokens(arrays):
        inputs = {k: torch.from_numpy(v.astype(np.float32) / 255.0) for k, v in arrays.images.items()}
        inputs.update({k: torch.from_numpy(v.astype(np.float32)) for k, v in arrays.points.items()})
        with torch.no_grad():
            return encoder(**inputs)

    assert small.points["pointmap"].shape[-1] == 16 and np.isfinite(small.points["pointmap"]).any()
    assert torch.equal(tokens(full), tokens(small))


def test_train_from_a_pack_pauses_resumes_and_records_overrides(fake_data, tmp_path, capsys):
    pytest.importorskip("torch")
    from sam3d_addon.cli import main
    from sam3d_addon.nn.checkpoint import load_checkpoint

    assert main(["pack", "--data", str(fake_data), "--out", str(tmp_path / "pack")]) == 0
    args = ["train", "--data", str(tmp_path / "pack"), "--out", str(tmp_path / "run"), "--device", "cpu",
            "--steps", "3,2,3,2", "--set", "vae_batch=2", "--set", "encoder_batch=2", "--set", "flow_batch=2",
            "--set", "distill_batch=2", "--set", "p_drop_points=0.5"]
    # A tiny --stop-after stops at the first step: checkpointed, not finished.
    assert main(args + ["--stop-after", "0.0001"]) == 0
    assert "run the same command to resume" in capsys.readouterr().err
    assert (tmp_path / "run" / "state.pt").is_file() and not (tmp_path / "run" / "model.pt").exists()
    assert main(args) == 0
    assert "resuming at stage vae step 1" in capsys.readouterr().err
    _, checkpoint = load_checkpoint(tmp_path / "run" / "model.pt")
    meta = checkpoint["meta"]
    assert meta["schedule"]["flow_batch"] == 2 and meta["schedule"]["p_drop_points"] == 0.5
    assert meta["device"] == "cpu" and meta["data"] == str(fake_data) and meta["train_samples"] == 10
    assert meta["steps_run"] == {"vae": 3, "encoder": 2, "flow": 3, "distill": 2}
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "paused" for r in log)


@pytest.mark.parametrize("bad, message", [
    (["--set", "flow_batch"], "KEY=VALUE"),
    (["--set", "no_such=1"], "KEY=VALUE"),
    (["--set", "flow_batch=many"], "cannot read"),
    (["--stop-after", "0"], "positive"),
    (["--minutes", "1,2,3"], "takes 4 to 5 numbers"),
    (["--steps", "1,2,3,4,5,6"], "takes 4 to 5 integers"),
    (["--stages", "flow,decoda"], "unknown stage 'decoda'"),
])
def test_train_rejects_bad_options_before_touching_the_output(fake_data, tmp_path, bad, message):
    pytest.importorskip("torch")
    from sam3d_addon.cli import main

    out = tmp_path / "run"
    with pytest.raises(InputError, match=message):
        from sam3d_addon.cli import build_parser
        from sam3d_addon.train.loop import train_main

        train_main(build_parser().parse_args(["train", "--data", str(fake_data), "--out", str(out)] + bad))
    assert not out.exists()
    assert main is not None


def test_mirrored_sample_is_the_mirror_image_of_the_sample():
    """hflip's targets: the occupied cells, reversed along canonical x and placed at the mirrored
    pose, project to the left-right mirror of where the plain cells at the plain pose project."""
    from sam3d_addon.data import camera
    from sam3d_addon.pose import rotation_6d_to_matrix
    from sam3d_addon.train.loop import mirrored_pose

    rng = np.random.default_rng(4)
    occ = rng.random((32, 32, 32)) < 0.05
    centres = (np.argwhere(occ) + 0.5) / 32 - 0.5
    mirrored_centres = (np.argwhere(occ[::-1]) + 0.5) / 32 - 0.5
    R = rotation_6d_to_matrix(rng.normal(size=6))
    t, s = np.array([0.3, -0.1, 3.0]), np.full(3, 0.8)
    Rm, tm = mirrored_pose(R, t)
    np.testing.assert_allclose(Rm @ Rm.T, np.eye(3), atol=1e-9)
    assert np.linalg.det(Rm) == pytest.approx(1.0)
    res = 128
    uv = camera.project(camera.canonical_to_p3d_camera(centres, R, t, s), 50.0, res)
    uv_m = camera.project(camera.canonical_to_p3d_camera(mirrored_centres, Rm, tm, s), 50.0, res)
    # The same set of points, with the column mirrored about the image centre.
    plain = sorted(map(tuple, np.round(np.c_[res - uv[:, 0], uv[:, 1]], 6)))
    mirror = sorted(map(tuple, np.round(uv_m, 6)))
    np.testing.assert_allclose(np.array(plain), np.array(mirror), atol=1e-6)


def _random_arrays(rng, n: int):
    """n random training samples at 8 px (4 px point maps), identity poses."""
    from sam3d_addon.train.data import GeometryArrays

    return GeometryArrays(
        images={k: rng.integers(0, 256, (n, c, 8, 8), dtype=np.uint8)
                for k, c in (("image", 3), ("mask", 1), ("rgb_image", 3), ("rgb_image_mask", 1))},
        points={k: rng.normal(size=(n, 3, 4, 4)).astype(np.float16) for k in POINT_KEYS},
        occupancy=rng.random((n, 32, 32, 32)) < 0.3, rotation=np.stack([np.eye(3)] * n),
        translation=np.zeros((n, 3)), scale=np.ones((n, 3)), paths=[str(i) for i in range(n)])


def test_batches_mirror_images_points_grids_and_targets_together():
    torch = pytest.importorskip("torch")
    from sam3d_addon.train.loop import Batches, Pick

    n = 3
    arrays = _random_arrays(np.random.default_rng(0), n)
    latents, mirrored_latents = np.zeros((n, 4, 2), np.float32), np.ones((n, 4, 2), np.float32)
    pose = {m: np.full((n, d), 2.0, np.float32) for m, d in (("rotation6d", 6), ("translation", 3), ("scale", 3),
                                                             ("translation_scale", 1))}
    mirrored = {m: -v for m, v in pose.items()}
    b = Batches(arrays, latents, pose, seed=0, hflip=0.5, mirrored=(mirrored_latents, mirrored))
    pick = Pick(torch.tensor([0, 1, 2]), torch.tensor([True, False, True]))
    inputs = b.condition_inputs(pick, p_drop_points=0.0)
    img = arrays.images["image"].astype(np.float32) / 255.0
    np.testing.assert_allclose(inputs["image"][0].numpy(), img[0][..., ::-1])
    np.testing.assert_allclose(inputs["image"][1].numpy(), img[1])
    pts = arrays.points["pointmap"].astype(np.float32)
    np.testing.assert_allclose(inputs["pointmap"][2].numpy(), pts[2][..., ::-1] * np.array([-1, 1, 1])[:, None, None])
    occ = b.occupancy(pick)[:, 0].numpy().astype(bool)
    np.testing.assert_array_equal(occ[0], arrays.occupancy[0][::-1])
    np.testing.assert_array_equal(occ[1], arrays.occupancy[1])
    x1 = b.targets(pick)
    assert x1["shape"][:, 0, 0].tolist() == [1.0, 0.0, 1.0]
    assert x1["translation"][:, 0, 0].tolist() == [-2.0, 2.0, -2.0]
    assert Batches(arrays, latents, pose, seed=0).indices(2).flip is None  # hflip off: no mirroring


def test_photometric_jitter_changes_colours_alike_on_both_photos_and_nothing_else():
    torch = pytest.importorskip("torch")
    from sam3d_addon.train.loop import Batches, Pick, photometric_jitter

    rng = np.random.default_rng(1)
    photo = torch.from_numpy(rng.random((4, 3, 8, 8)).astype(np.float32))
    images = {"image": photo, "rgb_image": photo.clone(), "mask": torch.ones(4, 1, 8, 8)}
    assert photometric_jitter(images, 0.0, np.random.default_rng(0)) is images  # off: untouched
    out = photometric_jitter(images, 0.4, np.random.default_rng(0))
    again = photometric_jitter(images, 0.4, np.random.default_rng(0))
    assert torch.equal(out["image"], again["image"])  # seeded
    assert torch.equal(out["image"], out["rgb_image"])  # one photo: one colour change for crop and full
    assert torch.equal(out["mask"], images["mask"])  # masks are not colours
    assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0
    changed = (out["image"] - photo).abs().flatten(1).mean(1)
    assert (changed > 1e-3).all()  # every sample got its own change
    arrays = _random_arrays(rng, 2)
    pick = Pick(torch.tensor([0, 1]))
    plain = Batches(arrays, None, None, seed=0).condition_inputs(pick, p_drop_points=0.0)
    jittered = Batches(arrays, None, None, seed=0, jitter=0.3).condition_inputs(pick, p_drop_points=0.0)
    assert not torch.equal(plain["image"], jittered["image"])
    for k in ("mask", "rgb_image_mask", "pointmap"):
        assert torch.equal(plain[k], jittered[k])


def test_train_init_goes_on_from_a_trained_model_at_the_flow_stage(fake_data, tmp_path, capsys):
    """--init: the VAE, its latent normalisation and the pose statistics are the checkpoint's; the
    flow and distillation stages train on; the card records where it started and counts its steps."""
    pytest.importorskip("torch")
    import torch

    from sam3d_addon.cli import main
    from sam3d_addon.nn.checkpoint import load_checkpoint

    small = ["--device", "cpu", "--set", "vae_batch=2", "--set", "encoder_batch=2", "--set", "flow_batch=2",
             "--set", "distill_batch=2"]
    assert main(["train", "--data", str(fake_data), "--out", str(tmp_path / "a"), "--steps", "2,1,2,1"] + small) == 0
    first = tmp_path / "a" / "model.pt"
    capsys.readouterr()
    # not a checkpoint: a one-line error, no output made
    assert main(["train", "--data", str(fake_data), "--out", str(tmp_path / "bad"), "--init", str(fake_data / "meta.json")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("sam3d: error: Cannot read checkpoint") and error.count("\n") == 1
    assert not (tmp_path / "bad").exists()
    # going on, on the first set and a second one together (`--data` repeated)
    more = _fake_data_set(tmp_path / "more", seed=8, n_train=4)
    assert main(["train", "--data", str(fake_data), "--data", str(more), "--out", str(tmp_path / "b"),
                 "--init", str(first), "--steps", "5,5,3,2"] + small) == 0
    assert "resuming" not in capsys.readouterr().err
    _, a = load_checkpoint(first)
    _, b = load_checkpoint(tmp_path / "b" / "model.pt")
    for name in ("encoder", "decoder"):  # the VAE is not trained again
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name])
    assert any(not torch.equal(a["generator"][k], b["generator"][k]) for k in a["generator"])
    assert b["latent_mean"] == a["latent_mean"] and b["pose_stats"] == a["pose_stats"]
    meta = b["meta"]
    assert meta["train_samples"] == 14 and meta["data"] == f"{fake_data} + {tmp_path / 'more'}"
    assert meta["data_meta"]["seed"] == [7, 8] and meta["data_meta"]["n_train"] == 14
    assert meta["init"]["checkpoint"] == str(first) and meta["init"]["train_samples"] == 10
    assert meta["steps_run"] == {"init_vae": 2, "init_encoder": 1, "init_flow": 2, "init_distill": 1,
                                 "flow": 3, "distill": 2}
    # a second run from the same model on the same grids reads the latents it would encode
    assert main(["train", "--data", str(fake_data), "--data", str(more), "--out", str(tmp_path / "c"),
                 "--init", str(first), "--steps", "5,5,1,1"] + small) == 0
    assert "14 latents read from the cache" in capsys.readouterr().err


def test_train_init_from_a_model_folder_rebuilds_it_and_refits_a_missing_encoder(fake_data, tmp_path, capsys):
    """--init models/NAME: the weights come from the shipped graphs; a folder exported before the
    encoder graph was shipped gets an encoder refitted to the frozen decoder, recorded in the card."""
    pytest.importorskip("torch")
    import torch

    from sam3d_addon.cli import main
    from sam3d_addon.nn.checkpoint import load_checkpoint

    small = ["--device", "cpu", "--set", "vae_batch=2", "--set", "encoder_batch=2", "--set", "flow_batch=2",
             "--set", "distill_batch=2", "--set", "refit_steps=3", "--set", "refit_batch=2",
             "--set", "refit_anchors=8"]
    assert main(["train", "--data", str(fake_data), "--out", str(tmp_path / "a"), "--steps", "2,1,2,1"] + small) == 0
    assert main(["export", "--config", "tiny", "--checkpoint", str(tmp_path / "a" / "model.pt"),
                 "--out", str(tmp_path / "shipped")]) == 0
    (tmp_path / "shipped" / "structure_encoder.onnx").unlink()  # as older exports are
    capsys.readouterr()
    assert main(["train", "--data", str(fake_data), "--out", str(tmp_path / "b"), "--init", str(tmp_path / "shipped"),
                 "--steps", "0,0,2,1"] + small) == 0
    assert "refit" in capsys.readouterr().err
    _, a = load_checkpoint(tmp_path / "a" / "model.pt")
    _, b = load_checkpoint(tmp_path / "b" / "model.pt")
    # the decoder is the shipped one (float16-rounded as the files hold it); the encoder is new
    for key, value in a["decoder"].items():
        assert torch.equal(b["decoder"][key], value.half().float() if value.numel() >= 1024 else value), key
    assert any(not torch.equal(a["encoder"][k], b["encoder"][k]) for k in a["encoder"])
    assert b["latent_mean"] == pytest.approx(a["latent_mean"])
    assert {k: v for k, v in b["pose_stats"].items() if k in a["pose_stats"]} == a["pose_stats"]
    init = b["meta"]["init"]
    assert init["checkpoint"] == str(tmp_path / "shipped") and init["model"]["name"] == "tiny"
    assert max(init["rebuilt_max_abs_diff"].values()) < 2e-3
    refit = init["encoder_refit"]
    assert refit["steps"] == 3 and refit["anchors"] + refit["held_out"] == 8
    assert set(refit["after"]) == {"reconstruction_viou", "anchor_mse"}
    assert b["meta"]["steps_run"]["flow"] == 2 and b["meta"]["steps_run"]["init_flow"] == 2
    # a folder that is not a model: one line, nothing made
    assert main(["train", "--data", str(fake_data), "--out", str(tmp_path / "c"), "--init", str(fake_data)]) == 2
    assert capsys.readouterr().err.count("\n") == 1 and not (tmp_path / "c").exists()


def test_average_mixes_a_run_with_the_model_it_went_on_from_and_refuses_another_vae(fake_data, tmp_path, capsys):
    """sam3d average: weight * run + (1 - weight) * shipped for the condition encoder and the flow;
    the VAE stays; a checkpoint with another VAE is refused with one line and nothing written."""
    pytest.importorskip("torch")
    import torch

    from sam3d_addon.cli import main
    from sam3d_addon.nn.checkpoint import load_checkpoint

    small = ["--device", "cpu", "--set", "vae_batch=2", "--set", "encoder_batch=2", "--set", "flow_batch=2",
             "--set", "distill_batch=2"]
    assert main(["train", "--data", str(fake_data), "--out", str(tmp_path / "a"), "--steps", "2,1,2,1"] + small) == 0
    assert main(["export", "--config", "tiny", "--checkpoint", str(tmp_path / "a" / "model.pt"),
                 "--out", str(tmp_path / "shipped")]) == 0
    assert main(["train", "--data", str(fake_data), "--out", str(tmp_path / "b"), "--init", str(tmp_path / "shipped"),
                 "--steps", "0,0,3,2", "--set", "flow_lr=0.01"] + small) == 0
    out = tmp_path / "c" / "model.pt"
    assert main(["average", "--checkpoint", str(tmp_path / "b" / "model.pt"), "--with", str(tmp_path / "shipped"),
                 "--weight", "0.25", "--out", str(out)]) == 0
    _, a = load_checkpoint(tmp_path / "a" / "model.pt")
    _, b = load_checkpoint(tmp_path / "b" / "model.pt")
    _, c = load_checkpoint(out)

    def shipped(value):  # the graphs hold large weights rounded to float16
        return value.half().float() if value.numel() >= 1024 else value

    moved = 0
    for name in ("condition_encoder", "generator"):
        for key, value in b[name].items():
            if "idx_emb" in key or not value.is_floating_point():  # idx_emb: only the rows the graph uses come back
                continue
            expected = 0.25 * value + 0.75 * shipped(a[name][key])
            assert torch.allclose(c[name][key], expected, atol=1e-6), (name, key)
            moved += int(not torch.equal(value, shipped(a[name][key])))
    assert moved > 0  # the run did move the weights, so the mix is not trivially equal to either
    for key, value in b["decoder"].items():
        assert torch.equal(c["decoder"][key], value), key
    assert c["meta"]["weight_average"]["checkpoint_weight"] == 0.25
    assert c["latent_mean"] == b["latent_mean"]

    other = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    other["decoder"] = {k: v + 1.0 if v.is_floating_point() else v for k, v in other["decoder"].items()}
    torch.save(other, tmp_path / "other.pt")
    capsys.readouterr()
    bad = tmp_path / "d" / "model.pt"
    assert main(["average", "--checkpoint", str(tmp_path / "other.pt"), "--with", str(tmp_path / "shipped"),
                 "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "different structure VAEs" in err and len(err.splitlines()) == 1
    assert not bad.exists()
    assert main(["average", "--checkpoint", str(out), "--with", str(tmp_path / "shipped"), "--weight", "1.5",
                 "--out", str(bad)]) == 2
    assert not bad.exists()
    shifted = torch.load(tmp_path / "b" / "model.pt", weights_only=True)  # the same VAE, another pose scale
    shifted["pose_stats"]["translation_std"] = [v * 2.0 for v in shifted["pose_stats"]["translation_std"]]
    torch.save(shifted, tmp_path / "shifted.pt")
    capsys.readouterr()
    assert main(["average", "--checkpoint", str(tmp_path / "shifted.pt"), "--with", str(tmp_path / "shipped"),
                 "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "normalise the pose differently" in err and len(err.splitlines()) == 1
    assert not bad.exists()
    # An average of an average keeps the chain of what went in.
    twice = tmp_path / "e" / "model.pt"
    assert main(["average", "--checkpoint", str(out), "--with", str(tmp_path / "b" / "model.pt"),
                 "--out", str(twice)]) == 0
    _, e = load_checkpoint(twice)
    assert e["meta"]["weight_average"]["checkpoint_was"]["checkpoint_weight"] == 0.25
    # --parts: the named parts are mixed, every other weight is the --with model's
    from sam3d_addon.train.average import flow_part

    some = tmp_path / "f" / "model.pt"
    assert main(["average", "--checkpoint", str(tmp_path / "b" / "model.pt"), "--with", str(tmp_path / "a" / "model.pt"),
                 "--weight", "0.5", "--parts", "shape,encoder,layout", "--out", str(some)]) == 0
    _, f = load_checkpoint(some)
    seen = set()
    for name in ("condition_encoder", "generator"):
        for key, value in b[name].items():
            if not value.is_floating_point():
                continue
            part = "encoder" if name == "condition_encoder" else flow_part(key)
            seen.add(part)
            share = 0.5 if part in ("shape", "encoder", "layout") else 0.0
            assert torch.allclose(f[name][key], share * value + (1 - share) * a[name][key], atol=1e-6), (name, key)
    assert seen == {"encoder", "layout", "shape", "pose", "time"}  # every flow weight has a part
    assert f["meta"]["weight_average"]["parts"] == ["shape", "encoder", "layout"]
    capsys.readouterr()
    assert main(["average", "--checkpoint", str(tmp_path / "b" / "model.pt"), "--with", str(tmp_path / "a" / "model.pt"),
                 "--parts", "shape,wings", "--out", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "--parts takes" in err and len(err.splitlines()) == 1 and not bad.exists()


def test_decoder_stage_fits_only_the_decoder_to_the_flows_own_samples(fake_data, tmp_path, capsys):
    """`--init RUN --stages decoder`: only the structure decoder moves, towards the true grids of
    the photos from the flow's 4-step samples (its loss there falls); the card records the stage
    and the sampler's noise factor it was fitted for."""
    pytest.importorskip("torch")
    import torch

    from sam3d_addon.cli import main
    from sam3d_addon.nn.bundle import sample_flow
    from sam3d_addon.nn.checkpoint import load_checkpoint
    from sam3d_addon.nn.vae import tokens_to_grid
    from sam3d_addon.train.loop import Batches, occupancy_loss

    small = ["--device", "cpu", "--set", "vae_batch=2", "--set", "encoder_batch=2", "--set", "flow_batch=2",
             "--set", "distill_batch=2"]
    assert main(["train", "--data", str(fake_data), "--out", str(tmp_path / "a"), "--steps", "2,1,2,1"] + small) == 0
    capsys.readouterr()
    assert main(["train", "--data", str(fake_data), "--out", str(tmp_path / "b"), "--init", str(tmp_path / "a" / "model.pt"),
                 "--stages", "decoder", "--steps", "0,0,0,0,40", "--set", "decoder_batch=4",
                 "--set", "decoder_lr=0.003", "--set", "shape_noise_scale=0.5", "--set", "hflip=0.5"] + small) == 0
    bundle_a, a = load_checkpoint(tmp_path / "a" / "model.pt")
    bundle_b, b = load_checkpoint(tmp_path / "b" / "model.pt")
    for name in ("condition_encoder", "generator", "encoder"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    assert any(not torch.equal(a["decoder"][k], b["decoder"][k]) for k in a["decoder"])
    assert b["meta"]["steps_run"] == {"init_vae": 2, "init_encoder": 1, "init_flow": 2, "init_distill": 1, "decoder": 40}
    assert b["sampler"]["noise_scale"] == {"shape": 0.5} and "noise_scale" not in a["sampler"]

    # On fresh draws of the flow's samples of the training photos, the new decoder fits the true
    # grids better than the VAE's.
    arrays = TrainingData(fake_data).load("train", 84, 16)
    batches = Batches(arrays, None, None, seed=99)
    pick = batches.indices(10)
    cfg = bundle_a.config
    with torch.no_grad():
        cond = bundle_a.condition_encoder(**batches.condition_inputs(pick, p_drop_points=1.0))
        x = sample_flow(bundle_a, cond, 5, b["sampler"])  # b's sampler: noise factor 0.5
        z = torch.from_numpy(x["shape"]) * torch.tensor(a["latent_std"]) + torch.tensor(a["latent_mean"])
        grid = tokens_to_grid(z, cfg.vae.latent_resolution)
        before = occupancy_loss(bundle_a.decoder(grid), batches.occupancy(pick), 1.0)[0].item()
        after = occupancy_loss(bundle_b.decoder(grid), batches.occupancy(pick), 1.0)[0].item()
    assert after < 0.9 * before


def test_occupancy_loss_is_zero_for_a_sure_right_grid_and_counts_the_iou():
    pytest.importorskip("torch")
    import torch

    from sam3d_addon.train.loop import occupancy_loss

    target = torch.zeros(1, 1, 4, 4, 4)
    target[..., :2, :, :] = 1.0  # half the grid
    loss, parts = occupancy_loss(40.0 * (2 * target - 1), target, 1.0)
    assert loss.item() < 1e-6 and parts["soft_iou"] == pytest.approx(1.0)
    # all "occupied" at p = 1: IoU 0.5, BCE 40 on the empty half
    loss, parts = occupancy_loss(torch.full_like(target, 40.0), target, 1.0)
    assert parts["soft_iou"] == pytest.approx(0.5) and parts["bce"] == pytest.approx(20.0, rel=1e-4)
    assert loss.item() == pytest.approx(20.5, rel=1e-4)


def test_latent_cache_key_follows_the_encoder_the_grids_the_mirror_and_the_device(tmp_path, monkeypatch):
    from sam3d_addon.train import latent_cache

    monkeypatch.setenv(latent_cache.ENV, str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    state = {"a.weight": rng.normal(size=(4, 3)).astype(np.float32), "a.bias": np.zeros(4, np.float32)}
    grids = rng.random((5, 8, 8, 8)) < 0.3
    key = latent_cache.cache_key(state, grids, False, "cpu")
    assert key == latent_cache.cache_key({k: v.copy() for k, v in state.items()}, grids.copy(), False, "cpu")
    moved = dict(state, **{"a.bias": np.full(4, 1e-6, np.float32)})
    flipped = grids.copy()
    flipped[3, 1, 2, 3] ^= True
    others = {latent_cache.cache_key(moved, grids, False, "cpu"), latent_cache.cache_key(state, flipped, False, "cpu"),
              latent_cache.cache_key(state, grids, True, "cpu"), latent_cache.cache_key(state, grids, False, "cuda")}
    assert key not in others and len(others) == 4
    latents = rng.normal(size=(5, 64, 8)).astype(np.float32)
    assert latent_cache.load(key, 5) is None
    assert latent_cache.save(key, latents) == tmp_path / "cache" / f"{key}.npy"
    assert np.array_equal(latent_cache.load(key, 5), latents)
    assert latent_cache.load(key, 6) is None  # another count is a miss
    (tmp_path / "cache" / f"{key}.npy").write_bytes(b"cut off")
    assert latent_cache.load(key, 5) is None  # a damaged file is a miss
    assert not list((tmp_path / "cache").glob("*.partial.npy"))
    monkeypatch.setenv(latent_cache.ENV, "off")
    assert latent_cache.save(key, latents) is None and latent_cache.load(key, 5) is None
