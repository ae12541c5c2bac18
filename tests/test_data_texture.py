"""Texture ground truth of the data engine (`sam3d data --texture`): view cameras, albedo
back-projection onto the surface voxels, and one real rendered sample.

The NumPy tests need no Blender; the rendered ones skip without bpy (64 px photo, 2 Cycles
samples, no occluder), like tests/test_data_engine.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sam3d_addon.data import backgrounds, camera, texture_views as tv
from sam3d_addon.errors import InputError
from sam3d_addon.texture import bake

FOV = 50.0
RES = 64
RENDER_SAMPLES = 2


def _object_matrix(yaw: float, scale: float, location) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    M = np.eye(4)
    M[:3, :3] = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) * scale
    M[:3, 3] = location
    return M


def _cube(half: float = 0.4):
    v = np.array([[x, y, z] for x in (-half, half) for y in (-half, half) for z in (-half, half)], float)
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]])
    return v, f


# -- camera placement --------------------------------------------------------------------------

def test_view_cameras_look_at_the_centre_at_the_documented_angles():
    rng = np.random.default_rng(0)
    vertices = rng.uniform(-0.5, 0.5, (200, 3))
    vertices -= (vertices.min(axis=0) + vertices.max(axis=0)) / 2  # bbox-centred, as shapes are
    M = _object_matrix(0.7, 1.3, [0.2, -0.1, 0.6])
    photo = camera.look_at([3.0, -2.0, 1.5], [0.1, 0.0, 0.5], roll_deg=2.0)
    cams = tv.view_cameras(vertices, M, photo, FOV)
    assert cams.shape == (8, 4, 4)
    centre, radius, up = tv.object_frame(vertices, M)
    np.testing.assert_allclose(centre, M[:3, 3], atol=1e-12)
    np.testing.assert_allclose(up, [0, 0, 1], atol=1e-12)

    def angles(C):  # independent of tv.azimuth_elevation: plain world-Z trigonometry
        d, r = C[:3, 3] - centre, photo[:3, 3] - centre
        az = math.degrees(math.atan2(d[1], d[0]) - math.atan2(r[1], r[0])) % 360
        el = math.degrees(math.atan2(d[2], math.hypot(d[0], d[1])))
        return az, el

    expected = [(45, 25), (135, 25), (225, 25), (315, 25), (0, -35), (180, -35), (90, 75), (270, 75)]
    distances = []
    for k, (C, (az, el)) in enumerate(zip(cams, expected)):
        R = C[:3, :3]
        np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-9)
        assert np.isclose(np.linalg.det(R), 1.0)
        to_centre = centre - C[:3, 3]
        np.testing.assert_allclose(-R[:, 2], to_centre / np.linalg.norm(to_centre), atol=1e-9)  # looks at it
        assert R[:, 1] @ up > 0  # image up is world up
        got_az, got_el = angles(C)
        assert abs((got_az - az + 180) % 360 - 180) < 1e-6 and abs(got_el - el) < 1e-6, k
        az2, el2 = tv.azimuth_elevation(C, centre, up, photo)
        assert abs((az2 - az + 180) % 360 - 180) < 1e-6 and abs(el2 - el) < 1e-6
        distances.append(np.linalg.norm(to_centre))
        # the object is inside the frame, its bounding sphere spans about FRAME_FILL of it
        p = camera.world_to_p3d_camera(vertices @ M[:3, :3].T + M[:3, 3], C)
        uv = camera.project(p, FOV, 64)
        assert (uv > 0).all() and (uv < 64).all()
        sphere = math.tan(math.asin(radius / distances[-1])) / math.tan(math.radians(FOV) / 2)
        assert abs(sphere - tv.FRAME_FILL) < 1e-9
    assert np.allclose(distances, distances[0])


# -- back-projection ---------------------------------------------------------------------------

def _cube_scene(cams, half=0.4, res=128, depth_factor=1.0):
    """Analytic renders of a canonical cube placed by M: depth (camera z) from bake.depth_buffer,
    albedo = a smooth function of the canonical point, alpha 255 where covered."""
    v, f = _cube(half)
    M = _object_matrix(0.4, 0.8, [0.3, 0.2, 0.32])
    world = v @ M[:3, :3].T + M[:3, 3]
    focal = camera.focal_px(FOV, res)
    K = bake.pinhole_intrinsics(focal, res, res)
    depth, albedo, alpha = [], [], []
    for C in cams(v, M):
        p_b = (world - C[:3, 3]) @ C[:3, :3]  # Blender camera frame
        z = bake.depth_buffer(p_b * np.array([1.0, -1.0, -1.0]), f, K, res, res)  # OpenCV frame
        covered = np.isfinite(z)
        pts = tv.world_to_canonical(tv.unproject(z, C, FOV), M)
        colour = np.zeros((res, res, 3))
        colour[covered] = _colour_field(pts)
        depth.append(np.where(covered, z * depth_factor, np.inf))
        albedo.append(colour)
        alpha.append(np.where(covered, 255, 0))
    return v, M, np.array(depth), np.array(albedo), np.array(alpha), np.array(cams(v, M))


def _colour_field(p):
    return np.clip(0.5 + np.asarray(p) * np.array([1.0, -0.8, 0.6]), 0, 1)


def _cube_grid(half=0.4, res=32):
    c = np.arange(res)
    inside = (c + 1) / res - 0.5 > -half
    inside &= c / res - 0.5 < half  # cells that intersect [-half, half]
    return inside[:, None, None] & inside[None, :, None] & inside[None, None, :]


def test_surface_voxels_are_the_shell():
    grid = _cube_grid()
    coords = tv.surface_voxels(grid)
    n = int(grid[:, 16, 16].sum())
    assert len(coords) == n ** 3 - (n - 2) ** 3
    assert coords.dtype.kind == "i" and (np.diff(coords.astype(np.int64) @ [1024, 32, 1]) > 0).all()


def test_backprojection_of_a_cube_recovers_the_albedo():
    photo = camera.look_at([2.5, -1.5, 1.2], [0.3, 0.2, 0.3])
    v, M, depth, albedo, alpha, cams = _cube_scene(lambda v, M: tv.view_cameras(v, M, photo, FOV))
    grid = _cube_grid()
    coords, colours, observed = tv.voxel_albedo(grid, albedo, alpha, depth, cams, M, FOV)
    assert coords.dtype == np.int16 and colours.shape == (len(coords), 3) and observed.dtype == bool
    assert observed.mean() > 0.97  # every face of a cube is seen by one of the 8 views
    centres = (coords + 0.5) / 32 - 0.5
    surface_point = np.clip(centres, -0.4, 0.4)  # nearest point of the cube's surface (shell voxels)
    err = np.abs(colours - _colour_field(surface_point)).max(axis=1)
    assert np.percentile(err, 99) < 1.6 / 32 and err.max() < 2.5 / 32

    # only the four novel views (looking down): the bottom face is unobserved and takes the
    # colour of the nearest observed voxel
    bottom = coords[:, 2] == 3
    middle = bottom & (np.abs(coords[:, 0] - 15.5) < 6) & (np.abs(coords[:, 1] - 15.5) < 6)
    c4, col4, obs4 = tv.voxel_albedo(grid, albedo[:4], alpha[:4], depth[:4], cams[:4], M, FOV)
    assert middle.sum() > 100 and not obs4[middle].any() and obs4[~bottom].mean() > 0.95
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(c4[obs4]).query(c4[~obs4])
    np.testing.assert_allclose(col4[~obs4], col4[obs4][nearest])


def test_backprojection_snaps_near_points_and_drops_far_ones():
    photo = camera.look_at([2.5, -1.5, 1.2], [0.3, 0.2, 0.3])
    grid = _cube_grid()
    _, M, depth, albedo, alpha, cams = _cube_scene(lambda v, M: tv.view_cameras(v, M, photo, FOV))
    _, _, exact = tv.voxel_albedo(grid, albedo, alpha, depth, cams, M, FOV)

    def scaled(k):  # the same renders against an object matrix k times larger (about its centre)
        Mk = M.copy()
        Mk[:3, :3] *= k
        return tv.voxel_albedo(grid, albedo, alpha, depth, cams, Mk, FOV)[2]

    # points 0.4 cells outside the cube's surface cells fall in empty cells and snap back
    assert scaled(1 / 1.04).sum() >= 0.97 * exact.sum()
    # points 1.8 cells inside the shell (in interior cells, > 1.5 cells from it) are dropped
    assert not scaled(1.2).any()


# -- a rendered sample -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def engine():
    pytest.importorskip("bpy")
    pytest.importorskip("manifold3d", reason="the data engine needs manifold3d")
    from sam3d_addon.data import engine

    return engine


SEED, INDEX = 5, 5  # a chair with a plain (pattern-free) material


@pytest.fixture(scope="module")
def texture_sample(engine):
    return engine.make_sample(SEED, "train", INDEX, resolution=RES, render_samples=RENDER_SAMPLES,
                              occluder_probability=0.0, texture=True)


def test_texture_sample_keys_and_albedo(texture_sample, engine):
    s = texture_sample
    expected = {"tex_views_albedo": (np.uint8, (8, 64, 64, 3)), "tex_views_alpha": (np.uint8, (8, 64, 64)),
                "tex_views_camera": (np.float64, (8, 4, 4)), "tex_views_depth": (np.float32, (8, 64, 64)),
                "tex_voxel_albedo": (np.uint8, None), "tex_voxel_coords": (np.int16, None),
                "tex_voxel_observed": (np.bool_, None)}
    assert set(expected) == set(engine.TEXTURE_KEYS)
    for key, (dtype, shape) in expected.items():
        assert s[key].dtype == dtype, key
        if shape is not None:
            assert s[key].shape == shape, key
    n = len(s["tex_voxel_coords"])
    assert s["tex_voxel_albedo"].shape == (n, 3) and s["tex_voxel_observed"].shape == (n,)

    from sam3d_addon.data import occupancy

    grid = occupancy.unpack_occupancy(s["occupancy"], s["occupancy_shape"])
    np.testing.assert_array_equal(s["tex_voxel_coords"], tv.surface_voxels(grid))
    np.testing.assert_allclose(s["tex_views_camera"], tv.view_cameras(
        s["vertices"], s["object_matrix_world"], s["camera_matrix_world"], float(s["fov_deg"])), atol=1e-5)

    alpha, albedo, depth = s["tex_views_alpha"], s["tex_views_albedo"], s["tex_views_depth"]
    assert ((alpha > 128).sum(axis=(1, 2)) > 50).all()  # the object is in every view
    assert (albedo[alpha == 0] == 0).all()  # background
    # depth is that of the pixel centre: inf on empty pixels and where only an edge is covered
    assert np.isfinite(depth[alpha > 128]).mean() > 0.97 and np.isinf(depth[alpha == 0]).all()
    assert np.isfinite(depth[alpha == 255]).all()
    assert s["tex_voxel_observed"].mean() >= 0.9

    # the material from the scene spec: a plain colour everywhere, views and voxels
    _, spec, _, _ = engine.sample_scene_spec(SEED, "train", INDEX, int(s["attempt"]), 0.0)
    material = spec.objects[0]["material"]
    assert "pattern" not in material and s["category"] == spec.objects[0]["category"]
    base = np.rint(backgrounds.linear_to_srgb(np.asarray(material["base_color"])) * 255)
    voxel_err = np.abs(s["tex_voxel_albedo"].astype(float) - base).max(axis=1)
    assert (voxel_err <= 6).mean() >= 0.95
    view_err = np.abs(albedo[alpha > 128].astype(float) - base).max(axis=1)
    assert (view_err <= 6).mean() >= 0.95

    # the stored views back-project onto the surface voxels (depth and cameras agree)
    from scipy.spatial import cKDTree

    tree = cKDTree(s["tex_voxel_coords"].astype(float))
    for v in range(8):
        p = tv.world_to_canonical(tv.unproject(depth[v], s["tex_views_camera"][v], FOV, alpha[v] > 128),
                                  s["object_matrix_world"])
        dist, _ = tree.query((p + 0.5) * 32 - 0.5)
        assert (dist <= 1.5).mean() > 0.98, v


def test_texture_flag_meta_validity_and_cli(engine, tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    engine.add_data_arguments(parser)
    assert parser.parse_args(["--out", "d", "--n", "1", "--texture"]).texture is True
    assert parser.parse_args(["--out", "d", "--n", "1"]).texture is False

    out = tmp_path / "tex"
    meta = engine.main_data(out=str(out), n=1, n_test=0, seed=1, resolution=32, samples=1, texture=True)
    assert meta == 0
    on_disk = json.loads((out / "meta.json").read_text())
    assert on_disk["texture"] is True and set(engine.TEXTURE_KEYS) <= set(on_disk["keys"])
    assert on_disk["texture_views"]["n_views"] == 8 and on_disk["texture_views"]["resolution"] == 64
    path = engine.sample_path(out, "train", 0)
    assert engine.is_valid_sample(path, texture=True)
    with np.load(path) as raw:
        assert set(engine.TEXTURE_KEYS) <= set(raw.files)
        plain = {k: raw[k] for k in engine.SAMPLE_KEYS}
    engine.save_sample(tmp_path / "plain.npz", plain)
    assert engine.is_valid_sample(tmp_path / "plain.npz") and not engine.is_valid_sample(tmp_path / "plain.npz", True)
    with pytest.raises(InputError):  # a texture data set is not resumed without --texture
        engine.generate(out, 1, n_test=0, seed=1, resolution=32, render_samples=1)


def test_patterned_material_albedo_follows_the_color_ramp(engine):
    # a sofa with a two-tone noise pattern: the AOV is the ColorRamp's output, so every voxel's
    # linear albedo lies between the two colours, and it varies along the ramp
    seed, index = 7, 2
    s = engine.make_sample(seed, "train", index, resolution=32, render_samples=1, occluder_probability=0.0,
                           texture=True)
    _, spec, _, _ = engine.sample_scene_spec(seed, "train", index, int(s["attempt"]), 0.0)
    material = spec.objects[0]["material"]
    assert "pattern" in material
    a, b = np.asarray(material["base_color"]), np.asarray(material["pattern"]["color"])
    linear = backgrounds.srgb_to_linear(s["tex_voxel_albedo"] / 255.0)
    t = np.clip((linear - a) @ (b - a) / ((b - a) @ (b - a)), 0, 1)
    off = np.linalg.norm(linear - (a + t[:, None] * (b - a)), axis=1)
    assert np.percentile(off, 99) < 0.02
    assert np.percentile(t, 95) - np.percentile(t, 5) > 0.15  # noise Fac clusters about 0.5
    assert s["tex_voxel_observed"].mean() >= 0.9
