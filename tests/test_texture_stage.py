"""The texture stage at run time (ONNX Runtime, no torch on this path) on an untrained texture
model of the real contract: shapes, chunking, the pipeline's `output` switch and its errors."""

import json

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from sam3d_addon.contract import load_texture_card  # noqa: E402
from sam3d_addon.errors import InputError, ModelError  # noqa: E402
from sam3d_addon.texture.stage import TextureStage, spatial_chunks  # noqa: E402
from sam3d_addon.texture.voxels import surface_voxel_coords  # noqa: E402


@pytest.fixture(scope="module")
def texture_model(random_texture_model):
    return random_texture_model


def _ball(resolution=32, radius=9.5):
    c = (np.arange(resolution) + 0.5) - resolution / 2
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    return x ** 2 + y ** 2 + z ** 2 <= radius ** 2


def _inputs(size):
    rng = np.random.default_rng(0)
    out = {k: rng.random((1, 3, size, size)).astype(np.float32) for k in ("image", "rgb_image")}
    out.update({k: np.ones((1, 1, size, size), np.float32) for k in ("mask", "rgb_image_mask")})
    out.update({k: np.full((1, 3, size, size), np.nan, np.float32) for k in ("pointmap", "rgb_pointmap")})
    return out


def test_card_is_a_texture_card(texture_model, tmp_path):
    card = load_texture_card(texture_model)
    assert card.kind == "texture" and card.data["grid"]["fine_resolution"] == 64
    with pytest.raises(ModelError, match="geometry model"):
        from sam3d_addon.nn.export import export_random

        load_texture_card(export_random("tiny", tmp_path / "geo").path)


def test_stage_makes_a_coloured_refined_mesh_and_gaussians(texture_model):
    stage = TextureStage(texture_model, device="cpu")
    occ = _ball()
    res = stage.run(occ, _inputs(stage.card.input_size), output="both", seed=0)
    n = len(surface_voxel_coords(occ))
    assert len(res.coords) == n
    assert res.vertices.shape[1] == 3 and len(res.faces) > 100
    assert res.colors.shape == res.vertices.shape and res.colors.min() >= 0 and res.colors.max() <= 1
    # the refined mesh lives on the 64^3 grid inside the coarse object's box
    assert np.abs(res.vertices).max() <= 0.5
    g = stage.card.data["decoders"]["num_gaussians"]
    assert res.gaussians["xyz"].shape == (n * g, 3) and res.gaussians["rotations"].shape == (n * g, 4)
    again = stage.run(occ, _inputs(stage.card.input_size), output="mesh", seed=0)
    assert np.array_equal(again.vertices, res.vertices)  # seeded
    assert again.gaussians is None


def test_chunked_decoding_matches_one_pass(texture_model):
    stage = TextureStage(texture_model, device="cpu")
    coords = surface_voxel_coords(_ball(radius=13.0))
    chunks = list(spatial_chunks(coords, 200, 16, 8))
    assert len(chunks) > 1 and sum(int(own.sum()) for _, own in chunks) == len(coords)
    feats = np.random.default_rng(2).standard_normal((len(coords), 8)).astype(np.float32)
    one = stage.decode_gaussians(feats, coords)
    many = stage.decode_gaussians(feats, coords, max_voxels=200)
    for k in one:  # windowed attention and the halo: exact up to float noise
        np.testing.assert_allclose(np.sort(one[k], axis=0), np.sort(many[k], axis=0), atol=1e-5)
    fine1, sdf1, rgb1 = stage.decode_mesh(feats, coords)
    fine2, sdf2, rgb2 = stage.decode_mesh(feats, coords, max_voxels=200)
    o1, o2 = np.lexsort(fine1.T), np.lexsort(fine2.T)
    assert np.array_equal(fine1[o1], fine2[o2])
    # the subdivision block's GroupNorm takes its statistics over the voxels it is given, so chunks
    # differ from one pass by that alone: small next to the SDF's range (+-3 voxels)
    assert np.abs(sdf1[o1] - sdf2[o2]).max() < 0.2
    assert np.abs(rgb1[o1] - rgb2[o2]).max() < 0.05


def test_pipeline_output_switch(texture_model, tmp_path):
    from sam3d_addon.nn.export import export_random
    from sam3d_addon.pipeline import Sam3DPipeline

    geo = export_random("tiny", tmp_path / "geo", seed=0).path
    rng = np.random.default_rng(0)
    photo = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 20:44] = True
    plain = Sam3DPipeline(geo, device="cpu", texture_model=None)
    with pytest.raises(InputError, match="texture model"):
        plain.run(photo, [mask], output="gaussians")
    with pytest.raises(InputError, match="output"):
        plain.run(photo, [mask], output="splats")
    textured = Sam3DPipeline(geo, device="cpu", texture_model=texture_model)
    result = textured.run(photo, [mask], output="both", steps=2, bake=False)  # an untrained model's noise mesh: slow to unwrap
    obj = result.objects[0]
    if obj.occupancy.any():  # an untrained geometry model may predict nothing
        assert obj.colors is not None and obj.colors.shape == obj.vertices.shape
        assert obj.gaussians is not None and len(obj.gaussians["xyz"]) > 0
        assert "texture_sample" in result.timings
    with pytest.raises(ModelError, match="texture model"):
        Sam3DPipeline(texture_model, device="cpu")


def test_texture_recipe_end_to_end(tmp_path):
    """data --texture -> train-texture -> export-texture -> the stage, on a few tiny samples."""
    pytest.importorskip("bpy")
    from sam3d_addon.cli import main

    data, run, model = tmp_path / "data", tmp_path / "run", tmp_path / "model"
    assert main(["data", "--out", str(data), "--n", "4", "--n-test", "1", "--resolution", "32",
                 "--samples", "1", "--texture", "--workers", "1"]) == 0
    assert main(["train-texture", "--data", str(data), "--out", str(run), "--steps", "2,2"]) == 0
    log = [line for line in (run / "train_log.jsonl").read_text().splitlines() if line]
    assert any('"stage": "vae"' in line for line in log) and any('"stage": "flow"' in line for line in log)
    flow_rows = [json.loads(line) for line in log if '"stage": "flow"' in line and '"step"' in line]
    # the flow's loss has both parts: velocity and the decoded colour of its data estimate
    assert flow_rows and flow_rows[-1]["flow"] > 0 and flow_rows[-1]["rgb"] > 0
    assert main(["export-texture", "--checkpoint", str(run / "texture_model.pt"), "--out", str(model),
                 "--version", "0.0.1-test"]) == 0
    card = load_texture_card(model)
    assert card.version == "0.0.1-test" and card.data["training"]["train_samples"] == 4
    from sam3d_addon.data.dataset import list_samples, load_sample
    from sam3d_addon.preprocess import prepare_inputs

    sample = load_sample(list_samples(data, "test")[0])
    stage = TextureStage(model, device="cpu")
    res = stage.run(sample["occupancy"], prepare_inputs(sample["rgb"], sample["mask"], card.input_size), steps=2)
    assert res.vertices is not None and len(res.faces) > 0


def test_tiny_colours_are_relative_to_the_crop_colour(texture_model):
    """The tiny card's decoders give colour relative to the encoder's albedo (texture.reference),
    which untrained is the crop's mean colour: even the untrained model paints a red photo's object
    red and a blue one's blue."""
    stage = TextureStage(texture_model, device="cpu")
    assert stage.card.data["decoders"]["color_reference"] == "predicted_albedo"
    means = {}
    for name, rgb in (("red", (0.85, 0.1, 0.1)), ("blue", (0.1, 0.15, 0.85))):
        inputs = _inputs(stage.card.input_size)
        inputs["image"][:] = np.asarray(rgb, np.float32)[None, :, None, None]
        res = stage.run(_ball(), inputs, output="both", seed=0)
        means[name] = res.colors.mean(axis=0)
        assert np.abs(res.gaussians["colors"].mean(axis=0) - means[name]).max() < 0.25
    assert means["red"][0] > means["red"][2] + 0.3 and means["blue"][2] > means["blue"][0] + 0.3


def test_reference_colour_round_trip_and_torch_twin():
    import torch

    from sam3d_addon.texture.reference import absolute_colors, crop_reference_color, relative_colors
    from sam3d_addon.train.texture import absolute_colors_torch

    rng = np.random.default_rng(0)
    albedo, ref = rng.random((50, 3)), np.array([0.2, 0.6, 0.9])
    assert np.allclose(absolute_colors(relative_colors(albedo, ref), ref), np.clip(albedo, 1e-4, 1 - 1e-4), atol=1e-5)
    assert np.allclose(absolute_colors(np.full((4, 3), 0.5), ref), ref, atol=1e-6)  # 0.5 = the reference
    rel = rng.random((50, 3)).astype(np.float32)
    assert np.allclose(absolute_colors_torch(torch.from_numpy(rel), ref).numpy(), absolute_colors(rel, ref), atol=1e-6)
    image = np.zeros((1, 3, 8, 8))
    image[0, :, :4] = np.array([1.0, 0.0, 0.0])[:, None, None]
    mask = np.zeros((1, 1, 8, 8))
    mask[0, 0, :4] = 1.0  # only the red half counts
    assert np.allclose(crop_reference_color(image, mask), [1.0, 0.0, 0.0])
    assert np.allclose(crop_reference_color(image, np.zeros_like(mask)), [0.5, 0.0, 0.0])  # empty mask: whole crop


def test_stage_starts_from_noise_centred_over_the_voxels(texture_model, monkeypatch):
    """With `sampler.noise: centred_per_channel` in the card, the flow starts from noise whose
    per-channel mean over the voxels is zero (sampler.centre_noise); without it, from plain noise."""
    from sam3d_addon.sampler import FlowSampler, centre_noise
    from sam3d_addon.contract import NOISE_CENTRED

    x = np.random.default_rng(0).standard_normal((1, 500, 8)).astype(np.float32) + 3.0
    centred = centre_noise(x, axis=1)
    assert np.abs(centred.mean(axis=1)).max() < 1e-5 and np.allclose(centred - x, centred[:, :1] - x[:, :1])

    starts = []
    monkeypatch.setattr(FlowSampler, "sample", lambda self, velocity, x0, cond, **kw: starts.append(x0["slat"]) or x0)
    stage = TextureStage(texture_model, device="cpu")
    for noise in (NOISE_CENTRED, None):
        stage.card.data["sampler"]["noise"] = noise
        stage.sample_latent(surface_voxel_coords(_ball()), _inputs(stage.card.input_size), seed=3)
    assert np.abs(starts[0].mean(axis=1)).max() < 1e-5
    assert np.abs(starts[1].mean(axis=1)).max() > 1e-3 and np.allclose(starts[0], centre_noise(starts[1], axis=1))
