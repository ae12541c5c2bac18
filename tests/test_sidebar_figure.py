"""examples/sidebar_figure.py: the sidebar figure is drawn from the panel's own draw code.

The recorder runs `panels.draw_sam3d` of the installed extension (installed as in test_addon.py)
and must see the real widgets with the real values; the renderer must produce a real picture.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

bpy = pytest.importorskip("bpy")

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fig():
    spec = importlib.util.spec_from_file_location("sidebar_figure", REPO / "examples" / "sidebar_figure.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.panels = module.install_addon()
    return module


@pytest.fixture
def settings(fig):
    sc = bpy.context.scene
    saved = (sc.sam3d.model, sc.sam3d.device, sc.sam3d.steps, sc.sam3d.seed)
    s = fig.load_example(sc)
    s.model = "DEFAULT"
    s.steps, s.seed = 7, 3  # not the defaults, so the values really come from the scene
    yield s
    s.model, s.device, s.steps, s.seed = saved
    s.image = None
    s.masks.clear()
    fig.set_job_state(bpy.context.window_manager, False)


def _draw(fig, state="idle", space="image"):
    context = fig.make_context(space)
    running = state == "running"
    fig.set_job_state(context.window_manager, running, fig.RUNNING_PROGRESS if running else 0.0,
                      fig.RUNNING_STATUS if running else "")
    try:
        return fig.record_panel(fig.panels, context)
    finally:
        fig.set_job_state(context.window_manager, False)


def _ops(root):
    return [(i.name, i.text) for i in root.find("operator")]


def test_recorder_sees_the_idle_panel_with_real_values(fig, settings):
    root = _draw(fig)
    assert ("sam3d.threedfy", "3Dfy") in _ops(root)  # label from the operator's RNA type
    assert ("sam3d.free_memory", "Free Model Memory") in _ops(root)
    big = [c for c in root.children[0].children if getattr(c, "scale_y", 1.0) == 1.5]
    assert big and big[0].children[0].name == "sam3d.threedfy"
    props = {i.name: i for i in root.find("prop") if i.name in ("model", "device", "steps", "seed")}
    assert {n: p.text for n, p in props.items()} == {"model": "Model", "device": "Device", "steps": "Steps",
                                                     "seed": "Seed"}
    for name, item in props.items():
        assert item.value == getattr(settings, name) and item.flags["use_property_split"]
    assert props["steps"].display == "7" and props["seed"].display == "3"
    assert props["device"].display == bpy.types.UILayout.enum_item_name(settings, "device", settings.device)
    assert props["model"].display == "Default"
    texture = {i.name: i for i in root.find("prop") if i.name in ("output", "bake_texture", "photo_projection")}
    assert [(n, texture[n].display) for n in ("output", "bake_texture", "photo_projection")] == \
        [("output", "Mesh"), ("bake_texture", True), ("photo_projection", False)]  # the defaults
    assert texture["bake_texture"].heading == "Texture" and texture["photo_projection"].flags["active"]

    (masks,) = root.find("template_list")
    assert masks.name == "masks" and masks.length == 1 and masks.min_rows == 3
    assert [(i.name, i.display, i.icon) for i in masks.rows[0].items()] == [("image", "chair_mask.png", "IMAGE_ALPHA")]
    (photo,) = root.find("template_ID")
    assert photo.display == "chair.png" and photo.open == "image.open"
    sources = [i.props.get("source") for i in root.find("operator", name="sam3d.mask_add")]
    assert sources == ["EMPTY", "NEW", "EDITOR"]  # the Image Editor shows the photo
    assert root.find("progress") == []
    assert [i.name for i in _draw(fig, space="view3d").find("operator", name="sam3d.mask_add")] == ["sam3d.mask_add"] * 2


def test_recorder_sees_progress_and_cancel_while_running(fig, settings):
    root = _draw(fig, "running")
    (bar,) = root.find("progress")
    assert bar.factor == pytest.approx(fig.RUNNING_PROGRESS)
    assert bar.text == f"{fig.RUNNING_STATUS} (50%)"
    ops = _ops(root)
    assert ("sam3d.cancel", "Cancel (Esc)") in ops
    assert "sam3d.threedfy" not in [name for name, _ in ops]
    assert not bpy.context.window_manager.sam3d_job.running  # the state is put back


def test_recorder_checks_like_uilayout(fig):
    root = fig.LayoutRecorder(fig.make_context("view3d"))
    with pytest.raises(AttributeError):
        root.no_such_setting = 1
    with pytest.raises(TypeError):
        root.label(text="x", icon="NO_SUCH_ICON")
    with pytest.raises(AttributeError):
        root.operator("sam3d.mask_add").no_such_property = 1


def test_rendered_figure_is_a_picture(fig, settings):
    idle = np.asarray(fig.render_panel(_draw(fig), scale=1).convert("RGB"))
    running = np.asarray(fig.render_panel(_draw(fig, "running"), scale=1).convert("RGB"))
    for img in (idle, running):
        assert img.shape[1] == 300 + fig.TAB_W and img.shape[0] > 300
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 50  # text, widgets, not one colour

    def blue(img):  # the progress bar's fill, #4772b3
        return int((np.abs(img.astype(int) - (0x47, 0x72, 0xB3)).sum(axis=-1) < 12).sum())

    assert blue(running) > blue(idle) + 1000
