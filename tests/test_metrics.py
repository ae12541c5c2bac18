"""Metrics, baseline and geometry benchmark: checks against values known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

from sam3d_addon import baseline, bench_geometry, metrics
from sam3d_addon.pose import rotation_angle_deg

RES = 32
CENTRES = (np.arange(RES) + 0.5) / RES - 0.5
GX, GY, GZ = np.meshgrid(CENTRES, CENTRES, CENTRES, indexing="ij")


def rot(axis: str, deg: float) -> np.ndarray:
    return metrics.axis_rotation(np.eye(3)["xyz".index(axis)], math.radians(deg))


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def plane_grid(n: int = 40, spacing: float = 0.025) -> np.ndarray:
    u = np.arange(n) * spacing
    x, y = np.meshgrid(u, u, indexing="ij")
    return np.stack([x.ravel(), y.ravel(), np.zeros(x.size)], axis=1)


def box_sample(extents, R, t, s) -> dict:
    e = np.asarray(extents, dtype=float)
    occ = (np.abs(GX) <= e[0] / 2) & (np.abs(GY) <= e[1] / 2) & (np.abs(GZ) <= e[2] / 2)
    mesh = trimesh.creation.box(extents=e)
    return _sample(occ, mesh, R, t, s)


def cylinder_sample(radius, height, R, t, s) -> dict:
    occ = (GX ** 2 + GY ** 2 <= radius ** 2) & (np.abs(GZ) <= height / 2)
    mesh = trimesh.creation.cylinder(radius=radius, height=height, sections=64)
    return _sample(occ, mesh, R, t, s)


def _sample(occ, mesh, R, t, s) -> dict:
    mask = np.zeros((64, 64), dtype=bool)
    mask[20:44, 16:48] = True
    return {"rgb": np.zeros((64, 64, 3), np.uint8), "mask": mask, "occupancy": occ, "rotation": R,
            "translation": np.asarray(t, float), "scale": np.full(3, float(s)),
            "vertices": np.asarray(mesh.vertices), "faces": np.asarray(mesh.faces), "fov_deg": 50.0}


def ground_truth_predict(sample: dict) -> dict:
    return {"occupancy": sample["occupancy"], "R": sample["rotation"], "t": sample["translation"],
            "s": sample["scale"], "seconds": 0.25}


# -- vIoU --------------------------------------------------------------------------------------


def test_voxel_iou_identical_disjoint_partial():
    a = GX < 0.0                     # x-slabs 0..15
    b = (GX > -0.25) & (GX < 0.25)   # x-slabs 8..23: intersection 8, union 24 slabs
    assert metrics.voxel_iou(a, a) == 1.0
    assert metrics.voxel_iou(a, ~a) == 0.0
    assert metrics.voxel_iou(a, b) == pytest.approx(1.0 / 3.0)
    with pytest.raises(ValueError):
        metrics.voxel_iou(a, a[:16])


def test_resample_occupancy_keeps_shape():
    occ64 = np.repeat(np.repeat(np.repeat(b := (GX ** 2 + GY ** 2 + GZ ** 2 < 0.16), 2, 0), 2, 1), 2, 2)
    assert metrics.voxel_iou(metrics.resample_occupancy(occ64, RES), b) == 1.0


# -- surfaces, normalisation, distances ---------------------------------------------------------


def test_surface_points_from_occupancy_lie_on_voxel_boundary():
    occ = (np.abs(GX) < 0.25) & (np.abs(GY) < 0.25) & (np.abs(GZ) < 0.25)  # voxels 8..23: faces at +-0.25
    pts = metrics.surface_points_from_occupancy(occ, 2000, seed=1)
    linf = np.abs(pts).max(axis=1)
    assert pts.shape == (2000, 3)
    assert linf.max() <= 0.25 + 1e-9
    assert np.mean(linf > 0.25 - 1e-9) > 0.9  # all but the chamfered edges sit on the faces
    np.testing.assert_array_equal(pts, metrics.surface_points_from_occupancy(occ, 2000, seed=1))
    with pytest.raises(ValueError):
        metrics.surface_points_from_occupancy(np.zeros_like(occ), 10)


def test_surface_points_from_mesh_uniform_on_box():
    mesh = trimesh.creation.box(extents=[1.0, 1.0, 0.5])
    pts = metrics.surface_points_from_mesh(mesh.vertices, mesh.faces, 20000, seed=0)
    top = np.mean(np.isclose(pts[:, 2], 0.25))
    assert top == pytest.approx(1.0 / 4.0, abs=0.02)  # top face: 1 of area 4


def test_normalize_to_unit_cube_own_bbox():
    rng = np.random.default_rng(0)
    a = rng.uniform([1, 2, 3], [3, 3, 3.5], size=(500, 3))
    b = rng.uniform(-0.1, 0.1, size=(500, 3))
    na, nb = metrics.normalize_to_unit_cube(a, b)
    for n in (na, nb):
        lo, hi = n.min(axis=0), n.max(axis=0)
        assert (hi - lo).max() == pytest.approx(2.0)
        np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-12)
    # aspect kept: x spans 2, y about 1
    assert np.ptp(na[:, 1]) == pytest.approx(np.ptp(a[:, 1]) / np.ptp(a[:, 0]) * 2.0)


def test_surface_distances_match_brute_force():
    rng = np.random.default_rng(3)
    for mesh in (trimesh.creation.box(extents=[0.9, 0.3, 0.5]),
                 trimesh.creation.cylinder(radius=0.4, height=0.9, sections=32)):
        q = rng.uniform(-0.8, 0.8, size=(200, 3))
        brute = np.array([np.linalg.norm(trimesh.triangles.closest_point(
            mesh.triangles, np.repeat(p[None], len(mesh.faces), 0)) - p, axis=1).min() for p in q])
        np.testing.assert_allclose(metrics.surface_distances(q, mesh.vertices, mesh.faces), brute, atol=1e-12)
        # with thresholds: d < tau decided exactly, distances are upper bounds
        md = metrics.MeshDistance(mesh.vertices, mesh.faces, k=1)
        d = md(q, thresholds=(0.01, 0.1))
        for tau in (0.01, 0.1):
            np.testing.assert_array_equal(d < tau, brute < tau)
        assert np.all(d >= brute - 1e-12)
        np.testing.assert_allclose(md(q), brute, atol=1e-12)


# -- F1, Chamfer ----------------------------------------------------------------------------------


def test_f1_identical_and_shifted():
    gt = plane_grid()
    assert metrics.f1_score(gt, gt, 0.01) == 1.0
    shifted = gt + [0.0, 0.0, 0.02]  # every nearest distance is exactly 0.02
    assert metrics.f1_score(shifted, gt, 0.01) == 0.0
    assert metrics.f1_score(shifted, gt, 0.03) == 1.0
    # a quarter of the prediction far away: precision 0.75, recall 1 -> F1 = 2*0.75/1.75
    pred = np.concatenate([gt, gt[: len(gt) // 3] + [0, 0, 5.0]])
    precision = len(gt) / len(pred)
    assert metrics.f1_score(pred, gt, 0.01) == pytest.approx(2 * precision / (precision + 1))


def test_chamfer_definition():
    gt = plane_grid()
    assert metrics.chamfer(gt, gt) == 0.0
    # squared distances, both directions summed: 2 * 0.02^2
    assert metrics.chamfer(gt + [0, 0, 0.02], gt) == pytest.approx(2 * 0.02 ** 2)


# -- ADD-S ------------------------------------------------------------------------------------------


def test_adds_and_diameter():
    gt = plane_grid()
    assert metrics.adds(gt, gt) == 0.0
    assert metrics.adds(gt + [0, 0, 0.03], gt) == pytest.approx(0.03)
    # one-sided extra points count in one direction only: (ADD(M,Mgt) + ADD(Mgt,M)) / 2
    pred = np.concatenate([gt, [[0.0, 0.0, 1.0]]])
    assert metrics.adds(pred, gt) == pytest.approx(1.0 / len(pred) / 2)
    corners = np.array(list(np.ndindex(2, 2, 2)), dtype=float)
    assert metrics.object_diameter(corners) == pytest.approx(math.sqrt(3))
    assert metrics.adds_at(0.09, 1.0, 0.1) and not metrics.adds_at(0.1, 1.0, 0.1)


def test_posed_points_convention():
    R, t, s = rot("z", 90), np.array([0.0, 0.0, 3.0]), np.full(3, 2.0)
    # p_cam = R^T (s p) + t
    np.testing.assert_allclose(metrics.posed_points([[1.0, 0, 0]], R, t, s)[0], R.T @ [2.0, 0, 0] + t)


# -- rotation error ---------------------------------------------------------------------------------


def test_rotation_error_plain_and_asymmetric():
    R_gt = random_rotation(0)
    assert metrics.rotation_error_deg(R_gt, R_gt) == pytest.approx(0.0, abs=1e-5)
    assert metrics.rotation_error_deg(rot("x", 90) @ R_gt, R_gt) == pytest.approx(90.0)
    assert metrics.rotation_error_deg(rot("y", 33) @ R_gt, R_gt) == pytest.approx(
        rotation_angle_deg(rot("y", 33) @ R_gt, R_gt))
    # an asymmetric shape (a box with a small block on one corner of its top): only the identity
    body = trimesh.creation.box(extents=[0.8, 0.5, 0.3])
    block = trimesh.creation.box(extents=[0.2, 0.2, 0.2], transform=trimesh.transformations.translation_matrix(
        [0.3, 0.15, 0.25]))
    cloud = np.concatenate([metrics.surface_points_from_mesh(m.vertices, m.faces, 1000, seed=0) for m in (body, block)])
    discrete, continuous = metrics.symmetry_rotations(cloud)
    assert len(discrete) == 1 and not continuous
    assert metrics.rotation_error_deg(rot("z", 90) @ R_gt, R_gt, cloud) == pytest.approx(90.0)


def test_rotation_error_box_symmetries():
    mesh = trimesh.creation.box(extents=[0.9, 0.6, 0.4])
    pts = metrics.surface_points_from_mesh(mesh.vertices, mesh.faces, 3000, seed=0)
    discrete, continuous = metrics.symmetry_rotations(pts)
    assert len(discrete) == 4 and not continuous  # identity and the three half-turns
    R_gt = random_rotation(1)
    assert metrics.rotation_error_deg(rot("z", 180) @ R_gt, R_gt, pts) == pytest.approx(0.0, abs=1e-5)
    assert metrics.rotation_error_deg(rot("z", 90) @ R_gt, R_gt, pts) == pytest.approx(90.0)
    assert metrics.rotation_error_deg(rot("z", 190) @ R_gt, R_gt, pts) == pytest.approx(10.0)


def test_rotation_error_cylinder_about_its_axis():
    mesh = trimesh.creation.cylinder(radius=0.3, height=0.9, sections=64)
    pts = metrics.surface_points_from_mesh(mesh.vertices, mesh.faces, 3000, seed=0)
    discrete, continuous = metrics.symmetry_rotations(pts)
    assert len(continuous) == 1 and np.allclose(continuous[0], [0, 0, 1])
    R_gt = random_rotation(2)
    for deg in (90, 37, 211):
        assert metrics.rotation_error_deg(rot("z", deg) @ R_gt, R_gt, pts) == pytest.approx(0.0, abs=1e-4)
    assert metrics.rotation_error_deg(rot("x", 90) @ R_gt, R_gt, pts) == pytest.approx(90.0, abs=1e-4)
    assert metrics.rotation_error_deg(rot("x", 180) @ R_gt, R_gt, pts) == pytest.approx(0.0, abs=1e-4)
    sphere = trimesh.creation.icosphere(3)
    sphere_pts = metrics.surface_points_from_mesh(sphere.vertices, sphere.faces, 3000, seed=0)
    assert metrics.rotation_error_deg(random_rotation(5), R_gt, sphere_pts) == 0.0


# -- boxes ------------------------------------------------------------------------------------------


def test_box_iou_known_values():
    unit = (np.zeros(3), np.eye(3), np.ones(3))
    assert metrics.box_iou_3d(unit, unit) == pytest.approx(1.0)
    assert metrics.box_iou_3d(unit, ([0.5, 0, 0], np.eye(3), np.ones(3))) == pytest.approx(1.0 / 3.0)
    assert metrics.box_iou_3d(unit, (np.zeros(3), rot("z", 90), np.ones(3))) == pytest.approx(1.0)
    # unit square vs its 45-degree turn: octagon of area 2(sqrt2 - 1) -> IoU = 1/sqrt2
    assert metrics.box_iou_3d(unit, (np.zeros(3), rot("z", 45), np.ones(3))) == pytest.approx(1 / math.sqrt(2))
    assert metrics.box_iou_3d(unit, ([2.0, 0, 0], np.eye(3), np.ones(3))) == 0.0
    assert metrics.box_iou_3d(unit, ([1.0, 0, 0], np.eye(3), np.ones(3))) == pytest.approx(0.0, abs=1e-9)
    # a box of extents (2, 1, 1) turned 90 deg about z vs itself: 1x1x1 shared of 2 + 2 - 1
    long = (np.zeros(3), np.eye(3), [2.0, 1.0, 1.0])
    assert metrics.box_iou_3d(long, (np.zeros(3), rot("z", 90), [2.0, 1.0, 1.0])) == pytest.approx(1.0 / 3.0)


def test_posed_box_matches_posed_corners():
    occ = (GX > -0.25) & (GX < 0.5) & (np.abs(GY) < 0.125) & (GZ > 0)  # voxels 8..31, 12..19, 16..31
    lo, hi = metrics.canonical_bounds(occ)
    np.testing.assert_allclose(lo, [-0.25, -0.125, 0.0])
    np.testing.assert_allclose(hi, [0.5, 0.125, 0.5])
    R, t, s = random_rotation(3), np.array([0.2, -0.1, 4.0]), np.full(3, 1.5)
    box = metrics.posed_box(occ, R, t, s)
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    expected = metrics.posed_points(corners, R, t, s)
    got = box.corners()
    # same corner set (order may differ)
    assert max(np.linalg.norm(got - e, axis=1).min() for e in expected) < 1e-12
    assert box.volume == pytest.approx(np.prod((hi - lo) * 1.5))


# -- scale alignment ----------------------------------------------------------------------------------


def test_scale_align_recovers_distance_and_scales_about_camera():
    t_gt = np.array([0.3, -0.2, 3.0])
    t_pred, s_pred = np.array([0.2, -0.1, 1.5]), np.full(3, 0.4)
    t, s = metrics.scale_align(t_pred, s_pred, t_gt)
    k = np.linalg.norm(t_gt) / np.linalg.norm(t_pred)
    assert np.linalg.norm(t) == pytest.approx(np.linalg.norm(t_gt))
    np.testing.assert_allclose(s, s_pred * k)
    pts, R = np.random.default_rng(0).uniform(-0.5, 0.5, (50, 3)), random_rotation(4)
    np.testing.assert_allclose(metrics.posed_points(pts, R, t, s), k * metrics.posed_points(pts, R, t_pred, s_pred))


# -- baseline -----------------------------------------------------------------------------------------


def test_baseline_projects_onto_mask_bbox():
    mask = np.zeros((256, 256), dtype=bool)
    mask[60:140, 150:190] = True  # 40 wide, 80 tall, right of centre, above centre
    pred = baseline.ellipsoid_baseline(mask, fov_deg=50.0, median_depth=3.0)
    assert pred["occupancy"].shape == (RES, RES, RES) and pred["occupancy"].dtype == bool
    # the bbox centre projects back onto itself at the median depth
    u, v = baseline.project_points(pred["t"][None], 50.0, 256, 256)[0]
    assert (u, v) == pytest.approx((170.0, 100.0))
    assert pred["t"][2] == 3.0 and pred["t"][0] < 0 and pred["t"][1] > 0  # +x left, +y up
    # canonical +Z (up) -> camera +y, canonical +X -> image right
    up = metrics.posed_points([[0, 0, 1.0]], pred["R"], pred["t"], pred["s"])[0] - pred["t"]
    right = metrics.posed_points([[1.0, 0, 0]], pred["R"], pred["t"], pred["s"])[0] - pred["t"]
    assert up[1] > 0 and abs(up[0]) < 1e-12 and right[0] < 0
    # the posed box of the ellipsoid covers the mask bbox (perspective adds a little)
    box = metrics.posed_box(pred["occupancy"], pred["R"], pred["t"], pred["s"])
    uv = baseline.project_points(box.corners(), 50.0, 256, 256)
    (u0, v0), (u1, v1) = uv.min(axis=0), uv.max(axis=0)
    inter = max(0, min(u1, 190) - max(u0, 150)) * max(0, min(v1, 140) - max(v0, 60))
    iou = inter / ((u1 - u0) * (v1 - v0) + 40 * 80 - inter)
    assert iou > 0.75
    assert u0 <= 151 and u1 >= 189 and v0 <= 61 and v1 >= 139
    # ellipsoid proportions: width : height : depth = 1 : 2 : 1 (canonical x : z : y)
    lo, hi = metrics.canonical_bounds(pred["occupancy"])
    extent = hi - lo
    assert extent[2] == pytest.approx(1.0, abs=2 / RES)
    assert extent[0] == pytest.approx(0.5, abs=2 / RES) and extent[1] == pytest.approx(0.5, abs=2 / RES)


def test_baseline_upright_rotation_is_identity_in_blender():
    from sam3d_addon.pose import camera_pose_to_object_matrix

    M = camera_pose_to_object_matrix(baseline.UPRIGHT_FACING_CAMERA, [0, 0, 3.0], np.ones(3))
    np.testing.assert_allclose(M[:3, :3], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(M[:3, 3], [0, 3.0, 0], atol=1e-12)  # in front of the default camera


# -- benchmark ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def samples():
    return [
        box_sample([0.95, 0.7, 0.5], random_rotation(10), [0.2, -0.1, 3.0], 1.2),
        cylinder_sample(0.45, 0.95, random_rotation(11), [-0.3, 0.2, 2.5], 0.8),
        box_sample([0.6, 0.95, 0.8], random_rotation(12), [0.0, 0.1, 4.0], 1.5),
    ]


def test_evaluate_ground_truth_is_perfect(samples):
    per_sample = []
    result = bench_geometry.evaluate(ground_truth_predict, samples, n_points=512, seed=0, per_sample=per_sample)
    assert result["viou"] == 1.0
    assert result["box_iou"] == pytest.approx(1.0) and result["box_iou_aligned"] == pytest.approx(1.0)
    assert result["f1_005"] > 0.95       # the 32^3 voxelisation is the only difference from the mesh
    assert result["f1_001"] > 0.3         # ceiling set by half-voxel steps (1/32 ~ 0.06 in [-1, 1])
    assert result["chamfer"] < 1e-3
    assert result["adds"] < 0.01
    assert result["adds_01"] == 1.0 and result["adds_01_raw"] == 1.0
    assert result["rot_err_deg_median"] == pytest.approx(0.0, abs=1e-4)
    assert result["seconds_per_object"] == 0.25 and result["n_samples"] == 3 and len(per_sample) == 3
    # deterministic given the seed
    again = bench_geometry.evaluate(ground_truth_predict, samples[:1], n_points=512, seed=0)
    assert again["f1_001"] == per_sample[0]["f1_001"] and again["chamfer"] == per_sample[0]["chamfer"]


def test_evaluate_scores_errors(samples):
    sample = samples[0]

    def wrong_depth(s):  # right shape and direction, twice as far and twice as large
        return {**ground_truth_predict(s), "t": 2 * s["translation"], "s": 2 * s["scale"]}

    r = bench_geometry.evaluate(wrong_depth, [sample], n_points=512)
    assert r["f1_005"] > 0.95 and r["viou"] == 1.0           # shape metrics ignore the pose
    assert r["adds_01_raw"] == 0.0 and r["adds_01"] == 1.0    # scale alignment repairs it
    assert r["box_iou"] < 0.2 and r["box_iou_aligned"] == pytest.approx(1.0)
    assert r["rot_err_deg_median"] == pytest.approx(0.0, abs=1e-4)

    def turned(s):  # a quarter turn about the long canonical axis (not a symmetry of this box)
        return {**ground_truth_predict(s), "R": rot("x", 90) @ s["rotation"]}

    r = bench_geometry.evaluate(turned, [sample], n_points=512)
    assert r["rot_err_deg_median"] == pytest.approx(90.0)
    # the turned box (0.7 x 0.5 cross-section swapped) is still close as a point set: ADD-S sees
    # ~5% of the diameter, the rotation metric the full 90 degrees
    assert r["viou"] == 1.0 and 0.02 < r["adds"] < 0.1

    def empty(s):
        return {**ground_truth_predict(s), "occupancy": np.zeros_like(s["occupancy"])}

    r = bench_geometry.evaluate(empty, [sample], n_points=256)
    assert r["viou"] == 0.0 and r["f1_001"] == 0.0 and r["box_iou"] == 0.0 and np.isfinite(r["chamfer"])


def test_baseline_is_worse_than_ground_truth(samples):
    r = bench_geometry.evaluate(baseline.make_baseline_predict_fn(median_depth=3.0), samples, n_points=256)
    assert 0.0 < r["viou"] < 0.9 and r["f1_001"] < 0.3 and r["seconds_per_object"] < 0.5


def test_evaluate_against_gt_occupancy_surface(samples):
    # with the GT grid's own surface as reference the voxelisation ceiling disappears
    r = bench_geometry.evaluate(ground_truth_predict, samples[:1], n_points=256, gt_surface="occupancy")
    assert r["f1_001"] == 1.0 and r["chamfer"] < 1e-20 and r["adds"] < 1e-9
    with pytest.raises(ValueError):
        bench_geometry.evaluate(ground_truth_predict, samples[:1], n_points=16, gt_surface="points")


def test_by_baseline_viou_groups_samples_by_how_well_the_ellipsoid_fits(samples):
    from sam3d_addon.bench import by_baseline_viou

    baseline_rows, truth_rows = [], []
    bench_geometry.evaluate(baseline.make_baseline_predict_fn(median_depth=3.0), samples, n_points=256,
                            per_sample=baseline_rows)
    bench_geometry.evaluate(ground_truth_predict, samples, n_points=256, per_sample=truth_rows)
    scores = [row["viou"] for row in baseline_rows]
    # Edges between the samples' own baseline scores, so each lands in a group of its own.
    low, mid, high = sorted(scores)
    edges = (0.0, (low + mid) / 2, (mid + high) / 2, 1.0)
    groups = by_baseline_viou(baseline_rows, {"baseline": baseline_rows, "truth": truth_rows}, edges=edges)
    assert [g["n"] for g in groups.values()] == [1, 1, 1]
    assert [g["baseline"]["viou"] for g in groups.values()] == [round(v, 5) for v in (low, mid, high)]
    assert all(g["truth"]["viou"] == 1.0 for g in groups.values())
    # One wide group pools all; a range no sample falls in is left out; the top edge is inclusive.
    pooled = by_baseline_viou(baseline_rows, {"truth": truth_rows, "baseline": baseline_rows},
                              edges=(0.0, 1.0, 2.0))
    assert list(pooled) == ["0-1"] and pooled["0-1"]["n"] == 3
    assert pooled["0-1"]["baseline"]["viou"] == round(float(np.mean(scores)), 5)
    top = by_baseline_viou(baseline_rows, {"baseline": baseline_rows}, edges=(0.0, high))
    assert top[f"0-{high:g}"]["n"] == 3
