"""The demo job end to end: `sam3d 3dfy` on the bundled example with the shipped model.

Checks what `make demo` promises: the .blend, GLB and PNG are written, the JSON summary is
complete, and the object rendered through the matched camera lies over the object in the photo
(silhouette IoU with the input mask >= 0.5).
"""

import json
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

from sam3d_addon import blender_bridge as bridge  # noqa: E402
from sam3d_addon import cli, contract  # noqa: E402
from sam3d_addon.pipeline import Sam3DPipeline  # noqa: E402
from sam3d_addon.preprocess import read_mask  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PHOTO = EXAMPLES / "chair.png"
MASK = EXAMPLES / "chair_mask.png"


def _need_shipped_model():
    if contract.DEFAULT_MODEL not in contract.available_models():
        pytest.skip("no shipped model in models/")


def test_cli_3dfy_writes_blend_glb_png_and_json(tmp_path, capsys):
    _need_shipped_model()
    out = tmp_path / "demo.blend"
    rc = cli.main(["3dfy", str(PHOTO), "--mask", str(MASK), "--mask", str(EXAMPLES / "vase_mask.png"),
                   "--out", str(out), "--glb", str(tmp_path / "demo.glb"), "--usd", str(tmp_path / "demo.usdc"),
                   "--render", str(tmp_path / "demo.png"), "--json", "--no-fit-layout"])  # the fit: below
    assert rc == 0
    for name in ("demo.blend", "demo.glb", "demo.usdc", "demo.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    summary = json.loads(capsys.readouterr().out)
    assert set(summary) == {"objects", "camera", "timings", "device"}
    assert [o["name"] for o in summary["objects"]] == ["chair_mask", "vase_mask"]
    for o in summary["objects"]:
        assert len(o["location"]) == 3 and len(o["rotation_quaternion"]) == 4 and len(o["scale"]) == 3
        assert o["vertices"] > 0 and o["faces"] > 0
    assert summary["camera"]["resolution"] == [256, 256]
    assert summary["camera"]["lens_mm"] > 0 and summary["device"] in ("cpu", "cuda")
    # The saved .blend holds the objects at the printed poses.
    bpy.ops.wm.open_mainfile(filepath=str(out))
    chair = bpy.data.objects["chair_mask"]
    assert np.allclose(chair.matrix_world.translation, summary["objects"][0]["location"], atol=1e-4)


def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    _need_shipped_model()
    empty = tmp_path / "empty.png"
    from PIL import Image

    Image.fromarray(np.zeros((256, 256), np.uint8)).save(empty)
    out = tmp_path / "x.blend"
    rc = cli.main(["3dfy", str(PHOTO), "--mask", str(empty), "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "empty" in err and "\n" not in err and "Traceback" not in err
    assert not out.exists()


def test_example_silhouette_overlaps_mask():
    """The Done-when line of the 3Dfy issue: IoU >= 0.5 of the rendered chair with its mask, as
    `make demo` makes it (the CLI's defaults: 4-step shortcut sampling and box alignment, then
    the layout fit).  Seeds 0-3 give 0.57-0.65 and 0.55-0.59 without the fit (tiny 0.3.3; 0.3.2
    gave 0.61-0.64 and 0.54-0.58); see the README."""
    _need_shipped_model()
    result = Sam3DPipeline(device="cpu").run(PHOTO, [MASK], seed=0, fit_layout=True)
    bridge.reset_to_empty_scene()
    bridge.build_result(result)
    rgba = bridge.render_png(str(Path(bpy.app.tempdir or "/tmp") / "sam3d_sil.png"),
                             engine="BLENDER_WORKBENCH", composite_photo=False)
    silhouette = rgba[..., 3] > 0.5
    mask = read_mask(MASK, (256, 256))
    iou = (silhouette & mask).sum() / max((silhouette | mask).sum(), 1)
    print(f"example silhouette IoU: {iou:.3f}")
    assert iou >= 0.5


def test_ground_truth_pose_renders_onto_the_mask():
    """Model-free check of the placement chain: the example's true pose (model camera frame) ->
    pose.py -> Blender objects and matched camera -> render.  The chair must land on its mask."""
    import json

    from sam3d_addon import pose
    from sam3d_addon.data import shapes
    from sam3d_addon.data.make_example import SEED
    from sam3d_addon.pipeline import CameraResult, ObjectResult, Result, SENSOR_WIDTH_MM

    gt = json.loads((EXAMPLES / "example_gt.json").read_text())
    chair_gt = next(o for o in gt["objects"] if o["name"] == "chair")
    chair = shapes.make_shape("chair", np.random.default_rng(SEED))  # the same draw as the example
    R, t, s = (np.asarray(chair_gt[k], float) for k in ("R", "t", "s"))
    focal = pose.fov_to_focal_px(gt["fov_deg"], 256)
    camera = CameraResult(matrix_world=pose.default_camera_matrix_world(), lens_mm=focal * SENSOR_WIDTH_MM / 256,
                          sensor_width_mm=SENSOR_WIDTH_MM, resolution=(256, 256), image_path=str(PHOTO),
                          image=np.zeros((256, 256, 3), np.uint8), focal_source="model")
    obj = ObjectResult(name="chair", mask=str(MASK), vertices=chair.vertices.astype(np.float32),
                       faces=chair.faces.astype(np.int32),
                       matrix_world=pose.camera_pose_to_object_matrix(R, t, s, camera.matrix_world),
                       rotation=R, translation=t, scale=s, occupancy=np.zeros((2, 2, 2), bool))
    bridge.reset_to_empty_scene()
    bridge.build_result(Result(objects=[obj], camera=camera))
    rgba = bridge.render_png(str(Path(bpy.app.tempdir or "/tmp") / "sam3d_gt.png"),
                             engine="BLENDER_WORKBENCH", composite_photo=False)
    silhouette = rgba[..., 3] > 0.5
    mask = read_mask(MASK, (256, 256))
    iou = (silhouette & mask).sum() / (silhouette | mask).sum()
    assert iou > 0.9, iou


def test_demo_render_shows_the_objects_colours():
    """With the shipped texture model (on by default) the demo's objects render in colour: the
    brown chair reddish, the blue vase bluish (Cycles, as `make demo` renders, photo left out so
    only the objects' own pixels count)."""
    _need_shipped_model()
    if contract.DEFAULT_TEXTURE_MODEL not in contract.available_models():
        pytest.skip("no shipped texture model in models/")
    result = Sam3DPipeline(device="cpu").run(PHOTO, [MASK, EXAMPLES / "vase_mask.png"], seed=0)
    assert all(o.texture is not None for o in result.objects)
    bridge.reset_to_empty_scene()
    bridge.build_result(result)
    mats = [ob.active_material for ob in bpy.data.objects if ob.type == "MESH"]
    assert mats and all(any(n.type == "TEX_IMAGE" for n in m.node_tree.nodes) for m in mats)
    colours = {}
    for ob in [o for o in bpy.data.objects if o.type == "MESH"]:
        for other in bpy.data.objects:
            other.hide_render = other.type == "MESH" and other is not ob
        rgba = bridge.render_png(str(Path(bpy.app.tempdir or "/tmp") / f"sam3d_col_{ob.name}.png"),
                                 samples=4, percentage=50, composite_photo=False)
        seen = rgba[..., 3] > 0.9
        assert seen.sum() > 20, ob.name
        colours[ob.name] = rgba[..., :3][seen].mean(axis=0)
    print({k: np.round(v, 3).tolist() for k, v in colours.items()})
    chair, vase = colours["chair_mask"], colours["vase_mask"]
    assert chair[0] > chair[2] + 0.03 and vase[2] > vase[0] + 0.1
