"""Layout post-optimisation: a badly placed object is pulled onto its mask."""

import json
from pathlib import Path

import numpy as np

from sam3d_addon import pose
from sam3d_addon.pipeline import SENSOR_WIDTH_MM, CameraResult, ObjectResult
from sam3d_addon.preprocess import read_mask
from sam3d_addon.refine.layout import fit_layout
from sam3d_addon.refine.scene import CameraState, ObjectState, SceneState
from sam3d_addon.refine.verify import verify

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def test_fit_layout_pulls_a_misplaced_chair_onto_its_mask():
    import pytest

    pytest.importorskip("manifold3d")  # the example chair is rebuilt with the data engine
    from sam3d_addon.data import shapes
    from sam3d_addon.data.make_example import SEED

    gt = json.loads((EXAMPLES / "example_gt.json").read_text())
    c = next(o for o in gt["objects"] if o["name"] == "chair")
    chair = shapes.make_shape("chair", np.random.default_rng(SEED))
    R, t, s = (np.asarray(c[k], float) for k in ("R", "t", "s"))
    focal = pose.fov_to_focal_px(gt["fov_deg"], 256)
    camera = CameraResult(pose.default_camera_matrix_world(), focal * SENSOR_WIDTH_MM / 256, SENSOR_WIDTH_MM,
                          (256, 256), None, np.zeros((256, 256, 3), np.uint8), "model")
    t_bad, s_bad = t + np.array([0.15, -0.1, 0.3]), s * 1.3
    obj = ObjectResult("chair", None, chair.vertices, chair.faces, pose.camera_pose_to_object_matrix(R, t_bad, s_bad),
                       R, t_bad, s_bad, np.zeros((2, 2, 2), bool))
    mask = read_mask(EXAMPLES / "chair_mask.png", (256, 256))

    def iou(matrix):
        st = SceneState(camera=CameraState(camera.matrix_world, camera.lens_mm, camera.sensor_width_mm, (256, 256)))
        st.objects["chair"] = ObjectState("chair", matrix, chair.vertices, chair.faces, mask_id="chair")
        st.masks["chair"] = mask
        return verify(st).iou["chair"]

    fitted = fit_layout([obj], camera, {"chair": mask})
    before, after = iou(obj.matrix_world), iou(fitted["chair"])
    assert before < 0.4 and after > 0.85, (before, after)


def test_all_restarts_make_the_fit_independent_of_the_seed():
    """The layout fit tries every yaw restart, so its result does not depend on the policy's seed
    (with two random restarts, fits of the same sample ended at IoU 0.45-0.57 over seeds 0-5)."""
    import pytest

    pytest.importorskip("manifold3d")
    from sam3d_addon.data import shapes
    from sam3d_addon.data.make_example import SEED
    from sam3d_addon.refine.policy_builtin import BuiltinPolicy

    gt = json.loads((EXAMPLES / "example_gt.json").read_text())
    c = next(o for o in gt["objects"] if o["name"] == "chair")
    chair = shapes.make_shape("chair", np.random.default_rng(SEED))
    R, t, s = (np.asarray(c[k], float) for k in ("R", "t", "s"))
    focal = pose.fov_to_focal_px(gt["fov_deg"], 256)
    cam = CameraState(pose.default_camera_matrix_world(), focal * SENSOR_WIDTH_MM / 256, SENSOR_WIDTH_MM, (256, 256))
    turned = pose.camera_pose_to_object_matrix(R, t + np.array([0.1, 0.0, 0.2]), s * 0.8)
    turned[:3, :3] = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) @ turned[:3, :3]  # 90 deg off

    def fit(seed, all_restarts):
        st = SceneState(camera=cam)
        st.objects["chair"] = ObjectState("chair", turned.copy(), chair.vertices, chair.faces, mask_id="chair")
        st.masks["chair"] = read_mask(EXAMPLES / "chair_mask.png", (256, 256))
        BuiltinPolicy(seed=seed, fit_size=32, search_iters=2, all_restarts=all_restarts)._fit_object(st, "chair", True)
        return st.objects["chair"].matrix_world

    np.testing.assert_allclose(fit(0, True), fit(5, True))
    assert not all(np.allclose(fit(0, False), fit(k, False)) for k in range(1, 4))  # random restarts differ
