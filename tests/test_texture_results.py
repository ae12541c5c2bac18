"""Texture results without Blender: the pipeline's bake step (`texture.bake.bake_object_texture`),
its switches in `Sam3DPipeline.run`, and the `sam3d 3dfy` texture options' validation.

The Blender side (materials wired to the baked image, Gaussians point clouds, GLB) is in
test_texture_blender.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from sam3d_addon.texture.bake import bake_object_texture

W, H, FOCAL = 64, 48, 60.0
GREEN = (0.1, 0.8, 0.2)


def cube_mesh(size=1.0):
    c = size / 2.0
    v = np.array([[x, y, z] for x in (-c, c) for y in (-c, c) for z in (-c, c)], np.float64)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int64)
    return v, f


def sphere_mesh(subdivisions=2, radius=0.4):
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def split_photo():
    photo = np.zeros((H, W, 3), np.uint8)
    photo[:, : W // 2] = (255, 0, 0)  # left red
    photo[:, W // 2:] = (0, 0, 255)  # right blue
    return photo


def texel_at(texture, uv):
    """Nearest texel of [N, 2] UVs (v up, row 0 at the top)."""
    size = texture.shape[0]
    px = np.clip((uv[:, 0] * size).astype(int), 0, size - 1)
    py = np.clip(((1.0 - uv[:, 1]) * size).astype(int), 0, size - 1)
    return texture[py, px]


# -- the bake step ------------------------------------------------------------------------------------

def test_baked_texture_samples_the_vertex_colours():
    vertices, faces = sphere_mesh()
    colors = (vertices - vertices.min(0)) / np.ptp(vertices, axis=0)  # a smooth RGB gradient
    baked = bake_object_texture(vertices, faces, colors, size=128)
    assert baked.texture.shape == (128, 128, 3) and baked.texture.dtype == np.float32
    assert 0.0 <= baked.texture.min() and baked.texture.max() <= 1.0
    assert baked.uvs.shape == (len(faces) * 3, 2) and baked.uvs.dtype == np.float32
    assert baked.visible is None and baked.photo_texels is None
    np.testing.assert_array_equal(baked.colors, colors.astype(np.float32))
    centroid_uv = baked.uvs.reshape(-1, 3, 2).mean(axis=1)  # per-corner UVs of the faces in order
    want = colors[faces].mean(axis=1)
    assert np.median(np.abs(texel_at(baked.texture, centroid_uv) - want)) < 0.02
    # every texel (gutters included) holds a colour of the gradient, never the black background
    assert baked.texture.sum(axis=2).min() > 0.1


def test_photo_projection_replaces_the_visible_side_only():
    vertices, faces = cube_mesh()  # canonical; the pose puts it 3 units in front of the camera
    colors = np.tile(GREEN, (len(vertices), 1))
    pose = dict(rotation=np.eye(3), translation=np.array([0.0, 0.0, 3.0]), scale=np.full(3, 0.6), focal_px=FOCAL)
    baked = bake_object_texture(vertices, faces, colors, size=64, photo=split_photo(), mask=np.ones((H, W), bool),
                                **pose)
    front = vertices[:, 2] < 0  # canonical -z faces the camera (PyTorch3D +z looks away from it)
    np.testing.assert_array_equal(baked.visible, front)
    np.testing.assert_allclose(baked.colors[~front], np.tile(GREEN, (4, 1)), atol=1e-6)
    assert set(map(tuple, np.round(baked.colors[front]).astype(int))) == {(1, 0, 0), (0, 0, 1)}

    # Texels: the two front triangles are the photo (red or blue, never green); the back ones
    # keep the model's colour (the sides blend the two between their front and back corners).
    face_front, face_back = front[faces].all(axis=1), (~front[faces]).all(axis=1)
    assert face_front.sum() == 2 and face_back.sum() == 2
    corner_uv = baked.uvs.reshape(-1, 3, 2)
    weights = np.array([[0.6, 0.2, 0.2], [0.2, 0.6, 0.2], [0.2, 0.2, 0.6], [1 / 3, 1 / 3, 1 / 3]])
    for i, tri in enumerate(corner_uv):
        got = texel_at(baked.texture, weights @ tri)
        if face_front[i]:
            assert (got[:, 1] < 0.05).all() and (got.max(axis=1) > 0.95).all(), (i, got)
        elif face_back[i]:
            np.testing.assert_allclose(got, np.tile(GREEN, (4, 1)), atol=1e-5)
    assert 0 < baked.photo_texels.sum() < 0.5 * 64 * 64

    # The mask limits the projection: only the left (red) half of the photo is the object.
    mask = np.zeros((H, W), bool)
    mask[:, : W // 2] = True
    half = bake_object_texture(vertices, faces, colors, size=64, photo=split_photo(), mask=mask, **pose)
    assert 0 < half.visible.sum() < front.sum()
    seen = half.texture[half.photo_texels]
    assert len(seen) and (seen[:, 0] > 0.95).all() and (seen[:, 2] < 0.05).all()

    # De-lighting changes the photo's brightness only, never which texels it reaches.
    delit = bake_object_texture(vertices, faces, colors, size=64, photo=split_photo(), mask=np.ones((H, W), bool),
                                delight_strength=1.0, **pose)
    np.testing.assert_array_equal(delit.photo_texels, baked.photo_texels)


def test_bake_rejects_bad_inputs():
    vertices, faces = cube_mesh()
    with pytest.raises(ValueError, match="colors"):
        bake_object_texture(vertices, faces, np.ones((5, 3)))
    with pytest.raises(ValueError, match="out of range"):
        bake_object_texture(vertices, np.array([[0, 1, 8]]), np.ones((8, 3)))
    with pytest.raises(ValueError, match="pose|rotation"):
        bake_object_texture(vertices, faces, np.ones((8, 3)), photo=split_photo())


# -- the pipeline's bake step --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models(tmp_path_factory, random_texture_model):
    """A random geometry model whose sampler is replaced by a fixed ball (an untrained model may
    predict nothing) and the session's random texture model (conftest.py)."""
    pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    from sam3d_addon.nn.export import export_random

    root = tmp_path_factory.mktemp("models")
    geo = export_random("tiny", root / "geo", seed=0).path
    return geo, random_texture_model


def _pipeline(models):
    from sam3d_addon.pipeline import Sam3DPipeline

    geo, tex = models
    pipe = Sam3DPipeline(geo, device="cpu", texture_model=tex)
    r = pipe.card.occupancy_resolution
    c = (np.arange(r) + 0.5) - r / 2
    x, y, z = np.meshgrid(c, c, c, indexing="ij")
    logits = (0.3 * r) ** 2 - (x ** 2 + y ** 2 + z ** 2)  # a ball, > 0 inside
    ball = {"logits": logits.astype(np.float32), "R": np.eye(3), "t": np.array([0.0, 0.0, 3.0]), "s": np.ones(3)}
    pipe.generate = lambda *args, **kwargs: dict(ball)
    return pipe


def _inputs():
    rng = np.random.default_rng(0)
    photo = (rng.random((64, 64, 3)) * 255).astype(np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[16:48, 20:44] = True
    return photo, mask


def test_pipeline_bakes_by_default_and_not_when_off(models):
    pipe = _pipeline(models)
    photo, mask = _inputs()
    messages = []
    result = pipe.run(photo, [mask], steps=2, progress=lambda f, text: messages.append((f, text)))
    (obj,) = result.objects
    assert obj.colors is not None and len(obj.faces) > 100
    assert obj.texture.shape == (512, 512, 3) and obj.texture.dtype == np.float32  # the default size
    assert obj.uvs.shape == (len(obj.faces) * 3, 2)
    assert ("object_1: baking texture" in [text for _, text in messages]) and "bake" in result.timings
    fractions = [f for f, _ in messages]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    # without photo projection the texture holds the model's colours: the texel of each face ~ its colour
    centroid_uv = obj.uvs.reshape(-1, 3, 2).mean(axis=1)
    want = obj.colors[obj.faces].mean(axis=1)[:, :3]
    assert np.median(np.abs(texel_at(obj.texture, centroid_uv) - want)) < 0.02

    plain = pipe.run(photo, [mask], steps=2, bake=False).objects[0]
    assert plain.texture is None and plain.uvs is None and plain.colors is not None

    projected = pipe.run(photo, [mask], steps=2, texture_size=64, photo_projection=True, delight=0.5).objects[0]
    assert projected.texture is not None and not np.array_equal(projected.texture, obj.texture)
    np.testing.assert_array_equal(projected.colors, obj.colors)  # `colors` stays the model's


def test_bake_step_reports_progress_and_respects_cancel():
    from types import SimpleNamespace

    from sam3d_addon.errors import Cancelled
    from sam3d_addon.pipeline import Sam3DPipeline

    vertices, faces = sphere_mesh(1)
    objects = [SimpleNamespace(name=n, vertices=vertices, faces=faces, colors=np.full((len(vertices), 3), 0.5),
                               uvs=None, texture=None) for n in ("a", "b")]
    camera = SimpleNamespace(lens_mm=50.0, sensor_width_mm=36.0, resolution=(W, H))
    masks = [np.ones((H, W), bool)] * 2
    messages = []

    def progress(fraction, text):
        messages.append((round(fraction, 3), text))

    # Cancel asked while "a" bakes: "b" never starts.
    with pytest.raises(Cancelled):
        Sam3DPipeline._bake(objects, masks, None, camera, False, 0.0, 64, progress,
                            lambda: any(t == "a: baking texture" for _, t in messages), 0.9, {})
    assert messages == [(0.9, "a: baking texture")]
    assert objects[0].texture is not None and objects[1].texture is None
    timings = {}
    Sam3DPipeline._bake(objects, masks, None, camera, False, 0.0, 64, progress, None, 0.9, timings)
    assert messages[1:] == [(0.9, "a: baking texture"), (0.95, "b: baking texture")] and timings["bake"] > 0
    assert objects[1].texture.shape == (64, 64, 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(delight=1.5), "delight"), (dict(delight=-0.1), "delight"),
    (dict(texture_size=16), "texture size"), (dict(texture_size=100_000), "texture size"),
])
def test_pipeline_validates_bake_options_before_model_work(models, kwargs, match):
    from sam3d_addon.errors import InputError

    pipe = _pipeline(models)
    pipe.generate = None  # any model work would fail with a TypeError
    photo, mask = _inputs()
    with pytest.raises(InputError, match=match):
        pipe.run(photo, [mask], **kwargs)


# -- the CLI's options ----------------------------------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--delight", "2"], "--delight must be between 0 and 1"),
    (["--photo-projection", "--delight", "-1"], "--delight must be between 0 and 1"),
    (["--texture-size", "8"], "--texture-size must be"),
    (["--no-bake", "--photo-projection"], "drop --no-bake"),
    (["--delight", "0.5"], "add --photo-projection"),
    (["--output", "gaussians", "--glb", "OUT.glb"], "--output both"),
])
def test_cli_rejects_bad_texture_options_in_one_line(tmp_path, capsys, extra, message):
    from sam3d_addon.cli import main

    extra = [e.replace("OUT", str(tmp_path / "out")) for e in extra]
    code = main(["3dfy", str(tmp_path / "missing.png"), "--mask", str(tmp_path / "missing_mask.png"),
                 "--out", str(tmp_path / "out.blend"), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not (tmp_path / "out.blend").exists()


def test_cli_help_explains_the_texture_options(capsys):
    from sam3d_addon.cli import main

    with pytest.raises(SystemExit):
        main(["3dfy", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--no-bake", "--photo-projection", "--delight STRENGTH", "--texture-size N"):
        assert flag in text
    assert "IoU" in text  # why photo projection is off by default
