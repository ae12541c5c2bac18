"""Texture stage, NumPy side: 3DGS PLY files, UV rasterisation and baking, photo projection with
visibility, de-lighting, the mean-colour baseline, and sparse SDF fields -> coloured meshes."""

from __future__ import annotations

import numpy as np
import pytest

from sam3d_addon.texture.bake import (
    bake_mesh_texture, bake_vertex_colors, canonical_to_opencv_camera, delight, depth_buffer, mean_mask_color,
    photo_vertex_colors, pinhole_intrinsics, project_photo_colors, project_points, rasterize, uv_unwrap,
)
from sam3d_addon.texture.gaussians import PROPERTIES, SH_C0, read_ply, write_ply
from sam3d_addon.texture.voxels import sparse_sdf_to_mesh


def cube_mesh(size=1.0, centre=(0.0, 0.0, 0.0)):
    c = size / 2.0
    v = np.array([[x, y, z] for x in (-c, c) for y in (-c, c) for z in (-c, c)], np.float64) + centre
    f = np.array([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1],
                  [2, 3, 7], [2, 7, 6], [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], np.int64)
    return v, f


def sphere_mesh(subdivisions=3):
    import trimesh

    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.4)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


# -- Gaussians PLY -----------------------------------------------------------------------------------

def test_gaussian_ply_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    n, g = 50, 4
    xyz = rng.uniform(-0.5, 0.5, (n, g, 3))
    scales = rng.uniform(0.001, 0.05, (n, g, 3))
    rotations = rng.normal(size=(n, g, 4))
    opacities = rng.uniform(0.05, 0.95, (n, g, 1))
    colors = rng.uniform(0, 1, (n, g, 3))
    path = write_ply(tmp_path / "splats.ply", xyz, scales, rotations, opacities, colors)
    header = path.read_bytes().split(b"end_header\n")[0].decode().splitlines()
    assert header[:3] == ["ply", "format binary_little_endian 1.0", f"element vertex {n * g}"]
    assert [line.split()[2] for line in header[3:]] == list(PROPERTIES)
    assert path.stat().st_size == len("\n".join(header)) + len("\nend_header\n") + n * g * 17 * 4
    back = read_ply(path)
    np.testing.assert_allclose(back["xyz"], xyz.reshape(-1, 3), atol=1e-6)
    np.testing.assert_allclose(back["scales"], scales.reshape(-1, 3), rtol=1e-5)
    unit = rotations.reshape(-1, 4) / np.linalg.norm(rotations.reshape(-1, 4), axis=1, keepdims=True)
    np.testing.assert_allclose(back["rotations"], unit, atol=1e-6)
    np.testing.assert_allclose(back["opacities"], opacities.reshape(-1), atol=1e-6)
    np.testing.assert_allclose(back["colors"], colors.reshape(-1, 3), atol=1e-6)
    # Stored as the pre-activation parameters 3DGS viewers expect.
    raw = back["raw"]
    np.testing.assert_allclose(raw["f_dc_0"], (colors.reshape(-1, 3)[:, 0] - 0.5) / SH_C0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(raw["scale_1"], np.log(scales.reshape(-1, 3)[:, 1]), rtol=1e-5)
    assert (raw["nx"] == 0).all()


def test_gaussian_ply_rejects_mismatched_counts(tmp_path):
    with pytest.raises(ValueError, match="same Gaussians"):
        write_ply(tmp_path / "bad.ply", np.zeros((3, 3)), np.ones((2, 3)), np.ones((3, 4)), np.ones(3) / 2,
                  np.zeros((3, 3)))


# -- rasteriser and baking -----------------------------------------------------------------------------

def test_rasterize_square_covers_each_pixel_once():
    # Two triangles covering the pixel square [2, 6) x [1, 4): 12 pixel centres, each exactly once
    # except the shared diagonal ones, which both triangles include (edges are inclusive).
    tri = np.array([[[2, 1], [6, 1], [6, 4]], [[2, 1], [6, 4], [2, 4]]], np.float64)
    face, x, y, bary = rasterize(tri, 10, 10)
    pixels = set(zip(x.tolist(), y.tolist()))
    assert pixels == {(i, j) for i in range(2, 6) for j in range(1, 4)}
    np.testing.assert_allclose(bary.sum(axis=1), 1.0)
    assert (bary >= -1e-9).all()


def test_uv_unwrap_keeps_face_order_and_bakes_vertex_colours():
    vertices, faces = sphere_mesh(2)
    vmapping, faces_uv, uvs = uv_unwrap(vertices, faces, texture_size=256)
    np.testing.assert_array_equal(vmapping[faces_uv], faces)  # same faces, same order
    assert uvs.min() >= 0 and uvs.max() <= 1
    colors = (vertices - vertices.min(0)) / np.ptp(vertices, axis=0)  # a smooth RGB gradient
    texture = bake_vertex_colors(uvs, faces_uv, colors[vmapping], size=256)
    assert texture.shape == (256, 256, 3) and texture.dtype == np.uint8
    # The texel under each triangle's centroid holds the mean of its corner colours.
    centroid_uv = uvs[faces_uv].mean(axis=1)
    px = np.clip((centroid_uv[:, 0] * 256).astype(int), 0, 255)
    py = np.clip(((1 - centroid_uv[:, 1]) * 256).astype(int), 0, 255)
    want = colors[faces].mean(axis=1) * 255
    assert np.median(np.abs(texture[py, px].astype(float) - want)) < 4.0


def test_constant_colour_bakes_to_a_constant_texture():
    vertices, faces = cube_mesh()
    loop_uv, texture = bake_mesh_texture(vertices, faces, np.tile([[0.2, 0.4, 0.8]], (8, 1)), size=64)
    assert loop_uv.shape == (len(faces) * 3, 2)
    assert (texture == np.round(np.array([0.2, 0.4, 0.8]) * 255).astype(np.uint8)).all()  # gutters filled


# -- photo projection ----------------------------------------------------------------------------------

W, H, FOCAL = 64, 48, 60.0
K = np.array([[FOCAL, 0, W / 2], [0, FOCAL, H / 2], [0, 0, 1]])


def split_photo():
    photo = np.zeros((H, W, 3), np.uint8)
    photo[:, : W // 2] = (255, 0, 0)  # left red
    photo[:, W // 2:] = (0, 0, 255)  # right blue
    return photo


def test_project_photo_colours_front_visible_back_fallback():
    vertices, faces = cube_mesh(0.6, centre=(0.0, 0.0, 3.0))  # OpenCV camera frame, in front
    fallback = np.full((8, 3), 0.5)
    colors, visible = project_photo_colors(vertices, faces, K, split_photo(), None, fallback=fallback)
    front = vertices[:, 2] < 3.0
    np.testing.assert_array_equal(visible, front)  # the back corners are hidden by the cube itself
    left = vertices[:, 0] < 0
    np.testing.assert_allclose(colors[front & left], [[1, 0, 0]] * 2, atol=1e-6)
    np.testing.assert_allclose(colors[front & ~left], [[0, 0, 1]] * 2, atol=1e-6)
    np.testing.assert_allclose(colors[~front], 0.5)


def test_project_photo_colours_respects_mask_pose_and_baseline():
    vertices, faces = cube_mesh(0.6)
    world_to_camera = np.eye(4)
    world_to_camera[2, 3] = 3.0  # the camera 3 units in front of the cube
    mask = np.zeros((H, W), bool)
    mask[:, : W // 2] = True  # only the left (red) half is the object
    colors, visible = project_photo_colors(vertices, faces, K, split_photo(), mask, world_to_camera=world_to_camera)
    assert visible.sum() == 2 and (vertices[visible, 0] < 0).all()
    np.testing.assert_allclose(colors[~visible], np.tile(mean_mask_color(split_photo(), mask), (6, 1)))
    np.testing.assert_allclose(mean_mask_color(split_photo(), mask), [1, 0, 0])


def test_depth_buffer_is_perspective_correct():
    # A plane z = 2 + x seen straight on: the depth at the centre pixel column is the plane's.
    v = np.array([[-1, -1, 1], [1, -1, 3], [1, 1, 3], [-1, 1, 1]], np.float64)
    f = np.array([[0, 1, 2], [0, 2, 3]])
    zbuf = depth_buffer(v, f, K, W, H)
    x = (np.arange(W) + 0.5 - W / 2) / FOCAL  # ray x/z
    want = 2.0 / (1.0 - x)  # z = 2 + x_world = 2 + z * x  => z = 2 / (1 - x)
    row = zbuf[H // 2]
    finite = np.isfinite(row)
    assert finite.sum() > 20
    np.testing.assert_allclose(row[finite], want[finite], rtol=1e-6)


def test_model_pose_projects_like_the_data_engine():
    from sam3d_addon.data import camera
    from sam3d_addon.pose import rotation_6d_to_matrix

    rng = np.random.default_rng(3)
    points = rng.uniform(-0.5, 0.5, (20, 3))
    R = rotation_6d_to_matrix(rng.normal(size=6))
    t, s = np.array([0.2, -0.1, 3.0]), np.array([0.8, 0.8, 0.8])
    want = camera.project(camera.canonical_to_p3d_camera(points, R, t, s), 40.0, 128)
    K = pinhole_intrinsics(camera.focal_px(40.0, 128), 128, 128)
    np.testing.assert_allclose(project_points(canonical_to_opencv_camera(points, R, t, s), K), want, atol=1e-9)


def test_photo_vertex_colors_with_model_pose():
    vertices, faces = cube_mesh()  # canonical, placed by the pose below in the PyTorch3D camera
    colors, visible = photo_vertex_colors(vertices, faces, np.eye(3), [0.0, 0.0, 3.0], [0.6] * 3, FOCAL,
                                          split_photo(), np.ones((H, W), bool))
    front = vertices[:, 2] < 0
    np.testing.assert_array_equal(visible, front)
    # PyTorch3D +x is left: those corners see the photo's left (red) half.
    np.testing.assert_allclose(colors[front & (vertices[:, 0] > 0)], [[1, 0, 0]] * 2, atol=1e-6)
    np.testing.assert_allclose(colors[front & (vertices[:, 0] < 0)], [[0, 0, 1]] * 2, atol=1e-6)
    delit, _ = photo_vertex_colors(vertices, faces, np.eye(3), [0.0, 0.0, 3.0], [0.6] * 3, FOCAL,
                                   split_photo(), np.ones((H, W), bool), delight_strength=1.0)
    # De-lighting rescales brightness only: hues stay.
    np.testing.assert_allclose(delit[front] / delit[front].max(axis=1, keepdims=True), colors[front], atol=1e-6)


# -- de-lighting -----------------------------------------------------------------------------------------

def test_delight_flattens_smooth_shading_keeps_detail():
    yy, xx = np.mgrid[0:96, 0:96]
    albedo = np.where((xx // 8 + yy // 8) % 2, 0.7, 0.4)[..., None] * np.array([1.0, 0.8, 0.6])
    shading = 0.25 + 0.75 * xx[..., None] / 95.0  # a strong left-to-right light fall-off
    from sam3d_addon.texture.bake import linear_to_srgb, srgb_to_linear

    photo = linear_to_srgb(srgb_to_linear(albedo) * shading)
    mask = np.ones((96, 96), bool)
    out = delight(photo, mask, sigma_fraction=0.2)
    lum_before = srgb_to_linear(photo).mean(-1)
    lum_after = srgb_to_linear(out).mean(-1)
    light, dark = (xx // 8 + yy // 8) % 2 == 1, (xx // 8 + yy // 8) % 2 == 0
    # Left-right trend of the light squares shrinks a lot; the checker contrast stays.
    trend_before = lum_before[light & (xx > 70)].mean() / lum_before[light & (xx < 25)].mean()
    trend_after = lum_after[light & (xx > 70)].mean() / lum_after[light & (xx < 25)].mean()
    assert trend_before > 2.5 and trend_after < 1.35
    assert lum_after[light].mean() / lum_after[dark].mean() > 1.5
    np.testing.assert_allclose(delight(photo, mask, strength=0.0), photo)


# -- sparse SDF -> mesh ------------------------------------------------------------------------------------

def test_sparse_sdf_to_coloured_mesh():
    resolution = 24
    grid = np.stack(np.meshgrid(*[np.arange(resolution)] * 3, indexing="ij"), -1).reshape(-1, 3)
    centre = (resolution - 1) / 2
    sdf = np.linalg.norm(grid - centre, axis=1) - 7.0
    band = np.abs(sdf) < 3  # only a shell of voxels is active, as after subdivision
    coords, sdf = grid[band], sdf[band]
    rgb = np.where(coords[:, :1] < centre, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    vertices, faces, colors = sparse_sdf_to_mesh(coords, sdf, rgb, resolution)
    radius = np.linalg.norm(vertices, axis=1)
    assert len(faces) > 100 and abs(np.median(radius) - 7.0 / resolution) < 0.5 / resolution
    left = vertices[:, 0] < -0.05
    assert (colors[left] == [1, 0, 0]).all() and (colors[vertices[:, 0] > 0.05] == [0, 1, 0]).all()
