"""`sam3d bench texture`: the unlit renderer against the data engine's albedo views, the scores'
sense (a right colour beats a wrong one), one whole sample through an untrained texture model,
and the RSS probe in its own process."""

from __future__ import annotations

import numpy as np
import pytest

from sam3d_addon import bench_texture as bt
from sam3d_addon.texture.render import render_canonical_mesh, render_vertex_colors
from sam3d_addon.texture.voxels import surface_voxel_coords


def test_render_vertex_colors_nearest_wins_and_interpolates():
    k = np.array([[32.0, 0, 16], [0, 32.0, 16], [0, 0, 1]])
    square = np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float)
    near = np.c_[square * 0.5, np.full(4, 2.0)]  # covers the middle at depth 2
    far = np.c_[square * 2.0, np.full(4, 4.0)]  # covers everything at depth 4
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    points = np.vstack([near, far])
    both = np.vstack([faces, faces + 4])
    colors = np.vstack([np.tile([1.0, 0, 0], (4, 1)), [[0, 0, 0], [0, 0, 1.0], [0, 0, 1.0], [0, 0, 0]]])
    rgb, covered = render_vertex_colors(points, both[::-1], colors, k, 32, 32)  # far drawn last
    assert covered.all()
    assert np.allclose(rgb[16, 16], [1, 0, 0])  # the near square wins the middle
    assert rgb[1, 1, 0] == 0 and 0 < rgb[1, 30, 2] <= 1  # far square, blue interpolated across


@pytest.fixture(scope="module")
def texture_sample(tmp_path_factory):
    pytest.importorskip("bpy")
    pytest.importorskip("manifold3d", reason="the data engine needs manifold3d")
    from sam3d_addon.data import dataset, engine

    # seed/index 5: a chair with a plain (pattern-free) material, as tests/test_data_texture.py
    sample = engine.make_sample(5, "test", 5, resolution=64, render_samples=2, occluder_probability=0.0,
                                texture=True)
    path = tmp_path_factory.mktemp("tex_sample") / "000005.npz"
    engine.save_sample(path, sample)
    return dataset.load_sample(path)  # as the benchmark reads it


def test_renderer_sees_what_the_engine_rendered(texture_sample):
    """The ground-truth mesh rendered by `texture.render` through the engine's view cameras covers
    the engine's own albedo renders, and painted with the material's colour it scores high,
    painted with another colour low."""
    s = texture_sample
    for v in range(4):
        _, covered = render_canonical_mesh(s["vertices"], s["faces"], np.ones((len(s["vertices"]), 3)),
                                           s["object_matrix_world"], s["tex_views_camera"][v], float(s["fov_deg"]), 64, 64)
        gt = s["tex_views_alpha"][v] >= 128
        assert (covered & gt).sum() / (covered | gt).sum() > 0.9, v
    seen = s["tex_views_alpha"][:4] == 255
    true_colour = np.median(s["tex_views_albedo"][:4][seen], axis=0) / 255.0
    right = bt.view_scores(s, s["vertices"], s["faces"], np.tile(true_colour, (len(s["vertices"]), 1)))
    wrong = bt.view_scores(s, s["vertices"], s["faces"], np.tile(1.0 - true_colour, (len(s["vertices"]), 1)))
    assert right["psnr"] > 25 and right["ssim"] > 0.9
    assert wrong["psnr"] < right["psnr"] - 10 and wrong["ssim"] < right["ssim"]


def test_one_sample_end_to_end(texture_sample, random_texture_model):
    from sam3d_addon.texture.stage import TextureStage

    stage = TextureStage(str(random_texture_model), device="cpu")
    row = bt.evaluate_sample(stage, texture_sample, seed=0, steps=2)
    assert row["voxels"] == len(surface_voxel_coords(texture_sample["occupancy"]))
    for key in ("model", "baseline", "model_photo"):
        assert np.isfinite(row[key]["psnr"]) and 0 < row[key]["ssim"] <= 1
    # the refined mesh of an untrained decoder is noise; the coarse one is the occupancy's surface,
    # within a voxel (0.03 in the [-1, 1] frame) of the truth nearly everywhere
    assert 0.0 <= row["f1_refined"] <= 1.0 and 0.0 <= row["f1_coarse"] <= 1.0
    assert row["chamfer_coarse"] < 2 * (2 / 32) ** 2 and np.isfinite(row["chamfer_refined"])


def test_rss_probe_object_and_process(random_texture_model):
    occ = bt.rss_probe_occupancy()
    assert occ.shape == (32,) * 3 and len(surface_voxel_coords(occ)) >= 20_000
    probe = bt.run_rss_probe(str(random_texture_model), steps=1, voxels=1500)
    assert probe["voxels"] >= 1500 and probe["faces"] > 0 and probe["gaussians"] == 4 * probe["voxels"]
    assert probe["rss_before_stage_mb"] < probe["peak_rss_mb"] < 4096
