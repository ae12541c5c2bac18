# SPDX-License-Identifier: GPL-3.0-or-later
"""A picture of the "SAM 3D" sidebar, drawn from the panel's own draw code.

`bpy` from PyPI runs headless: it has no window, so it cannot draw or screenshot its UI.  This
script gets as close as an honest figure can:

1. it installs and enables the extension in headless Blender the way the tests do (build the zip
   with `sam3d_addon.build_extension --no-wheels`, then `extensions.package_install_files`),
2. loads the bundled example photo and mask into `scene.sam3d`,
3. runs the panel's real draw function, `panels.draw_sam3d(layout, context)`, against
   `LayoutRecorder`, a stand-in for `bpy.types.UILayout` that records every row, column, label,
   property (UI name and current value read through RNA), operator (label from its RNA type) and
   template the panel asks for,
4. renders the recorded layout with Pillow, with the colours of Blender's default theme read
   from `bpy.context.preferences` and Blender's own UI font (Inter, shipped in the bpy wheel).

What is drawn is what the panel code asks for; how each kind of widget looks (template_ID's
buttons, the list box, icons) is an approximation of Blender's widgets, not Blender's pixels.

    python examples/sidebar_figure.py --out examples/screenshots/sidebar.png
    python examples/sidebar_figure.py --out examples/screenshots/sidebar_running.png --state running
"""

from __future__ import annotations

import argparse
import atexit
import importlib
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
MODULE = "bl_ext.user_default.sam3d"

# What the running figure shows: the status the pipeline publishes for one mask named
# "chair_mask" at sampler step 2 of the tiny model's 4 (`Pipeline.run`: 0.1 + 0.8 * 2/4).
RUNNING_STATUS = "chair_mask: step 2/4"
RUNNING_PROGRESS = 0.5


def _isolate_user_resources() -> None:
    """Keep Blender off the user's ~/.config/blender (as tests/conftest.py does); before bpy."""
    if "BLENDER_USER_RESOURCES" not in os.environ:
        path = tempfile.mkdtemp(prefix="sam3d_blender_user_")
        os.environ["BLENDER_USER_RESOURCES"] = path
        atexit.register(shutil.rmtree, path, ignore_errors=True)


# -- the add-on in headless Blender -----------------------------------------------------------

def install_addon():
    """Build the extension without wheels and install + enable it (as the tests' `addon`
    fixture does); returns the installed `panels` module."""
    _isolate_user_resources()
    import bpy

    if MODULE not in bpy.context.preferences.addons:
        with tempfile.TemporaryDirectory(prefix="sam3d_dist_") as out:
            proc = subprocess.run(
                [sys.executable, "-m", "sam3d_addon.build_extension", "--out", out, "--no-wheels"],
                capture_output=True, text=True, cwd=REPO)
            if proc.returncode != 0:
                raise RuntimeError(f"building the extension failed:\n{proc.stderr}")
            zips = sorted(Path(out).glob("*.zip"))
            result = bpy.ops.extensions.package_install_files(
                repo="user_default", filepath=str(zips[0]), enable_on_install=True)
            if result != {"FINISHED"}:
                raise RuntimeError(f"installing the extension failed: {result}")
    return importlib.import_module(MODULE + ".panels")


def load_example(scene, photo=EXAMPLES / "chair.png", masks=(EXAMPLES / "chair_mask.png",)):
    """Put the example photo and its mask(s) into the scene's SAM 3D settings."""
    import bpy

    settings = scene.sam3d
    settings.image = bpy.data.images.load(str(photo), check_existing=True)
    settings.masks.clear()
    for path in masks:
        settings.masks.add().image = bpy.data.images.load(str(path), check_existing=True)
    settings.active_mask_index = 0
    return settings


def make_context(space: str = "image"):
    """What `draw_sam3d` reads from the context.  Headless `bpy.context` has no area or space, so
    the editor is stood in for: with `space="image"` the Image Editor shows the panel's photo (the
    usual state while painting masks); with `space="view3d"` there is no image editor."""
    import bpy

    scene = bpy.context.scene
    space_data = None
    if space == "image":
        space_data = SimpleNamespace(type="IMAGE_EDITOR", image=scene.sam3d.image)
    elif space != "view3d":
        raise ValueError(f"space must be 'image' or 'view3d', not {space!r}")
    return SimpleNamespace(scene=scene, window_manager=bpy.context.window_manager,
                           area=None, space_data=space_data, preferences=bpy.context.preferences)


def set_job_state(window_manager, running: bool, progress: float = 0.0, status: str = "") -> None:
    """The window-manager job state the panel draws from (what the 3Dfy operator publishes)."""
    state = window_manager.sam3d_job
    state.running, state.progress, state.status = running, progress, status


# -- the recording stand-in for bpy.types.UILayout ----------------------------------------------

def _ui_icons() -> set[str]:
    import bpy

    return set(bpy.types.UILayout.bl_rna.functions["operator"].parameters["icon"].enum_items.keys())


_LAYOUT_PROPS = ("active", "active_default", "activate_init", "operator_context", "enabled", "alert",
                 "alignment", "direction", "scale_x", "scale_y", "ui_units_x", "ui_units_y", "emboss",
                 "use_property_split", "use_property_decorate")
# Copied from the parent when a sub-layout is made (as Blender's ui_litem_init_from_parent does).
_INHERITED = ("active", "enabled", "alert", "emboss", "operator_context", "use_property_split",
              "use_property_decorate")
_DEFAULTS = dict(active=True, active_default=False, activate_init=False, operator_context="INVOKE_DEFAULT",
                 enabled=True, alert=False, alignment="EXPAND", direction="VERTICAL", scale_x=1.0, scale_y=1.0,
                 ui_units_x=0.0, ui_units_y=0.0, emboss="NORMAL", use_property_split=False,
                 use_property_decorate=False)


class Item:
    """One recorded widget: `kind` (label, prop, operator, template_ID, template_list,
    template_icon, separator, progress), `text`, `icon`, and per kind: `name` (property or
    operator id), `value` (raw), `display` (as the widget shows it), `props` (operator
    properties set on the returned object), ... plus the layout flags in force when it was made."""

    def __init__(self, kind: str, layout: "LayoutRecorder", **fields):
        self.kind = kind
        self.text = ""
        self.icon = "NONE"
        self.flags = {k: getattr(layout, k) for k in _INHERITED}
        self.__dict__.update(fields)

    def __repr__(self):
        keys = ("name", "text", "icon", "display", "props", "factor")
        return f"Item({self.kind}: " + ", ".join(f"{k}={getattr(self, k)!r}" for k in keys if hasattr(self, k)) + ")"


class _OperatorProperties:
    """What `layout.operator()` returns: setting a property checks it against the operator's RNA."""

    def __init__(self, idname: str, rna, store: dict):
        object.__setattr__(self, "_idname", idname)
        object.__setattr__(self, "_rna", rna)
        object.__setattr__(self, "_store", store)

    def __setattr__(self, key, value):
        if key not in self._rna.properties:
            raise AttributeError(f"operator {self._idname} has no property {key!r}")
        self._store[key] = value

    def __getattr__(self, key):
        try:
            return self._store[key]
        except KeyError:
            raise AttributeError(key) from None


class LayoutRecorder:
    """A stand-in for `bpy.types.UILayout` that records what a draw function asks for.

    `kind` is "column" or "row"; `children` holds sub-layouts and `Item`s in call order.  Only the
    UILayout properties may be set (anything else raises AttributeError, like the real one), and
    property names, operators, UI lists and icons are checked against Blender's RNA."""

    _OWN = ("kind", "align", "heading", "children", "context", "_icons")

    def __init__(self, context=None, kind: str = "column", align: bool = False, heading: str = "",
                 parent: "LayoutRecorder | None" = None):
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "align", align)
        object.__setattr__(self, "heading", heading)
        object.__setattr__(self, "children", [])
        object.__setattr__(self, "context", context if parent is None else parent.context)
        object.__setattr__(self, "_icons", _ui_icons() if parent is None else parent._icons)
        for key, value in _DEFAULTS.items():
            object.__setattr__(self, key, getattr(parent, key) if parent is not None and key in _INHERITED else value)

    def __setattr__(self, key, value):
        if key not in _LAYOUT_PROPS:
            raise AttributeError(f"'UILayout' object has no attribute {key!r}")
        object.__setattr__(self, key, value)

    # -- queries (for tests and the renderer) ---------------------------------------------------
    def items(self):
        """Every recorded Item in draw order (depth first), including UI list rows' items."""
        for child in self.children:
            if isinstance(child, LayoutRecorder):
                yield from child.items()
            else:
                yield child
                for row in getattr(child, "rows", ()):
                    yield from row.items()

    def find(self, kind: str, **match) -> list[Item]:
        return [i for i in self.items() if i.kind == kind and all(getattr(i, k, None) == v for k, v in match.items())]

    # -- sub-layouts ----------------------------------------------------------------------------
    def _sub(self, kind, align=False, heading=""):
        sub = LayoutRecorder(kind=kind, align=align, heading=heading, parent=self)
        self.children.append(sub)
        return sub

    def column(self, align=False, heading="", heading_ctxt="", translate=True):
        return self._sub("column", align, heading)

    def row(self, align=False, heading="", heading_ctxt="", translate=True):
        return self._sub("row", align, heading)

    def box(self):
        return self._sub("box")

    def split(self, factor=0.0, align=False):
        return self._sub("row", align)

    # -- items ----------------------------------------------------------------------------------
    def _icon(self, icon):
        if icon not in self._icons:
            raise TypeError(f"UILayout: icon {icon!r} not found")
        return icon

    def _add(self, kind, **fields) -> Item:
        item = Item(kind, self, **fields)
        self.children.append(item)
        return item

    def label(self, text="", text_ctxt="", translate=True, icon="NONE", icon_value=0):
        self._add("label", text=text, icon=self._icon(icon))

    def separator(self, factor=1.0, type="AUTO"):
        self._add("separator", factor=factor)

    def prop(self, data, property, text=None, icon="NONE", expand=False, slider=False, toggle=-1,
             icon_only=False, event=False, full_event=False, emboss=True, index=-1, icon_value=0,
             invert_checkbox=False, placeholder="", text_ctxt="", translate=True):
        import bpy

        rna = data.bl_rna.properties.get(property)
        if rna is None:
            raise AttributeError(f"property not found: {data.bl_rna.identifier}.{property}")
        value = getattr(data, property)
        if rna.type == "ENUM":
            display = bpy.types.UILayout.enum_item_name(data, property, value) if value else ""
        elif rna.type == "POINTER":
            display = value.name if value is not None and hasattr(value, "name") else ""
        elif rna.type == "FLOAT":
            display = f"{value * 100:.0f}%" if rna.subtype == "PERCENTAGE" else f"{value:.{max(rna.precision, 1)}f}"
        elif rna.type == "BOOLEAN":
            display = bool(value)
        else:
            display = str(value)
        label = rna.name if text is None else text
        # A column's / row's heading labels its first widget (property split: in the label column).
        heading = self.heading if not any(isinstance(c, Item) for c in self.children) else ""
        self._add("prop", name=property, text=label, rna_name=rna.name, icon=self._icon(icon), value=value,
                  display=display, type=rna.type, subtype=rna.subtype, emboss=emboss, icon_only=icon_only,
                  heading=heading)

    def operator(self, operator, text=None, text_ctxt="", translate=True, icon="NONE", emboss=True,
                 depress=False, icon_value=0, search_weight=0.0):
        import bpy

        module, name = operator.split(".")
        rna = getattr(getattr(bpy.ops, module), name).get_rna_type()  # raises for unknown operators
        store: dict = {}
        self._add("operator", name=operator, text=rna.name if text is None else text, op_label=rna.name,
                  icon=self._icon(icon), props=store, emboss=emboss)
        return _OperatorProperties(operator, rna, store)

    def template_ID(self, data, property, new="", open="", unlink="", filter="ALL", live_icon=False,
                    text="", text_ctxt="", translate=True):
        rna = data.bl_rna.properties.get(property)
        if rna is None:
            raise AttributeError(f"property not found: {data.bl_rna.identifier}.{property}")
        value = getattr(data, property)
        self._add("template_ID", name=property, text=text, value=value, display=value.name if value else "",
                  new=new, open=open, unlink=unlink)

    def template_list(self, listtype_name, list_id, dataptr, propname, active_dataptr, active_propname,
                      item_dyntip_propname="", rows=5, maxrows=5, type="DEFAULT", columns=9,
                      sort_reverse=False, sort_lock=False):
        import bpy

        list_cls = getattr(bpy.types, listtype_name, None)
        if list_cls is None:
            raise TypeError(f"UIList {listtype_name!r} is not registered")
        if propname not in dataptr.bl_rna.properties or active_propname not in active_dataptr.bl_rna.properties:
            raise AttributeError(f"{propname!r} / {active_propname!r} not found")
        collection = getattr(dataptr, propname)
        active = getattr(active_dataptr, active_propname)
        item_rows = []
        for index, entry in enumerate(collection):  # each row drawn by the list's own draw_item
            row = LayoutRecorder(kind="row", parent=self)
            list_cls.draw_item(None, self.context, row, dataptr, entry, 0, active_dataptr, active_propname, index)
            item_rows.append(row)
        self._add("template_list", name=propname, list_type=listtype_name, rows=item_rows, active=active,
                  min_rows=rows, length=len(item_rows))

    def template_icon(self, icon_value=0, scale=1.0):
        self._add("template_icon", icon_value=icon_value, scale=scale)

    def progress(self, text="", text_ctxt="", translate=True, factor=0.0, type="BAR"):
        self._add("progress", text=text, factor=factor, type=type)


def record_panel(panels, context) -> LayoutRecorder:
    """Run the panel's draw code against a recorder; returns the recorded root layout."""
    root = LayoutRecorder(context)
    panels.draw_sam3d(root, context)
    return root


# -- rendering --------------------------------------------------------------------------------

def _rgba(color, alpha=None):
    c = [round(float(v) * 255) for v in color]
    if len(c) == 3:
        c.append(255)
    if alpha is not None:
        c[3] = alpha
    return tuple(c)


def _over(top, bottom):
    """`top` (RGBA) composited over an opaque `bottom`."""
    a = top[3] / 255
    return tuple(round(top[i] * a + bottom[i] * (1 - a)) for i in range(3)) + (255,)


def blender_theme() -> dict:
    """The colours of Blender's default theme, read from the running bpy (fallback: 4.x/5.0 values)."""
    hexes = dict(region="#303030", tab_back="#181818", tab="#1d1d1d", tab_sel="#303030", tab_text="#989898",
                 tab_text_sel="#ffffff", panel_header="#3d3d3d", panel_back="#3d3d3d", panel_title="#e6e6e6",
                 panel_text="#e6e6e6", panel_outline="#ffffff11", emboss="#00000026")
    theme = {k: tuple(int(v[i:i + 2], 16) for i in range(1, len(v), 2)) + ((255,) if len(v) == 7 else ())
             for k, v in hexes.items()}
    wcol = {"tool": ("#545454", "#e6e6e6"), "regular": ("#545454", "#e6e6e6"), "text": ("#1d1d1d", "#e6e6e6"),
            "menu": ("#282828", "#e6e6e6"), "num": ("#545454", "#e6e6e6"), "toggle": ("#545454", "#e6e6e6"),
            "option": ("#545454", "#e6e6e6"), "progress": ("#222222", "#e6e6e6"),
            "list_item": ("#00000000", "#cccccc"), "box": ("#1d1d1d80", "#e6e6e6")}
    for name, (inner, text) in wcol.items():
        rgba = lambda h: tuple(int(h[i:i + 2], 16) for i in range(1, len(h), 2)) + ((255,) if len(h) == 7 else ())
        theme["w_" + name] = dict(inner=rgba(inner), inner_sel=(71, 114, 179, 255), item=(71, 114, 179, 255),
                                  outline=(61, 61, 61, 255), text=rgba(text), text_sel=(255, 255, 255, 255),
                                  roundness=0.4)
    try:
        import bpy

        th = bpy.context.preferences.themes[0]
        ui = th.user_interface
        theme.update(panel_header=_rgba(ui.panel_header), panel_back=_rgba(ui.panel_back),
                     panel_title=_rgba(ui.panel_title), panel_text=_rgba(ui.panel_text),
                     panel_outline=_rgba(ui.panel_outline), emboss=_rgba(ui.widget_emboss))
        theme.update(region=_rgba(th.regions.sidebars.back[:3]), tab_back=_rgba(th.regions.sidebars.tab_back[:3]))
        tab = ui.wcol_tab
        theme.update(tab=_rgba(tab.inner), tab_sel=_rgba(tab.inner_sel), tab_text=_rgba(tab.text),
                     tab_text_sel=_rgba(tab.text_sel))
        for name in wcol:
            w = getattr(ui, "wcol_" + name)
            theme["w_" + name] = dict(inner=_rgba(w.inner), inner_sel=_rgba(w.inner_sel), item=_rgba(w.item),
                                      outline=_rgba(w.outline), text=_rgba(w.text), text_sel=_rgba(w.text_sel),
                                      roundness=w.roundness)
    except Exception:  # noqa: BLE001 - no bpy, or a theme layout this script does not know: fallbacks
        pass
    return theme


def _font_path() -> str | None:
    """Blender's UI font (Inter) from the bpy wheel, if it is there."""
    try:
        import bpy

        base = Path(bpy.utils.resource_path("LOCAL"))
    except Exception:  # noqa: BLE001
        return None
    path = base / "datafiles" / "fonts" / "Inter.woff2"
    return str(path) if path.is_file() else None


# Sizes in Blender UI pixels at resolution scale 1 (UI_UNIT_X/Y = 20, widget text 11 pt).
UNIT = 20
FONT_PT = 11
SPACE_Y = 2          # between items in a column
SPACE_X = 5          # between items in a row
SEPARATOR = 6        # layout.separator() in a column
PANEL_MARGIN = 5     # region edge to panel
PANEL_PAD_X = 10     # panel edge to its content
HEADER_H = 26
TAB_W = 22
SPLIT = 0.4          # use_property_split: label share of the width


class Renderer:
    """Draws a recorded layout as a Blender sidebar panel.  All sizes are in UI pixels; `k` is the
    pixel scale (output scale x 2 for supersampling)."""

    def __init__(self, theme: dict, k: float):
        from PIL import ImageFont

        self.t = theme
        self.k = k
        path = _font_path()
        size = round(FONT_PT * k)
        self.font = ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)
        self.draw = None

    # -- primitives ---------------------------------------------------------------------------
    def px(self, v):
        return round(v * self.k)

    def box(self, x0, y0, x1, y1, fill, radius=4.0, corners=None, outline=None):
        if self.draw is None:
            return
        k = self.k
        xy = (round(x0 * k), round(y0 * k), round(x1 * k) - 1, round(y1 * k) - 1)
        self.draw.rounded_rectangle(xy, radius=round(radius * k), fill=fill, corners=corners,
                                    outline=outline, width=max(1, round(k)) if outline else 0)

    def widget(self, x0, y0, x1, y1, wcol, fill=None, corners=None):
        """A widget's body: emboss line, rounded box in the theme's inner colour."""
        radius = wcol["roundness"] * UNIT * 0.5
        self.box(x0, y0 + 1, x1, y1 + 1, self.t["emboss"], radius, corners)
        self.box(x0, y0, x1, y1, fill or wcol["inner"], radius, corners, outline=wcol["outline"])

    def text_width(self, text):
        return self.font.getlength(text) / self.k

    def fit(self, text, width):
        """`text`, cut with an ellipsis to fit `width` UI pixels."""
        if self.text_width(text) <= width:
            return text
        while text and self.text_width(text + "…") > width:
            text = text[:-1]
        return text + "…" if text else ""

    def text(self, x, yc, text, color, anchor="lm", width=None):
        if width is not None:
            text = self.fit(text, width)
        if self.draw is not None and text:
            self.draw.text((round(x * self.k), round((yc + 0.5) * self.k)), text, font=self.font, fill=color,
                           anchor=anchor)

    def line(self, pts, color, w=1.3):
        if self.draw is not None:
            self.draw.line([(round(x * self.k), round(y * self.k)) for x, y in pts], fill=color,
                           width=max(1, round(w * self.k)), joint="curve")

    def ellipse(self, cx, cy, rx, ry, color, fill=None, w=1.3):
        if self.draw is not None:
            k = self.k
            self.draw.ellipse((round((cx - rx) * k), round((cy - ry) * k), round((cx + rx) * k), round((cy + ry) * k)),
                              outline=color, fill=fill, width=max(1, round(w * k)))

    def poly(self, pts, color):
        if self.draw is not None:
            self.draw.polygon([(round(x * self.k), round(y * self.k)) for x, y in pts], fill=color)

    # -- icons: small vector glyphs in a 16 x 16 box centred on (cx, cy) ----------------------
    def icon(self, name, cx, cy, color):
        if name in (None, "NONE") or self.draw is None:
            return
        L = self.line
        if name == "ADD":
            L([(cx - 5, cy), (cx + 5, cy)], color, 1.5)
            L([(cx, cy - 5), (cx, cy + 5)], color, 1.5)
        elif name == "REMOVE":
            L([(cx - 5, cy), (cx + 5, cy)], color, 1.5)
        elif name in ("PANEL_CLOSE", "X"):
            L([(cx - 4, cy - 4), (cx + 4, cy + 4)], color, 1.5)
            L([(cx - 4, cy + 4), (cx + 4, cy - 4)], color, 1.5)
        elif name == "BRUSH_DATA":
            L([(cx + 6, cy - 6), (cx - 1, cy + 1)], color, 1.8)
            self.poly([(cx - 1, cy - 1), (cx + 1, cy + 1), (cx - 2, cy + 5), (cx - 6, cy + 6), (cx - 5, cy + 2)], color)
        elif name in ("IMAGE_DATA", "IMAGE_ALPHA", "IMAGE"):
            self.box(cx - 6.5, cy - 5.5, cx + 6.5, cy + 5.5, None, 1.5, outline=color)
            if name == "IMAGE_ALPHA":
                for i in range(3):
                    for j in range(2):
                        if (i + j) % 2 == 0:
                            self.box(cx - 4.5 + 3 * i, cy - 3.5 + 3.5 * j, cx - 1.5 + 3 * i, cy + 3.5 * j,
                                     color, 0)
            else:
                self.poly([(cx - 4.5, cy + 3.5), (cx - 1, cy - 1), (cx + 1.5, cy + 1.5), (cx + 3, cy),
                           (cx + 4.5, cy + 3.5)], color)
                self.ellipse(cx + 2.5, cy - 2.5, 1.2, 1.2, color, fill=color, w=0.5)
        elif name == "MESH_MONKEY":
            self.ellipse(cx - 5, cy - 2, 2.2, 2.2, color, fill=color, w=0.5)
            self.ellipse(cx + 5, cy - 2, 2.2, 2.2, color, fill=color, w=0.5)
            self.ellipse(cx, cy, 4.5, 5.5, color, fill=color, w=0.5)
            bg = (40, 40, 40, 255)
            self.ellipse(cx - 1.8, cy - 1, 1.2, 1.4, bg, fill=bg, w=0.5)
            self.ellipse(cx + 1.8, cy - 1, 1.2, 1.4, bg, fill=bg, w=0.5)
            self.ellipse(cx, cy + 3, 2.6, 1.4, bg, fill=bg, w=0.5)
        elif name == "MOD_PHYSICS":
            self.ellipse(cx, cy, 2.8, 2.8, color, fill=color, w=0.5)  # a planet and its tilted orbit
            ring = [(cx + 7 * math.cos(a) * 0.87 - 3 * math.sin(a) * 0.5,
                     cy + 7 * math.cos(a) * 0.5 + 3 * math.sin(a) * 0.87)
                    for a in (i * math.pi / 24 for i in range(49))]
            L(ring, color, 1.1)
        elif name == "TRASH":
            L([(cx - 5.5, cy - 4), (cx + 5.5, cy - 4)], color, 1.3)
            L([(cx - 1.5, cy - 5.5), (cx + 1.5, cy - 5.5)], color, 1.3)
            L([(cx - 4, cy - 3), (cx - 3.2, cy + 6), (cx + 3.2, cy + 6), (cx + 4, cy - 3)], color, 1.3)
            L([(cx - 1, cy - 1.5), (cx - 1, cy + 4)], color, 1)
            L([(cx + 1, cy - 1.5), (cx + 1, cy + 4)], color, 1)
        elif name == "CANCEL":
            self.ellipse(cx, cy, 6, 6, color, w=1.3)
            L([(cx - 2.5, cy - 2.5), (cx + 2.5, cy + 2.5)], color, 1.3)
            L([(cx - 2.5, cy + 2.5), (cx + 2.5, cy - 2.5)], color, 1.3)
        elif name == "INFO":
            self.ellipse(cx, cy, 6, 6, color, w=1.3)
            L([(cx, cy - 0.5), (cx, cy + 3.5)], color, 1.4)
            self.ellipse(cx, cy - 3, 0.8, 0.8, color, fill=color, w=0.5)
        elif name in ("FILEBROWSER", "FILE_FOLDER"):
            self.poly([(cx - 6.5, cy - 4.5), (cx - 2, cy - 4.5), (cx - 0.5, cy - 3), (cx + 6.5, cy - 3),
                       (cx + 6.5, cy + 5), (cx - 6.5, cy + 5)], color)
        elif name == "FAKE_USER_OFF":
            L([(cx - 5, cy - 4), (cx, cy - 6), (cx + 5, cy - 4), (cx + 4.5, cy + 1.5), (cx, cy + 6),
               (cx - 4.5, cy + 1.5), (cx - 5, cy - 4)], color, 1.2)
        elif name == "DOWNARROW_HLT":
            L([(cx - 3, cy - 1.5), (cx, cy + 1.5), (cx + 3, cy - 1.5)], color, 1.3)
        else:  # an icon this figure has no glyph for: a neutral placeholder
            self.box(cx - 5, cy - 5, cx + 5, cy + 5, None, 2, outline=color)

    # -- layout -------------------------------------------------------------------------------
    def _fixed_width(self, node):
        """Width of a node that does not stretch in a row (icon-only buttons, columns of them)."""
        if isinstance(node, LayoutRecorder):
            widths = [self._fixed_width(c) for c in node.children]
            widths = [w for c, w in zip(node.children, widths) if not (isinstance(c, Item) and c.kind == "separator")
                      or node.kind == "row"]
            if not widths or any(w is None for w in widths):
                return None
            if node.kind == "row":
                return sum(widths) + (0 if node.align else SPACE_X) * (len(widths) - 1)
            return max(widths)
        if node.kind == "separator":
            return SEPARATOR
        if node.kind in ("operator", "prop") and node.text == "" and node.icon != "NONE" and \
                not (node.kind == "prop" and node.type in ("POINTER", "STRING", "ENUM", "INT", "FLOAT")):
            return UNIT
        return None

    def layout(self, node, x, y, w, scale=1.0, corners=None):
        """Place (and, when drawing, draw) a node in the box x..x+w from y; returns its height."""
        if isinstance(node, LayoutRecorder):
            scale *= node.scale_y
            return self._row(node, x, y, w, scale) if node.kind == "row" else self._column(node, x, y, w, scale)
        return self._item(node, x, y, w, scale, corners)

    @staticmethod
    def _runs(children, horizontal):
        """Corners for aligned children: (tl, tr, br, bl) per child; separators break a run."""
        out = [None] * len(children)
        run = []
        for i, c in enumerate(children + [None]):
            if c is None or (isinstance(c, Item) and c.kind == "separator"):
                for j, idx in enumerate(run):
                    first, last = j == 0, j == len(run) - 1
                    out[idx] = (first, last, last, first) if horizontal else (first, first, last, last)
                run = []
            else:
                run.append(i)
        return out

    def _column(self, node, x, y, w, scale):
        corners = self._runs(node.children, False) if node.align else [None] * len(node.children)
        y0, prev = y, None
        for child, c in zip(node.children, corners):
            is_sep = isinstance(child, Item) and child.kind == "separator"
            if prev is not None and not node.align and not is_sep and not prev:
                y += SPACE_Y
            y += self.layout(child, x, y, w, scale, c)
            prev = is_sep
        return y - y0

    def _row(self, node, x, y, w, scale):
        kids = node.children
        if not kids:
            return 0
        gap = 0 if node.align else SPACE_X
        fixed = [self._fixed_width(c) for c in kids]
        flex = [i for i, f in enumerate(fixed) if f is None]
        spare = w - sum(f for f in fixed if f is not None) - gap * (len(kids) - 1)
        widths = [f if f is not None else spare / len(flex) for f in fixed]
        if not flex:  # nothing stretches: Blender's EXPAND rows still fill the width
            widths = [wi * (w - gap * (len(kids) - 1)) / sum(widths) for wi in widths]
        corners = self._runs(kids, True) if node.align else [None] * len(kids)
        h = 0
        for child, cw, c in zip(kids, widths, corners):
            h = max(h, self.layout(child, x, y, cw, scale, c))
            x += cw + gap
        return h

    def _item(self, it, x, y, w, scale, corners):
        t = self.t
        alpha = 255 if it.flags.get("enabled", True) and it.flags.get("active", True) else 128
        hgt = UNIT * scale
        yc = y + hgt / 2
        if it.kind == "separator":
            return SEPARATOR * it.factor
        if it.kind == "label":
            tx = x + 2
            if it.icon != "NONE":
                self.icon(it.icon, x + 10, yc, t["panel_text"])
                tx = x + 22
            self.text(tx, yc, it.text, t["panel_text"][:3] + (alpha,), width=w - (tx - x))
            return hgt
        if it.kind == "operator":
            wcol = t["w_tool"]
            self.widget(x, y, x + w, y + hgt, wcol, corners=corners)
            text = self.fit(it.text, w - (24 if it.icon != "NONE" else 8))
            tw = self.text_width(text) if text else 0
            iw = 16 if it.icon != "NONE" else 0
            total = tw + iw + (4 if text and iw else 0)
            left = x + (w - total) / 2
            if iw:
                self.icon(it.icon, left + 8, yc, wcol["text"])
            self.text(left + iw + (4 if iw else 0), yc, text, wcol["text"])
            return hgt
        if it.kind == "prop":
            return self._prop(it, x, y, w, hgt, corners)
        if it.kind == "template_ID":
            return self._template_id(it, x, y, w)
        if it.kind == "template_list":
            return self._template_list(it, x, y, w)
        if it.kind == "template_icon":
            size = min(w, UNIT * it.scale)
            self.box(x + (w - size) / 2, y, x + (w + size) / 2, y + size, t["w_box"]["inner"], 4)
            self.text(x + w / 2, y + size / 2, "preview", t["tab_text"], anchor="mm")
            return size
        if it.kind == "progress":
            wcol = t["w_progress"]
            self.widget(x, y, x + w, y + hgt, wcol)
            f = min(max(float(it.factor), 0.0), 1.0)
            if f > 0:
                self.box(x + 1, y + 1, x + 1 + max((w - 2) * f, 6), y + hgt - 1, wcol["item"],
                         wcol["roundness"] * UNIT * 0.5 - 1)  # inside the outline
            self.text(x + w / 2, yc, self.fit(it.text, w - 8), wcol["text"], anchor="mm")
            return hgt
        raise ValueError(f"cannot render {it.kind}")

    def _prop(self, it, x, y, w, hgt, corners):
        t = self.t
        yc = y + hgt / 2
        split = it.flags.get("use_property_split") and it.text and it.type != "BOOLEAN"
        if split:
            lw = w * SPLIT
            self.text(x + lw - 8, yc, self.fit(it.text, lw - 10), t["panel_text"], anchor="rm")
            x, w = x + lw, w - lw
        if it.type == "ENUM":
            wcol = t["w_menu"]
            self.widget(x, y, x + w, y + hgt, wcol, corners=corners)
            label = it.display if split or not it.text else f"{it.text}: {it.display}"
            self.text(x + 7, yc, label, wcol["text"], width=w - 24)
            self.icon("DOWNARROW_HLT", x + w - 10, yc, wcol["text"])
        elif it.type in ("INT", "FLOAT"):
            wcol = t["w_num"]
            self.widget(x, y, x + w, y + hgt, wcol, corners=corners)
            if split or not it.text:
                self.text(x + w / 2, yc, self.fit(it.display, w - 8), wcol["text"], anchor="mm")
            else:
                self.text(x + 7, yc, it.text, wcol["text"], width=w / 2)
                self.text(x + w - 7, yc, it.display, wcol["text"], anchor="rm")
        elif it.type == "BOOLEAN":
            if it.flags.get("use_property_split"):  # the checkbox sits in the value column
                lw = w * SPLIT
                if it.heading:
                    self.text(x + lw - 8, yc, self.fit(it.heading, lw - 10), t["panel_text"], anchor="rm")
                x, w = x + lw, w - lw
            wcol = t["w_option"]
            self.widget(x + 2, yc - 7, x + 16, yc + 7, wcol, fill=wcol["inner_sel"] if it.display else None)
            if it.display:
                self.line([(x + 5.5, yc), (x + 8, yc + 3), (x + 13, yc - 3)], wcol["item"], 1.6)
            self.text(x + 22, yc, it.text, t["panel_text"], width=w - 22)
        else:  # POINTER / STRING: a text (search) field
            wcol = t["w_text"]
            self.widget(x, y, x + w, y + hgt, wcol, corners=corners)
            tx = x + 6
            if it.icon != "NONE":
                self.icon(it.icon, x + 11, yc, wcol["text"])
                tx = x + 22
            label = it.display if split or not it.text else f"{it.text}: {it.display}"
            self.text(tx, yc, label, wcol["text"], width=x + w - tx - 4)
        return hgt

    def _template_id(self, it, x, y, w):
        """Blender's ID template for a set image: browse | name | fake user | open | unlink."""
        t = self.t
        yc = y + UNIT / 2
        bw = 1.6 * UNIT
        parts = [("browse", bw)]
        tail = [("fake", UNIT)] + ([("open", UNIT)] if it.open else []) + [("unlink", UNIT)]
        name_w = w - bw - sum(p[1] for p in tail)
        parts += [("name", name_w)] + tail
        n = len(parts)
        for i, (part, pw) in enumerate(parts):
            corners = (i == 0, i == n - 1, i == n - 1, i == 0)
            wcol = {"browse": t["w_menu"], "name": t["w_text"], "fake": t["w_toggle"]}.get(part, t["w_tool"])
            self.widget(x, y, x + pw, y + UNIT, wcol, corners=corners)
            if part == "browse":
                self.icon("IMAGE_DATA", x + 12, yc, wcol["text"])
                self.line([(x + 22.5, yc - 1), (x + 24.5, yc + 1.5), (x + 26.5, yc - 1)], wcol["text"], 1.1)
            elif part == "name":
                self.text(x + 6, yc, it.display, wcol["text"], width=pw - 10)
            elif part == "fake":
                self.icon("FAKE_USER_OFF", x + pw / 2, yc, wcol["text"])
            elif part == "open":
                self.icon("FILEBROWSER", x + pw / 2, yc, wcol["text"])
            else:
                self.icon("PANEL_CLOSE", x + pw / 2, yc, wcol["text"])
            x += pw
        return UNIT

    def _template_list(self, it, x, y, w):
        """A UI list: a box with `max(rows, len)` rows (the active one highlighted), each row drawn
        from what the list's draw_item recorded, then the grip with the filter-options arrow."""
        t = self.t
        n = max(it.min_rows, it.length)
        pad = 3
        grip = 12
        h = pad * 2 + n * UNIT + grip
        self.box(x, y, x + w, y + h, _over(t["w_box"]["inner"], t["panel_back"]), 5)
        ry = y + pad
        for i in range(n):
            if i < it.length:
                if i == it.active:
                    self.box(x + pad, ry, x + w - pad, ry + UNIT, t["w_list_item"]["inner_sel"], 3)
                self.layout(it.rows[i], x + pad + 2, ry + 1, w - 2 * pad - 4, (UNIT - 2) / UNIT)
            ry += UNIT
        gy = y + h - grip / 2 - 1
        col = t["tab_text"]
        self.poly([(x + 8, gy - 3), (x + 12, gy), (x + 8, gy + 3)], col)  # filter options (closed)
        for i in range(-2, 3):
            for j in (-1.5, 1.5):
                self.ellipse(x + w / 2 + 3.5 * i, gy + j, 0.6, 0.6, col, fill=col, w=0.3)
        return h

    # -- the panel in its region --------------------------------------------------------------
    def render(self, root, title="SAM 3D", tab="SAM 3D", width=300):
        from PIL import Image, ImageDraw

        t = self.t
        inner_w = width - 2 * PANEL_MARGIN - 2 * PANEL_PAD_X
        self.draw = None
        body_h = self.layout(root, 0, 0, inner_w)
        panel_h = HEADER_H + 4 + body_h + 10
        total_w, total_h = width + TAB_W, panel_h + 2 * PANEL_MARGIN + 16
        img = Image.new("RGB", (self.px(total_w), self.px(total_h)), t["region"][:3])
        self.draw = ImageDraw.Draw(img, "RGBA")

        # region tabs, on the region's right edge; the text reads top to bottom
        self.box(width, 0, total_w, total_h, t["tab_back"], 0)
        tab_len = self.text_width(tab) + 20
        self.box(width - 4, PANEL_MARGIN + 2, total_w - 2, PANEL_MARGIN + 2 + tab_len, t["tab_sel"], 4,
                 corners=(False, True, True, False))
        label = Image.new("RGBA", (self.px(tab_len), self.px(TAB_W - 4)), (0, 0, 0, 0))
        ImageDraw.Draw(label).text((self.px(tab_len / 2), self.px((TAB_W - 4) / 2 + 0.5)), tab, font=self.font,
                                   fill=t["tab_text_sel"], anchor="mm")
        label = label.rotate(-90, expand=True)
        img.paste(label, (self.px(width - 1), self.px(PANEL_MARGIN + 2)), label)

        # the panel: header (open triangle, title, drag grip) and body
        x0, y0, x1 = PANEL_MARGIN, PANEL_MARGIN, width - PANEL_MARGIN
        radius = 0.4 * UNIT * 0.5
        self.box(x0, y0, x1, y0 + panel_h, t["panel_back"], radius, outline=t["panel_outline"])
        self.box(x0, y0, x1, y0 + HEADER_H, t["panel_header"], radius, corners=(True, True, False, False))
        hc = y0 + HEADER_H / 2
        self.poly([(x0 + 8, hc - 2.5), (x0 + 16, hc - 2.5), (x0 + 12, hc + 2.5)], t["panel_title"])
        self.text(x0 + 22, hc, title, t["panel_title"])
        for i in range(4):
            for j in (-1.5, 1.5):
                self.ellipse(x1 - 10 - 3 * i, hc + j, 0.6, 0.6, t["tab_text"], fill=t["tab_text"], w=0.3)
        self.layout(root, x0 + PANEL_PAD_X, y0 + HEADER_H + 4, inner_w)
        self.draw = None
        return img


def render_panel(root: LayoutRecorder, scale: int = 2, width: int = 300, title: str = "SAM 3D",
                 supersample: int = 2):
    """The recorded layout as a PIL image: a `width` UI-pixel sidebar at `scale` x resolution."""
    from PIL import Image

    renderer = Renderer(blender_theme(), scale * supersample)
    img = renderer.render(root, title=title, tab=title, width=width)
    if supersample > 1:
        img = img.resize((img.width // supersample, img.height // supersample), Image.LANCZOS)
    return img


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=EXAMPLES / "screenshots" / "sidebar.png")
    parser.add_argument("--state", choices=("idle", "running"), default="idle",
                        help="running: a 3Dfy job in progress (progress bar and Cancel)")
    parser.add_argument("--space", choices=("image", "view3d"), default="image",
                        help="the sidebar of the Image Editor (showing the photo) or of the 3D Viewport")
    parser.add_argument("--scale", type=int, default=2, help="pixels per Blender UI pixel")
    args = parser.parse_args(argv)

    panels = install_addon()
    import bpy

    load_example(bpy.context.scene)
    context = make_context(args.space)
    running = args.state == "running"
    set_job_state(context.window_manager, running, RUNNING_PROGRESS if running else 0.0,
                  RUNNING_STATUS if running else "")
    try:
        root = record_panel(panels, context)
    finally:
        set_job_state(context.window_manager, False)
    img = render_panel(root, scale=args.scale)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    img.save(args.out, optimize=True)
    print(args.out)
    return args.out


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))  # sam3d_addon for the extension build, when run as a script
    main()
