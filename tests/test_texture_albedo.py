"""The texture model's reference colour (its albedo head) and its exact SDF targets."""

import numpy as np
import pytest

from sam3d_addon.texture.voxels import centre_inside_grid, fine_sdf_at


def _box(half, centre):
    import trimesh

    mesh = trimesh.creation.box(extents=2 * np.asarray(half, float))
    return np.asarray(mesh.vertices) + np.asarray(centre, float), np.asarray(mesh.faces)


def _box_sdf(points, half, centre):
    q = np.abs(points - centre) - half
    outside = np.linalg.norm(np.maximum(q, 0.0), axis=1)
    inside = np.minimum(q.max(axis=1), 0.0)
    return outside + inside


def test_exact_sdf_targets_match_a_box():
    """The SDF the texture model trains on: exact distance, sign from the scanline parity.  A box
    off the lattice: every centre's inside/outside and every distance equal the analytic ones."""
    half, centre, r = np.array([0.21, 0.13, 0.3]), np.array([0.031, -0.052, 0.017]), 64
    vertices, faces = _box(half, centre)
    c = (np.arange(r) + 0.5) / r - 0.5
    grid = np.stack(np.meshgrid(c, c, c, indexing="ij"), axis=-1).reshape(-1, 3)
    truth = _box_sdf(grid, half, centre).reshape(r, r, r)
    assert np.array_equal(centre_inside_grid(vertices, faces, r), truth < 0)
    near = np.argwhere(np.abs(truth) * r < 3.0)  # the band the model learns
    sdf = fine_sdf_at(vertices, faces, near, r)
    np.testing.assert_allclose(sdf, truth[near[:, 0], near[:, 1], near[:, 2]] * r, atol=1e-6)


def test_albedo_head_is_the_crop_mean_untrained_and_onnx_matches_torch(tmp_path):
    """Untrained (zero weights) the head says "the crop's mean colour", the 0.3.0 reference; with
    weights, the exported encoder graph gives the same tokens and albedo as torch, and the stage
    paints with the graph's albedo (a head that darkens gives darker colours)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from sam3d_addon.nn.fp16_weights import round_module_fp16_
    from sam3d_addon.nn.texture_export import export_texture_model
    from sam3d_addon.runtime import SessionCache
    from sam3d_addon.contract import load_texture_card
    from sam3d_addon.texture.reference import crop_reference_color
    from sam3d_addon.texture.stage import TextureStage
    from sam3d_addon.train.texture import TextureBundle

    torch.manual_seed(0)
    model = TextureBundle().eval()
    enc = model.condition_encoder
    rng = np.random.default_rng(0)
    size = 84
    inputs = {k: rng.random((2, 3, size, size)).astype(np.float32) for k in ("image", "rgb_image")}
    inputs.update({k: (rng.random((2, 1, size, size)) > 0.4).astype(np.float32) for k in ("mask", "rgb_image_mask")})
    inputs.update({k: np.full((2, 3, size, size), np.nan, np.float32) for k in ("pointmap", "rgb_pointmap")})
    with torch.no_grad():
        untrained = enc.albedo(torch.from_numpy(inputs["image"]), torch.from_numpy(inputs["mask"])).numpy()
    for b in range(2):
        np.testing.assert_allclose(untrained[b], crop_reference_color(inputs["image"][b], inputs["mask"][b]), atol=1e-5)

    with torch.no_grad():
        enc.albedo_head.weight.normal_(0.0, 0.1)
        enc.albedo_head.bias.fill_(-1.5)  # darker than the photo
        enc.albedo_mu.normal_(0.0, 0.5)
        enc.albedo_sd.uniform_(0.5, 2.0)
    round_module_fp16_(model)  # the weights as the export stores them (float16)
    with torch.no_grad():
        torch_inputs = {k: torch.from_numpy(v) for k, v in inputs.items()}
        cond = enc(**torch_inputs).numpy()
        albedo = enc.albedo(torch_inputs["image"], torch_inputs["mask"]).numpy()
    path = export_texture_model(model, tmp_path / "tex", {"sampler": {"steps": 2}}).path
    sessions = SessionCache(load_texture_card(path), "cpu")
    out = sessions.stage("texture_condition_encoder")(inputs)
    np.testing.assert_allclose(out["cond"], cond, atol=1e-4)
    np.testing.assert_allclose(out["albedo"], albedo, atol=1e-5)
    assert (albedo < untrained - 0.05).all()

    stage = TextureStage(path, device="cpu")
    one = {k: v[:1] for k, v in inputs.items()}
    _, reference = stage.encode(one)
    np.testing.assert_allclose(reference, albedo[0], atol=1e-5)


def test_train_texture_init_loads_an_older_checkpoint(tmp_path):
    """`sam3d train-texture --init`: a warm start from a checkpoint made before the albedo head
    (0.3.0): its weights load, the head stays at zero, and its training time is counted."""
    torch = pytest.importorskip("torch")
    from sam3d_addon.train.texture import TextureBundle, TextureTrainer

    torch.manual_seed(5)
    old = TextureBundle()
    state = {k: v for k, v in old.state_dict().items() if "albedo" not in k}
    ckpt = tmp_path / "old.pt"
    torch.save({"state_dict": state, "meta": {"seconds": {"vae": 10.0, "flow": 20.0}}}, ckpt)
    trainer = TextureTrainer(tmp_path / "data", tmp_path / "run", init=ckpt)
    new = trainer.model.state_dict()
    assert all(torch.equal(new[k], v) for k, v in state.items())
    assert not trainer.model.condition_encoder.albedo_head.weight.any()
    assert trainer.state["seconds"] == {"init_vae": 10.0, "init_flow": 20.0}
    assert sorted(trainer.init["missing"]) == sorted(k for k in new if "albedo" in k)
