"""A scene as plain data, and the executor that applies validated programs to it in NumPy.

`SceneState` is a snapshot of what refinement may read or change: mesh objects (object-space
vertices/faces, matrix_world, material parameters, the mask they came from), lights, the photo
camera and the 3Dfy masks.  The Blender bridge (Section C) reads one from a bpy scene and
applies one back; everything here is NumPy, so candidate programs run on cheap copies and the
live scene changes only when a candidate is kept.

World coordinates are Blender's (Z up, metres).  Object vertices are in object space and never
modified by actions (they change transforms only), so copies share them.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace

import numpy as np

from .actions import CAMERA, GROUND, Action


@dataclass
class MaterialState:
    base_color: tuple[float, float, float] = (0.6, 0.6, 0.6)  # linear RGB
    roughness: float = 0.8
    metallic: float = 0.0
    description: str = ""


@dataclass
class ObjectState:
    name: str
    matrix_world: np.ndarray  # [4,4]
    vertices: np.ndarray  # [V,3] object space (shared between copies: never modified)
    faces: np.ndarray  # [F,3] triangles
    material: MaterialState | None = None
    mask_id: str | None = None  # which 3Dfy mask this object was made from
    source: str | None = None  # for duplicates: the live object to copy

    def world_vertices(self) -> np.ndarray:
        M = self.matrix_world
        return self.vertices @ M[:3, :3].T + M[:3, 3]

    def world_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        v = self.world_vertices()
        return v.min(axis=0), v.max(axis=0)


@dataclass
class LightState:
    name: str
    type: str  # POINT | SUN | SPOT | AREA
    position: np.ndarray  # [3]
    power: float  # W (SUN: strength)
    color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    new: bool = False  # created by a program (not yet in the live scene)


@dataclass
class CameraState:
    matrix_world: np.ndarray  # [4,4], Blender camera (looks down its -Z, +Y up)
    lens_mm: float
    sensor_width_mm: float
    resolution: tuple[int, int]  # (width, height)

    @property
    def focal_px(self) -> float:
        # sensor_fit AUTO: the sensor width spans the longer image side
        return self.lens_mm / self.sensor_width_mm * max(self.resolution)

    def project(self, points_world: np.ndarray, size: tuple[int, int] | None = None):
        """World points -> raster (u, v) (u right, v down, pixel centres at +0.5) and depth.

        `size` renders at another (width, height) with the same field of view.
        """
        w, h = self.resolution if size is None else size
        k = max(w, h) / max(self.resolution)
        C = self.matrix_world
        p = (np.asarray(points_world, float) - C[:3, 3]) @ C[:3, :3]  # camera frame
        depth = -p[:, 2]
        z = np.where(np.abs(depth) < 1e-9, 1e-9, depth)
        f = self.focal_px * k
        uv = np.stack([w / 2 + f * p[:, 0] / z, h / 2 - f * p[:, 1] / z], axis=1)
        return uv, depth

    @property
    def location(self) -> np.ndarray:
        return self.matrix_world[:3, 3].copy()


@dataclass
class SceneState:
    objects: dict[str, ObjectState] = field(default_factory=dict)
    lights: dict[str, LightState] = field(default_factory=dict)
    camera: CameraState | None = None
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # mask id -> HxW bool
    ground_z: float = 0.0
    footprint: tuple[float, float, float, float] | None = None  # xmin, xmax, ymin, ymax
    requests: list[dict] = field(default_factory=list)  # e.g. reconstruct requests for the host

    def copy(self) -> "SceneState":
        """A copy whose transforms, materials and lights can change without touching this one."""
        return SceneState(
            objects={n: replace(o, matrix_world=o.matrix_world.copy(), material=copy.copy(o.material))
                     for n, o in self.objects.items()},
            lights={n: replace(l, position=np.array(l.position, float)) for n, l in self.lights.items()},
            camera=self.camera, masks=self.masks, ground_z=self.ground_z, footprint=self.footprint,
            requests=[dict(r) for r in self.requests],
        )

    def names(self) -> dict:
        return {"objects": set(self.objects), "lights": set(self.lights), "masks": set(self.masks)}

    def to_compact_json(self) -> dict:
        """What a VLM reads next to the renders: positions, sizes, yaw, materials, lights."""
        objs = []
        for o in self.objects.values():
            lo, hi = o.world_bounds()
            R = o.matrix_world[:3, :3]
            scale = np.linalg.norm(R, axis=0)
            yaw = math.degrees(math.atan2(R[1, 0], R[0, 0]))
            entry = {"name": o.name, "center": _r((lo + hi) / 2), "size": _r(hi - lo),
                     "bottom_z": round(float(lo[2]), 3), "yaw_deg": round(yaw, 1),
                     "scale": round(float(scale.mean()), 3)}
            if o.mask_id:
                entry["mask_id"] = o.mask_id
            if o.material is not None:
                entry["material"] = {"base_color": _r(o.material.base_color), "roughness": round(o.material.roughness, 3),
                                     "metallic": round(o.material.metallic, 3)}
                if o.material.description:
                    entry["material"]["description"] = o.material.description
            objs.append(entry)
        lights = [{"name": l.name, "type": l.type, "position": _r(l.position), "power": round(l.power, 2),
                   "color": _r(l.color)} for l in self.lights.values()]
        out = {"objects": objs, "lights": lights, "ground_z": round(self.ground_z, 3),
               "masks": sorted(self.masks)}
        if self.camera is not None:
            out["camera"] = {"location": _r(self.camera.location),
                             "forward": _r(-self.camera.matrix_world[:3, 2]), "lens_mm": round(self.camera.lens_mm, 2)}
        return out


def _r(v, nd: int = 3) -> list[float]:
    return [round(float(x), nd) for x in np.asarray(v, float).reshape(-1)]


# -- the executor ---------------------------------------------------------------------------------

def _axis_rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    x, y, z = axis
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    C = 1 - c
    return np.array([[c + x * x * C, x * y * C - z * s, x * z * C + y * s],
                     [y * x * C + z * s, c + y * y * C, y * z * C - x * s],
                     [z * x * C - y * s, z * y * C + x * s, c + z * z * C]])


def euler_xyz_to_matrix(euler_deg) -> np.ndarray:
    """Blender's XYZ Euler order: R = Rz @ Ry @ Rx."""
    ax, ay, az = np.radians(np.asarray(euler_deg, float))
    X = _axis_rotation([1, 0, 0], ax)
    Y = _axis_rotation([0, 1, 0], ay)
    Z = _axis_rotation([0, 0, 1], az)
    return Z @ Y @ X


_AXIS = {"x": np.array([1.0, 0, 0]), "y": np.array([0, 1.0, 0]), "z": np.array([0, 0, 1.0])}


def rotate_about(M: np.ndarray, R: np.ndarray, pivot: np.ndarray) -> np.ndarray:
    out = M.copy()
    out[:3, :3] = R @ M[:3, :3]
    out[:3, 3] = pivot + R @ (M[:3, 3] - pivot)
    return out


def scale_about(M: np.ndarray, factor: float, pivot: np.ndarray) -> np.ndarray:
    out = M.copy()
    out[:3, :3] = factor * M[:3, :3]
    out[:3, 3] = pivot + factor * (M[:3, 3] - pivot)
    return out


def support_top(state: SceneState, support: str, exclude: str | None = None) -> float:
    if support == GROUND:
        return float(state.ground_z)
    return float(state.objects[support].world_bounds()[1][2])


def apply_action(state: SceneState, action: Action) -> bool:
    """Apply one validated action to `state` in place; returns True for `done`."""
    a = action.args
    name = action.name
    if name == "done":
        return True
    if name == "add_light":
        n = len(state.lights) + 1
        while f"light_{n}" in state.lights:
            n += 1
        state.lights[f"light_{n}"] = LightState(f"light_{n}", a["type"], np.array(a["position"], float),
                                                float(a["power"]), tuple(a.get("color", (1.0, 1.0, 1.0))), new=True)
        return False
    if name == "set_light":
        light = state.lights[a["light"]]
        if "power" in a:
            light.power = float(a["power"])
        if "color" in a:
            light.color = tuple(a["color"])
        return False
    if name == "reconstruct":
        state.requests.append({"reconstruct": a["mask_id"]})
        return False

    ob = state.objects[a["object"]]
    M = ob.matrix_world
    if name == "move":
        M[:3, 3] += np.asarray(a["delta"], float)
    elif name == "rotate":
        R = (_axis_rotation(_AXIS[a["axis"]], math.radians(a["angle_deg"])) if "axis" in a
             else euler_xyz_to_matrix(a["euler_deg"]))
        ob.matrix_world = rotate_about(M, R, M[:3, 3].copy())
    elif name == "scale":
        lo, hi = ob.world_bounds()
        ob.matrix_world = scale_about(M, float(a["factor"]), (lo + hi) / 2)
    elif name == "place_on":
        lo, hi = ob.world_bounds()
        if a["support"] != GROUND:
            slo, shi = state.objects[a["support"]].world_bounds()
            centre = (lo + hi) / 2
            # not above the support: put it over the support's centre first
            if not (slo[0] <= centre[0] <= shi[0] and slo[1] <= centre[1] <= shi[1]):
                M[:2, 3] += ((slo + shi) / 2 - centre)[:2]
        M[2, 3] += support_top(state, a["support"]) - lo[2]
    elif name == "align":
        k = AXES_INDEX[a["axis"]]
        lo, hi = ob.world_bounds()
        tlo, thi = state.objects[a["target"]].world_bounds()
        M[k, 3] += (tlo[k] + thi[k]) / 2 - (lo[k] + hi[k]) / 2
    elif name == "look_at":
        lo, hi = ob.world_bounds()
        centre = (lo + hi) / 2
        if a["target"] == CAMERA:
            if state.camera is None:
                return False
            target = state.camera.location
        else:
            tlo, thi = state.objects[a["target"]].world_bounds()
            target = (tlo + thi) / 2
        front = M[:3, :3] @ np.array([0.0, -1.0, 0.0])
        want = target - centre
        if np.hypot(*front[:2]) > 1e-9 and np.hypot(*want[:2]) > 1e-9:
            angle = math.atan2(want[1], want[0]) - math.atan2(front[1], front[0])
            ob.matrix_world = rotate_about(M, _axis_rotation(_AXIS["z"], angle), centre)
    elif name == "delete":
        del state.objects[a["object"]]
    elif name == "duplicate":
        new = a["new_name"]
        dup = replace(ob, name=new, matrix_world=M.copy(), material=copy.copy(ob.material),
                      source=ob.source or ob.name, mask_id=None)
        dup.matrix_world[:3, 3] += np.asarray(a.get("offset", (0.0, 0.0, 0.0)), float)
        state.objects[new] = dup
    elif name == "set_material":
        mat = copy.copy(ob.material) if ob.material is not None else MaterialState()
        if "base_color" in a:
            mat.base_color = tuple(float(c) for c in a["base_color"])
        if "roughness" in a:
            mat.roughness = float(a["roughness"])
        if "metallic" in a:
            mat.metallic = float(a["metallic"])
        if "description" in a:
            mat.description = a["description"]
        ob.material = mat
    else:  # validate_action accepts only SCHEMA names; this is a programming error
        raise AssertionError(f"no executor for action {name!r}")
    return False


AXES_INDEX = {"x": 0, "y": 1, "z": 2}


def execute(state: SceneState, actions: list[Action]) -> tuple[SceneState, bool]:
    """Apply validated actions to a *copy* of `state`; returns (new state, whether `done` came)."""
    out = state.copy()
    for action in actions:
        if apply_action(out, action):
            return out, True
    return out, False
