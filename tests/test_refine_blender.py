"""Scene refinement in headless Blender: Section C of the bridge and the "Refine scene" operator.

The operator is tested through the installed extension (as tests/test_addon.py does): built
offline with Blender's extension tool and installed into a temporary user resource directory.
Undo headless: `ed.undo_push()` initialises the stack, the operator runs with undo=True.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import bind_operator_methods

bpy = pytest.importorskip("bpy")

from sam3d_addon import blender_bridge as bridge  # noqa: E402
from sam3d_addon import build_extension  # noqa: E402
from sam3d_addon.refine import actions as A  # noqa: E402
from sam3d_addon.refine import scene as S  # noqa: E402
from sam3d_addon.refine import synthetic as Y  # noqa: E402

MODULE = "bl_ext.user_default.sam3d"


@pytest.fixture(scope="module")
def addon(tmp_path_factory):
    if MODULE not in bpy.context.preferences.addons:
        out = tmp_path_factory.mktemp("dist")
        proc = subprocess.run([sys.executable, "-m", "sam3d_addon.build_extension", "--out", str(out), "--no-wheels"],
                              capture_output=True, text=True, cwd=build_extension.REPO)
        assert proc.returncode == 0, proc.stderr
        result = bpy.ops.extensions.package_install_files(
            repo="user_default", filepath=str(sorted(out.glob("*.zip"))[0]), enable_on_install=True)
        assert result == {"FINISHED"}
    return importlib.import_module(MODULE + ".operators.refine")


def build_scene(perturb_seed=1):
    """Two boxes at perturbed poses, the photo camera, and the true masks in the SAM 3D panel."""
    bridge.reset_to_empty_scene()
    v, f = Y.box_mesh((0.6, 0.6, 0.8))
    v2, f2 = Y.box_mesh((1.2, 0.8, 0.7))
    gt = Y.make_scene([dict(name="chair", vertices=v, faces=f, xy=(-0.6, 0.3), yaw_deg=20),
                       dict(name="table", vertices=v2, faces=f2, xy=(0.6, 0.6))])
    start = Y.perturb(gt, np.random.default_rng(perturb_seed))
    sc = bpy.context.scene
    for name, ob_state in start.objects.items():
        ob = bpy.data.objects.new(name, bridge.mesh_from_numpy(name, ob_state.vertices, ob_state.faces))
        sc.collection.objects.link(ob)
        ob.matrix_world = bridge._as_matrix(ob_state.matrix_world)
    cam = bpy.data.objects.new("photo camera", bpy.data.cameras.new("photo camera"))
    cam.data.lens, cam.data.sensor_width = gt.camera.lens_mm, gt.camera.sensor_width_mm
    sc.collection.objects.link(cam)
    cam.matrix_world = bridge._as_matrix(gt.camera.matrix_world)
    sc.camera = cam
    sc.render.resolution_x, sc.render.resolution_y = gt.camera.resolution
    sc.render.resolution_percentage = 100
    bpy.context.view_layer.update()
    return sc, gt, start


def transforms():
    return {o.name: np.array(o.matrix_world) for o in bpy.data.objects if o.type == "MESH"}


def materials():
    return {m.name: (tuple(m.diffuse_color), m.roughness, m.metallic) for m in bpy.data.materials}


def test_read_apply_round_trip_and_labelled_views(tmp_path):
    sc, gt, start = build_scene()
    state = bridge.refine_read_scene(sc, masks=gt.masks, ground_z=0.0)
    assert sorted(state.objects) == ["chair", "table"] and state.objects["chair"].mask_id == "chair"
    for n, o in start.objects.items():
        np.testing.assert_allclose(state.objects[n].matrix_world, o.matrix_world, atol=1e-6)
    assert state.camera.resolution == gt.camera.resolution and "SAM3D Sun" in state.lights
    prog = [{"action": "set_material", "object": "chair", "base_color": [0.9, 0.1, 0.1], "roughness": 0.2,
             "description": "red lacquer"},
            {"action": "duplicate", "object": "table", "new_name": "table 2", "offset": [0, 2, 0]},
            {"action": "delete", "object": "chair"},
            {"action": "add_light", "type": "POINT", "position": [0, 0, 3], "power": 250}]
    acts, rej = A.validate_program(prog[:2] + prog[3:], state.names())
    assert not rej
    new, _ = S.execute(state, acts)
    bridge.refine_apply(new, state, sc)
    back = bridge.refine_read_scene(sc, masks=gt.masks, ground_z=0.0)
    assert sorted(back.objects) == ["chair", "table", "table 2"]
    assert back.objects["chair"].material.description == "red lacquer"
    assert back.objects["chair"].material.base_color == pytest.approx((0.9, 0.1, 0.1))
    assert bpy.data.objects["table 2"].data == bpy.data.objects["table"].data  # linked duplicate
    assert sorted(l.energy for l in bpy.data.lights) == [3.0, 250.0]
    acts, _ = A.validate_program([prog[2]], back.names())
    gone, _ = S.execute(back, acts)
    bridge.refine_apply(gone, back, sc)
    assert "chair" not in bpy.data.objects

    views = bridge.refine_render_views(gone, sc, size=64)
    assert [v for v, _ in views] == ["photo_camera", "top", "side"]
    from io import BytesIO

    from PIL import Image

    img = Image.open(BytesIO(views[0][1]))
    assert img.size == (64, 48)
    assert sc.camera.name == "photo camera" and sc.render.resolution_x == gt.camera.resolution[0]
    assert not any(o.name.startswith("sam3d_refine_") for o in bpy.data.objects)  # temporary cameras gone


def _set_masks(sc, masks):
    sc.sam3d.masks.clear()
    for name, m in masks.items():
        item = sc.sam3d.masks.add()
        item.image = bridge.image_from_array(name, np.repeat((m.astype(np.uint8) * 255)[..., None], 3, axis=2))


def test_refine_operator_kept_rounds_are_undo_steps(addon, tmp_path):
    sc, gt, _ = build_scene()
    _set_masks(sc, gt.masks)
    bpy.ops.ed.undo_push(message="before refine")  # background mode: initialises the undo stack
    before, mats_before = transforms(), materials()
    log = tmp_path / "log"
    assert bpy.ops.sam3d.refine("EXEC_DEFAULT", True, rounds=2, candidates=2, log_dir=str(log)) == {"FINISHED"}
    after = transforms()
    lines = [json.loads(x) for x in (log / "refine.jsonl").read_text().splitlines()]
    kept = [line for line in lines if line["kept"] is not None]
    assert kept and lines[0]["score_after"] > lines[0]["score_before"]
    assert any(not np.allclose(after[n], before[n]) for n in before)
    for _ in kept:  # one undo per kept round
        assert bpy.ops.ed.undo() == {"FINISHED"}
    restored = transforms()
    assert sorted(restored) == sorted(before)
    for n in before:
        np.testing.assert_array_equal(restored[n], before[n])
    assert materials() == mats_before


def test_refine_operator_with_a_local_vlm_changes_materials_and_undoes_exactly(addon, tmp_path):
    from tests.test_refine_vlm import FakeVLM, completion

    fake = FakeVLM()
    try:
        sc, gt, _ = build_scene()
        _set_masks(sc, gt.masks)
        prog = [{"action": "set_material", "object": "table", "base_color": [0.2, 0.4, 0.9], "metallic": 1.0},
                {"action": "place_on", "object": "chair", "support": "ground"},
                {"action": "place_on", "object": "table", "support": "ground"}]
        fake.script = [completion(json.dumps(prog))]
        bpy.ops.ed.undo_push(message="before refine")
        before, mats_before = transforms(), materials()
        assert bpy.ops.sam3d.refine("EXEC_DEFAULT", True, policy="VLM", vlm_url=fake.url, rounds=1,
                                    candidates=1, prompt="a blue metal table") == {"FINISHED"}
        table = bpy.data.objects["table"]
        assert tuple(table.active_material.diffuse_color)[:3] == pytest.approx((0.2, 0.4, 0.9))
        parts = fake.requests[0]["json"]["messages"][1]["content"]
        assert sum(p["type"] == "image_url" for p in parts) == 3  # photo camera, top, side
        assert bpy.ops.ed.undo() == {"FINISHED"}
        restored = transforms()
        for n in before:
            np.testing.assert_array_equal(restored[n], before[n])
        assert materials() == mats_before
        assert bpy.data.objects["table"].active_material is None
    finally:
        fake.close()


def test_refine_operator_refuses_remote_vlm_offline_and_leaves_the_scene(addon):
    sc, gt, _ = build_scene()
    before = transforms()
    with pytest.raises(RuntimeError, match="online access is off"):
        bpy.ops.sam3d.refine("EXEC_DEFAULT", True, policy="VLM", vlm_url="https://vlm.example.com/v1")
    after = transforms()
    for n in before:
        np.testing.assert_array_equal(after[n], before[n])


def test_cli_refine_writes_a_refined_blend(tmp_path, capsys):
    from PIL import Image

    from sam3d_addon import cli

    sc, gt, start = build_scene()
    for name, m in gt.masks.items():
        path = tmp_path / f"{name}_mask.png"
        Image.fromarray(m.astype(np.uint8) * 255).save(path)
        bpy.data.objects[name]["sam3d_mask"] = str(path)
    src, out = tmp_path / "in.blend", tmp_path / "out.blend"
    bridge.save_blend(str(src))
    assert cli.main(["refine", str(src), "--out", str(out), "--rounds", "2", "--candidates", "2",
                     "--log", str(tmp_path / "log"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["kept_rounds"] >= 1 and summary["final"]["score"] > summary["initial"]["score"]
    assert summary["final"]["iou_mean"] > 0.85 and summary["final"]["unsupported"] == []
    bpy.ops.wm.open_mainfile(filepath=str(out))
    assert summary["final"]["iou_mean"] > summary["initial"]["iou_mean"] + 0.1
    # saved: the poses moved, to within ~10 cm of the truth.  Not closer: the CLI takes the ground
    # to be the lowest bottom of the (perturbed) objects, 3.3 cm below the true ground here, and
    # resting the table on that ground moves it ~10 cm along the camera ray.
    for name, ob_state in gt.objects.items():
        M = np.array(bpy.data.objects[name].matrix_world)
        assert not np.allclose(M, start.objects[name].matrix_world)
        assert np.linalg.norm(M[:3, 3] - ob_state.matrix_world[:3, 3]) < 0.15
    assert cli.main(["refine", str(tmp_path / "missing.blend"), "--out", str(out)]) == 2
    assert "No .blend file" in capsys.readouterr().err


def test_two_kept_rounds_are_two_undo_steps(addon):
    from tests.test_refine_vlm import FakeVLM, completion

    fake = FakeVLM()
    try:
        sc, gt, _ = build_scene()
        _set_masks(sc, gt.masks)
        bpy.data.objects["chair"].location.z += 0.8  # clearly floating
        bpy.data.objects["table"].location.x += 0.5  # clearly off its mask
        bpy.context.view_layer.update()
        delta = [-0.5, 0.0, 0.0]
        fake.script = [completion('[{"action": "place_on", "object": "chair", "support": "ground"}]'),
                       completion(json.dumps([{"action": "move", "object": "table", "delta": delta}]))]
        bpy.ops.ed.undo_push(message="before refine")
        before = transforms()
        assert bpy.ops.sam3d.refine("EXEC_DEFAULT", True, policy="VLM", vlm_url=fake.url, rounds=2,
                                    candidates=1) == {"FINISHED"}
        after = transforms()
        assert bpy.ops.ed.undo() == {"FINISHED"}  # back to round 1: chair moved, table not yet
        mid = transforms()
        np.testing.assert_array_equal(mid["chair"], after["chair"])
        np.testing.assert_array_equal(mid["table"], before["table"])
        assert bpy.ops.ed.undo() == {"FINISHED"}
        for n, M in transforms().items():
            np.testing.assert_array_equal(M, before[n])
    finally:
        fake.close()


# -- the modal path (what the UI runs) ---------------------------------------------------------------

import threading  # noqa: E402
import time  # noqa: E402
from types import SimpleNamespace  # noqa: E402

TIMER = SimpleNamespace(type="TIMER", value="NOTHING")
ESC = SimpleNamespace(type="ESC", value="PRESS")
MOUSEMOVE = SimpleNamespace(type="MOUSEMOVE", value="NOTHING")


class _RefineStub:
    """The registered operator's own methods bound to a plain object (Blender cannot create operator
    instances from Python, and headless it never dispatches events): the test plays the window
    manager, sending TIMER / ESC events to `modal`."""

    def __init__(self, addon, **props):
        cls = addon.SAM3D_OT_refine
        bind_operator_methods(self, cls)
        defaults = dict(prompt="", policy="BUILTIN", rounds=3, candidates=4, vlm_url="", vlm_model="", log_dir="",
                        blocking=False, run_modal=False)
        for k, v in {**defaults, **props}.items():
            setattr(self, k, v)
        self._timer = self._job = None
        self.reports = []

    def report(self, kind, message):
        self.reports.append(("".join(kind), message))


class _Gated:
    """A policy whose rounds follow a script; round `gate_round` waits until released."""

    name = "gated"

    def __init__(self, programs, gate_round=0):
        self.programs, self.gate_round, self.calls = list(programs), gate_round, 0
        self.entered, self.release = threading.Event(), threading.Event()

    def propose(self, state, k, prompt="", feedback=(), observations=()):
        index, self.calls = self.calls, self.calls + 1
        if index == self.gate_round:
            self.entered.set()
            self.release.wait(20)
        return [self.programs[index]] if index < len(self.programs) else [[{"action": "done"}]]


def _drive(op, until, timeout=60.0):
    """Send TIMER events until `until()` holds or the operator stops; the last return value."""
    ret, deadline = {"RUNNING_MODAL"}, time.time() + timeout
    while ret == {"RUNNING_MODAL"} and not until() and time.time() < deadline:
        time.sleep(0.01)
        ret = op.modal(bpy.context, TIMER)
    return ret


def test_modal_refine_progress_kept_rounds_applied_on_main_thread_and_undo(addon):
    sc, gt, _ = build_scene()
    _set_masks(sc, gt.masks)
    bpy.ops.ed.undo_push(message="before refine")
    before = transforms()
    op, ui = _RefineStub(addon, rounds=2, candidates=2), bpy.context.window_manager.sam3d_refine
    assert op._start_job(bpy.context) and op._timer is not None and ui.running
    assert addon.busy() and not bpy.ops.sam3d.refine.poll() and bpy.ops.sam3d.refine_cancel.poll()
    time.sleep(0.3)
    now = transforms()  # the worker never touches the scene: kept rounds wait for a main-thread step
    assert all(np.array_equal(now[n], before[n]) for n in before)
    assert op.modal(bpy.context, MOUSEMOVE) == {"PASS_THROUGH"}
    seen = []
    ret = _drive(op, lambda: seen.append((ui.progress, ui.status)) and False)
    assert ret == {"FINISHED"}, op.reports
    assert any(s.startswith("round ") for _, s in seen)  # progress reached the UI
    assert not ui.running and op._timer is None and not addon.busy()
    assert op.reports[-1][0] == "INFO" and op.reports[-1][1].startswith("Refined in")
    kept = op._job.kept
    assert kept >= 1 and kept == op._job.result.kept_rounds
    after = transforms()
    assert any(not np.allclose(after[n], before[n]) for n in before)
    for n, ob_state in op._job.result.state.objects.items():  # the kept state is what the scene shows
        np.testing.assert_allclose(after[n], ob_state.matrix_world, atol=1e-5)
    bpy.ops.ed.undo_push(message="Refine Scene")  # what Blender does when a modal operator finishes
    for _ in range(kept):  # one undo per kept round
        assert bpy.ops.ed.undo() == {"FINISHED"}
    for n, M in transforms().items():
        np.testing.assert_array_equal(M, before[n])


def test_modal_refine_escape_cancels_and_leaves_the_scene_unchanged(addon, monkeypatch):
    sc, gt, _ = build_scene()
    _set_masks(sc, gt.masks)
    before = transforms()
    policy = _Gated([[{"action": "move", "object": "chair", "delta": [0.1, 0, 0]},
                      {"action": "place_on", "object": "chair", "support": "ground"}]])
    monkeypatch.setattr(addon, "make_policy", lambda *a, **k: policy)
    op, ui = _RefineStub(addon, rounds=2, candidates=1), bpy.context.window_manager.sam3d_refine
    assert op._start_job(bpy.context)
    assert _drive(op, policy.entered.is_set, timeout=20) == {"RUNNING_MODAL"}
    assert op.modal(bpy.context, ESC) == {"CANCELLED"}
    assert op.reports[-1] == ("WARNING", "Cancelled; nothing was changed.")
    assert not ui.running and op._timer is None
    policy.release.set()  # the round finishes in the worker: its candidate must never reach the scene
    op._job._thread.join(20)
    assert not op._job._thread.is_alive() and not addon.busy()
    assert op._job.step() == "CANCELLED" and op._job.kept == 0
    for n, M in transforms().items():
        np.testing.assert_array_equal(M, before[n])


def test_modal_refine_cancel_after_a_kept_round_keeps_it(addon, monkeypatch):
    sc, gt, _ = build_scene()
    _set_masks(sc, gt.masks)
    bpy.data.objects["chair"].location.z += 0.8  # clearly floating
    bpy.context.view_layer.update()
    before = transforms()
    policy = _Gated([[{"action": "place_on", "object": "chair", "support": "ground"}],
                     [{"action": "move", "object": "table", "delta": [0.3, 0, 0]}]], gate_round=1)
    monkeypatch.setattr(addon, "make_policy", lambda *a, **k: policy)
    op = _RefineStub(addon, rounds=3, candidates=1)
    assert op._start_job(bpy.context)
    assert _drive(op, policy.entered.is_set, timeout=20) == {"RUNNING_MODAL"}
    assert op._job.kept == 1
    assert op.modal(bpy.context, ESC) == {"FINISHED"}  # the kept round stays: one undo step
    assert "1 kept round(s) stay" in op.reports[-1][1]
    policy.release.set()
    op._job._thread.join(20)
    after = transforms()
    assert after["chair"][2, 3] < before["chair"][2, 3] - 0.5
    np.testing.assert_array_equal(after["table"], before["table"])


def test_modal_refine_stops_when_the_scene_is_edited_meanwhile(addon, monkeypatch):
    sc, gt, _ = build_scene()
    _set_masks(sc, gt.masks)
    bpy.data.objects["chair"].location.z += 0.8
    bpy.context.view_layer.update()
    policy = _Gated([[{"action": "place_on", "object": "chair", "support": "ground"}],
                     [{"action": "move", "object": "chair", "delta": [0.2, 0, 0]}]], gate_round=1)
    monkeypatch.setattr(addon, "make_policy", lambda *a, **k: policy)
    op = _RefineStub(addon, rounds=3, candidates=1)
    assert op._start_job(bpy.context)
    assert _drive(op, policy.entered.is_set, timeout=20) == {"RUNNING_MODAL"}
    bpy.data.objects["chair"].location.y += 0.5  # the user moves it while round 2 is computed
    bpy.context.view_layer.update()
    edited = transforms()
    policy.release.set()
    assert _drive(op, lambda: False, timeout=20) == {"FINISHED"}  # round 1 stays
    assert op.reports[-1][0] == "ERROR" and "edited while refining" in op.reports[-1][1]
    for n, M in transforms().items():  # the user's edit wins: round 2 was not applied
        np.testing.assert_array_equal(M, edited[n])


def test_modal_refine_with_a_vlm_renders_its_views_on_the_main_thread(addon):
    from tests.test_refine_vlm import FakeVLM, completion

    fake = FakeVLM()
    try:
        sc, gt, _ = build_scene()
        _set_masks(sc, gt.masks)
        fake.script = [completion(json.dumps([{"action": "place_on", "object": "chair", "support": "ground"},
                                              {"action": "place_on", "object": "table", "support": "ground"}]))]
        op = _RefineStub(addon, policy="VLM", vlm_url=fake.url, rounds=1, candidates=1)
        assert op._start_job(bpy.context)
        assert _drive(op, lambda: False, timeout=60) == {"FINISHED"}, op.reports
        parts = fake.requests[0]["json"]["messages"][1]["content"]
        assert sum(p["type"] == "image_url" for p in parts) == 3  # photo camera, top, side
        assert not any(o.name.startswith("sam3d_refine_") for o in bpy.data.objects)
    finally:
        fake.close()


def test_panel_shows_refine_progress_and_stop(addon):
    from tests.test_addon import _Recorder

    panels = importlib.import_module(MODULE + ".panels")
    ui = bpy.context.window_manager.sam3d_refine
    calls = []
    panels.draw_sam3d(_Recorder(calls), bpy.context)
    assert "sam3d.refine" in [c[1] for c in calls if c[0] == "operator"]
    ui.running, ui.progress, ui.status = True, 0.5, "round 2/3: asking the builtin policy"
    try:
        calls.clear()
        panels.draw_sam3d(_Recorder(calls), bpy.context)
    finally:
        ui.running = False
    ops = [c[1] for c in calls if c[0] == "operator"]
    assert "sam3d.refine_cancel" in ops and "sam3d.refine" not in ops
    assert ("progress", pytest.approx(0.5), "round 2/3: asking the builtin policy (50%)") in calls


def test_refine_preview_image_is_rendered_and_shown_in_the_panel(addon):
    from tests.test_addon import _Recorder

    sc, gt, start = build_scene()
    img = bridge.refine_update_preview(start, sc, size=64)
    again = bridge.refine_update_preview(gt, sc, size=64)
    assert again == img and bpy.data.images.get(bridge.REFINE_PREVIEW_IMAGE) == img  # reused
    assert tuple(img.size) == (64, 48)
    pixels = np.empty(64 * 48 * 4, np.float32)
    img.pixels.foreach_get(pixels)
    assert pixels.reshape(-1, 4)[:, :3].std() > 0.01  # a picture, not a blank
    panels = importlib.import_module(MODULE + ".panels")
    calls = []
    panels.draw_sam3d(_Recorder(calls), bpy.context)
    assert any(c[0] == "template_icon" for c in calls)
    bpy.data.images.remove(img)
