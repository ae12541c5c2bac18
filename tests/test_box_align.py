"""The geometry stage's box alignment: a sampled pose's scale and sideways place are set so the
posed shape's projected box matches the mask's box; rotation, depth and shape stay the model's."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sam3d_addon import contract
from sam3d_addon.baseline import UPRIGHT_FACING_CAMERA, mask_bbox, project_points
from sam3d_addon.box_align import (align_pose_to_mask, align_pose_to_mask_box, occupied_corners, surface_points,
                                   turned_about_up)
from sam3d_addon.pose import rotation_angle_deg
from sam3d_addon.metrics import posed_points
from sam3d_addon.preprocess import prepare_inputs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FOV, H, W = 50.0, 96, 128


def _shape():
    """A lopsided solid (a ball with a post), so the box depends on the rotation."""
    x, y, z = np.meshgrid(*[np.arange(32)] * 3, indexing="ij")
    occ = (x - 12) ** 2 + (y - 16) ** 2 + (z - 12) ** 2 < 64
    occ |= (abs(x - 22) < 3) & (abs(y - 16) < 3) & (z < 28)
    return occ


def _rotation(deg):
    a = np.radians(deg)
    yaw = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return yaw @ UPRIGHT_FACING_CAMERA


def _box(occ, R, t, s):
    uv = project_points(posed_points(occupied_corners(occ), R, t, s), FOV, H, W)
    return np.concatenate([uv.min(axis=0), uv.max(axis=0)])


def _mask_of_box(box):
    u0, v0, u1, v1 = np.round(box).astype(int)
    mask = np.zeros((H, W), bool)
    mask[v0:v1, u0:u1] = True
    return mask


def test_corners_bound_every_occupied_voxel():
    occ = _shape()
    idx = np.argwhere(occ)
    offsets = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    every = (idx[:, None] + offsets[None]).reshape(-1, 3) / 32 - 0.5
    few = occupied_corners(occ)
    assert len(few) < len(every) / 4
    for d in np.random.default_rng(0).normal(size=(20, 3)):
        assert (few @ d).max() == pytest.approx((every @ d).max())


def test_a_misplaced_pose_is_moved_onto_the_mask_box():
    occ, R = _shape(), _rotation(30)
    t_true, s_true = np.array([0.3, -0.2, 4.0]), np.full(3, 1.2)
    mask = _mask_of_box(_box(occ, R, t_true, s_true))
    t_wrong = t_true + np.array([-0.5, 0.3, 0.0])
    t, s = align_pose_to_mask_box(occ, R, t_wrong, s_true * 0.6, mask, FOV)
    assert t[2] == t_wrong[2]                       # depth is the model's
    assert np.abs(_box(occ, R, t, s) - np.array(mask_bbox(mask))).max() < 1.0  # pixels
    assert np.allclose(s, s_true, rtol=0.05) and np.allclose(t, t_true, atol=0.03)


def test_nothing_to_align_leaves_the_pose_alone():
    occ, R = _shape(), _rotation(0)
    t0, s0 = np.array([0.0, 0.0, 3.0]), np.full(3, 1.0)
    mask = _mask_of_box(_box(occ, R, t0, s0))
    for args in ((np.zeros_like(occ), mask), (occ, np.zeros_like(mask))):
        t, s = align_pose_to_mask_box(args[0], R, t0, s0, args[1], FOV)
        assert np.array_equal(t, t0) and np.array_equal(s, s0)
    behind = np.array([0.0, 0.0, 0.2])  # the shape reaches behind the camera: no projection to trust
    t, s = align_pose_to_mask_box(occ, R, behind, s0, mask, FOV)
    assert np.array_equal(t, behind) and np.array_equal(s, s0)


def _silhouette(occ, R, t, s):
    """A pixel mask of the posed shape: dense canonical samples splatted onto the image."""
    fine = (np.argwhere(occ)[:, None] + (np.stack(np.meshgrid(*[np.arange(4) / 4 + 0.125] * 3, indexing="ij"), -1)
                                         .reshape(-1, 3))[None]).reshape(-1, 3) / occ.shape[0] - 0.5
    uv = np.floor(project_points(posed_points(fine, R, t, s), FOV, H, W)).astype(int)
    mask = np.zeros((H, W), bool)
    ok = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    mask[uv[ok, 1], uv[ok, 0]] = True
    return mask


def test_surface_points_cover_the_shape_and_skip_its_inside():
    occ = _shape()
    points = surface_points(occ)
    cells = np.unique(np.floor((points + 0.5) * 32).astype(int), axis=0)
    assert len(cells) < occ.sum() and occ[tuple(cells.T)].all()
    assert not occ[1:-1, 1:-1, 1:-1].all()


def test_a_wrong_turn_about_the_up_axis_is_found_from_the_silhouette():
    occ, R_true = _shape(), _rotation(30)
    occ[4:12, 14:18, 4:8] = True  # a foot sticking out on the ball's side: no turn looks alike
    t_true, s_true = np.array([0.2, 0.1, 2.5]), np.full(3, 1.2)
    mask = _silhouette(occ, R_true, t_true, s_true)
    R_wrong = turned_about_up(R_true, np.radians(90))
    R, t, s = align_pose_to_mask(occ, R_wrong, t_true + np.array([0.3, 0.0, 0.0]), s_true * 0.8, mask, FOV)
    assert rotation_angle_deg(R, R_true) < 1.0
    assert np.allclose(t, t_true, atol=0.05) and np.allclose(s, s_true, rtol=0.05)
    # a single candidate keeps the sampled rotation and only box-aligns
    R1, t1, s1 = align_pose_to_mask(occ, R_wrong, t_true, s_true, mask, FOV, yaws=1)
    assert np.array_equal(R1, R_wrong)


def test_the_pipeline_aligns_the_sampled_pose_and_keeps_the_flows():
    if contract.DEFAULT_MODEL not in contract.available_models():
        pytest.skip("no shipped model in models/")
    from sam3d_addon.pipeline import Sam3DPipeline

    pipe = Sam3DPipeline(device="cpu", texture_model=None)
    rgb = np.asarray(Image.open(EXAMPLES / "chair.png").convert("RGB"))
    mask = np.asarray(Image.open(EXAMPLES / "chair_mask.png").convert("L")) > 127
    inputs = prepare_inputs(rgb, mask, pipe.card.input_size, pipe.card.crop_box_factor)
    plain = pipe.generate(inputs, seed=0)
    aligned = pipe.generate(inputs, seed=0, mask=mask)
    for a, b in zip(aligned["flow_pose"], (plain["R"], plain["t"], plain["s"])):
        assert np.allclose(a, b)
    occ = aligned["logits"] > pipe.card.occupancy_threshold
    h, w = mask.shape

    def box_error(R, t, s):
        uv = project_points(posed_points(occupied_corners(occ), R, t, s), pipe.card.camera_fov_deg, h, w)
        return np.abs(np.concatenate([uv.min(axis=0), uv.max(axis=0)]) - np.array(mask_bbox(mask))).max()

    # the longer side and the centre: exact; the other side follows the shape's turn
    assert box_error(aligned["R"], aligned["t"], aligned["s"]) < 0.5 * box_error(*aligned["flow_pose"])
    assert aligned["t"][2] == pytest.approx(plain["t"][2])


def test_run_aligns_by_default_and_box_align_false_keeps_the_flow_pose():
    if contract.DEFAULT_MODEL not in contract.available_models():
        pytest.skip("no shipped model in models/")
    from sam3d_addon.pipeline import Sam3DPipeline

    pipe = Sam3DPipeline(device="cpu", texture_model=None)
    args = (EXAMPLES / "chair.png", [EXAMPLES / "chair_mask.png"])
    aligned = pipe.run(*args, seed=0).objects[0]
    flow = pipe.run(*args, seed=0, box_align=False).objects[0]
    rgb = np.asarray(Image.open(EXAMPLES / "chair.png").convert("RGB"))
    mask = np.asarray(Image.open(EXAMPLES / "chair_mask.png").convert("L")) > 127
    sampled = pipe.generate(prepare_inputs(rgb, mask, pipe.card.input_size, pipe.card.crop_box_factor), seed=0)
    assert np.allclose(flow.translation, sampled["t"]) and np.allclose(flow.scale, sampled["s"])
    assert not np.allclose(aligned.translation, flow.translation)
    # the rotation is the flow's, turned about the up axis by one of the tried steps
    turns = [turned_about_up(flow.rotation, 2 * np.pi * k / 24) for k in range(24)]
    assert min(np.abs(aligned.rotation - Rk).max() for Rk in turns) < 1e-9
