import numpy as np
import pytest

from sam3d_addon import pose
from sam3d_addon.texture.bake import canonical_to_opencv_camera, pinhole_intrinsics, project_points


def random_rotation(rng):
    q = rng.standard_normal(4)
    return pose.quaternion_to_matrix(q / np.linalg.norm(q))


def test_6d_round_trip_and_gram_schmidt_columns():
    rng = np.random.default_rng(0)
    for _ in range(20):
        R = random_rotation(rng)
        assert np.allclose(pose.rotation_6d_to_matrix(pose.matrix_to_rotation_6d(R)), R, atol=1e-12)
    # Non-orthonormal input: columns are b1 = a1/|a1|, b2 orthogonalised, b3 = b1 x b2.
    R = pose.rotation_6d_to_matrix([2, 0, 0, 1, 3, 0])
    assert np.allclose(R, np.eye(3))
    assert np.isclose(np.linalg.det(pose.rotation_6d_to_matrix(rng.standard_normal(6))), 1.0)


def test_quaternion_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(50):
        R = random_rotation(rng)
        q = pose.matrix_to_quaternion(R)
        assert q[0] >= 0 and np.isclose(np.linalg.norm(q), 1)
        assert np.allclose(pose.quaternion_to_matrix(q), R, atol=1e-10)


def test_known_axes_default_camera():
    # PyTorch3D camera: +z forward, +x left, +y up.  Default Blender camera looks along +Y, Z up.
    M = pose.camera_pose_to_object_matrix(np.eye(3), np.array([1.0, 0.5, 2.0]), np.ones(3))
    assert np.allclose(M[:3, 3], [-1.0, 2.0, 0.5])
    # R = I: canonical +y is the camera's up (world +Z), canonical +z points away (world +Y).
    assert np.allclose(M[:3, :3] @ [0, 1, 0], [0, 0, 1])
    assert np.allclose(M[:3, :3] @ [0, 0, 1], [0, 1, 0])
    assert np.allclose(M[:3, :3] @ [1, 0, 0], [-1, 0, 0])


def test_pose_round_trip_through_blender_world():
    rng = np.random.default_rng(2)
    for _ in range(20):
        R, t, s = random_rotation(rng), rng.normal(size=3) + [0, 0, 3], np.full(3, rng.uniform(0.2, 2))
        cam = np.eye(4)
        cam[:3, :3] = random_rotation(rng)
        cam[:3, 3] = rng.normal(size=3)
        M = pose.camera_pose_to_object_matrix(R, t, s, cam)
        R2, t2, s2 = pose.object_matrix_to_camera_pose(M, cam)
        assert np.allclose(R2, R, atol=1e-9) and np.allclose(t2, t) and np.allclose(s2, s)
        # The same point lands at the same place either way.
        p_obj = rng.uniform(-0.5, 0.5, 3)
        p_cam = R.T @ (s * p_obj) + t
        p_world = (M @ np.r_[p_obj, 1])[:3]
        p_bcam = (np.linalg.inv(cam) @ np.r_[p_world, 1])[:3]
        assert np.allclose(pose.P3D_TO_BLENDER_CAMERA @ p_cam, p_bcam)


def test_decode_encode_pose_with_stats():
    stats = {"rotation_mean": [0.1] * 6, "rotation_std": [0.5] * 6, "log_scale_mean": [0.2] * 3,
             "log_scale_std": [0.3] * 3, "translation_mean": [0, 0, 3], "translation_std": [1, 1, 2]}
    rng = np.random.default_rng(3)
    R, t, s = random_rotation(rng), np.array([0.3, -0.2, 2.5]), np.full(3, 0.8)
    raw = pose.encode_pose(R, t, s, stats)
    R2, t2, s2 = pose.decode_pose(raw, stats)
    assert np.allclose(R2, R) and np.allclose(t2, t) and np.allclose(s2, s)


def test_focal_ratio():
    f = pose.fov_to_focal_px(50.0, 256)
    assert pose.focal_ratio(f, 256, 50.0) == pytest.approx(1.0)
    assert pose.focal_ratio(2 * f, 256, 50.0) == pytest.approx(2.0)


def _project(corners, R, t, s, focal):
    """Pixels of canonical points posed by (R, t, s), through a centred pinhole of `focal` px."""
    return project_points(canonical_to_opencv_camera(corners, R, t, s), pinhole_intrinsics(focal, 256, 256))


def _box_iou(a, b):
    lo, hi = np.maximum(a.min(0), b.min(0)), np.minimum(a.max(0), b.max(0))
    inter = np.prod(np.clip(hi - lo, 0, None))
    area = lambda x: np.prod(x.max(0) - x.min(0))  # noqa: E731
    return inter / (area(a) + area(b) - inter)


@pytest.mark.parametrize("k", [0.6, 1.7, 2.5])
def test_retarget_to_focal_keeps_the_object_on_its_pixels(k):
    """A pose read under the training focal, retargeted to a photo with k times that focal,
    projects through the photo's focal onto the same pixels (centre exactly, box IoU > 0.8); the
    uniform scale about the camera it replaces does not (the control)."""
    rng = np.random.default_rng(int(10 * k))
    f_train = pose.fov_to_focal_px(50.0, 256)
    R, t, s = random_rotation(rng), np.array([0.9, -0.5, 3.0]), np.full(3, 0.6)
    corners = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    seen = _project(corners, R, t, s, f_train)

    t2, s2 = pose.retarget_to_focal(t, s, k)
    moved = _project(corners, R, t2, s2, k * f_train)
    origin = np.zeros((1, 3))
    assert np.allclose(_project(origin, R, t2, s2, k * f_train), _project(origin, R, t, s, f_train))
    assert _box_iou(seen, moved) > 0.8  # not 1: the perspective of a longer lens differs
    assert np.array_equal(t, [0.9, -0.5, 3.0])  # the input is not changed

    uniform = _project(corners, R, t * k, s * k, k * f_train)
    assert _box_iou(seen, uniform) < 0.5
