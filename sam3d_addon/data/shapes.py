"""Procedural object vocabulary: watertight triangle meshes in the canonical frame.

Every generator builds its object Z-up (resting on z = 0, natural up +Z) from solid parts with
manifold3d, which unions them into one closed, consistently oriented (outward) triangle mesh.
`random_shape` then normalises it into the canonical frame of the occupancy grid: centred at its
bounding-box centre, scaled so that its largest extent is 1 (it fits [-0.5, 0.5]^3).  The metric
size (the real largest extent, metres) is returned beside it; it belongs to the pose, not to
the mesh.

Furniture is built in metres, so its metric size follows from its randomised dimensions; the
abstract shapes draw theirs from a log-uniform range.  All randomness comes from the
`numpy.random.Generator` passed in, so a shape depends only on that generator's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import PchipInterpolator

from ..errors import Sam3DError

try:  # generation-only dependency; the dataset reader does not need it
    import manifold3d as mf
except ImportError:  # pragma: no cover - exercised only on machines without it
    mf = None


@dataclass
class Shape:
    """A canonical mesh: Z-up, bounding-box centred, largest extent 1."""

    vertices: np.ndarray  # float64 [V, 3]
    faces: np.ndarray  # int32 [F, 3], counter-clockwise seen from outside
    category: str
    size_m: float  # metric largest extent: world size = size_m * canonical


def _require_manifold():
    if mf is None:
        raise Sam3DError("The data engine needs manifold3d; install it with: pip install manifold3d")


# -- solid building blocks (all Z-up, metres or relative units) -----------------------------------

def _box(size, center) -> "mf.Manifold":
    return mf.Manifold.cube(tuple(float(s) for s in size), True).translate(tuple(float(c) for c in center))


def _cylinder(radius_low, radius_high, z0, z1, x=0.0, y=0.0, segments=24) -> "mf.Manifold":
    return mf.Manifold.cylinder(float(z1 - z0), float(radius_low), float(radius_high), int(segments)).translate(
        (float(x), float(y), float(z0)))


def _rotation_taking_z_to(direction: np.ndarray) -> np.ndarray:
    """A rotation matrix mapping +Z onto the unit vector `direction` (Rodrigues)."""
    d = np.asarray(direction, float) / np.linalg.norm(direction)
    z = np.array([0.0, 0.0, 1.0])
    v = np.cross(z, d)
    c = float(np.dot(z, d))
    if np.linalg.norm(v) < 1e-9:
        return np.eye(3) if c > 0 else np.diag([1.0, -1.0, -1.0])
    vx = np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])
    return np.eye(3) + vx + vx @ vx * (1.0 / (1.0 + c))


def _transform(solid, rotation: np.ndarray, translation=(0.0, 0.0, 0.0)) -> "mf.Manifold":
    m = np.zeros((3, 4))
    m[:, :3] = rotation
    m[:, 3] = translation
    return solid.transform(m)


def _rod(p0, p1, radius, segments=16, square=False) -> "mf.Manifold":
    """A cylinder (or square bar) of the given radius from point p0 to point p1."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.linalg.norm(p1 - p0))
    if square:
        base = _box((2 * radius, 2 * radius, length), (0.0, 0.0, length / 2))
    else:
        base = mf.Manifold.cylinder(length, float(radius), float(radius), int(segments))
    return _transform(base, _rotation_taking_z_to(p1 - p0), p0)


def _revolve(profile_rz: np.ndarray, segments=40) -> "mf.Manifold":
    """Revolve a closed (r, z) polygon about the Z axis."""
    section = mf.CrossSection([np.asarray(profile_rz, float)], mf.FillRule.NonZero)
    return section.revolve(int(segments))


def _extrude(polygon_xy: np.ndarray, height, scale_top=(1.0, 1.0), twist_deg=0.0, divisions=0) -> "mf.Manifold":
    section = mf.CrossSection([np.asarray(polygon_xy, float)], mf.FillRule.NonZero)
    return section.extrude(float(height), int(divisions), float(twist_deg), tuple(float(s) for s in scale_top))


def _union(parts) -> "mf.Manifold":
    return mf.Manifold.batch_boolean(list(parts), mf.OpType.Add)


def _smooth_profile(rng, n_ctrl, lo, hi, n_out) -> tuple[np.ndarray, np.ndarray]:
    """A random smooth curve on t in [0, 1] with values in [lo, hi] (monotone cubic: no overshoot)."""
    t_ctrl = np.linspace(0.0, 1.0, n_ctrl)
    v_ctrl = rng.uniform(lo, hi, size=n_ctrl)
    t = np.linspace(0.0, 1.0, n_out)
    return t, np.clip(PchipInterpolator(t_ctrl, v_ctrl)(t), lo, hi)


def _hollow_vessel(radius_of_t, height, wall, base) -> "mf.Manifold":
    """A vessel open at the top: outer wall radius(t), t = z / height, inner wall `wall` thinner."""
    t = np.linspace(0.0, 1.0, len(radius_of_t))
    outer = np.stack([radius_of_t, t * height], axis=1)
    inner_t = t[t * height > base]
    inner_r = np.interp(inner_t, t, radius_of_t) - wall
    inner = np.stack([inner_r, inner_t * height], axis=1)[::-1]
    base_r = float(np.interp(base / height, t, radius_of_t)) - wall
    profile = np.concatenate([[[0.0, 0.0]], outer, inner, [[base_r, base], [0.0, base]]])
    return _revolve(profile)


# -- generators: each returns (solid, metric largest extent or None to draw one) ---------------------

def _superquadric(rng):
    """Superellipsoid: a geodesic sphere pushed radially onto the implicit surface."""
    axes = rng.uniform(0.45, 1.0, size=3)
    e1, e2 = rng.uniform(0.25, 1.6, size=2)

    def warp(points):
        d = points / np.linalg.norm(points, axis=1, keepdims=True)
        ax, ay, az = (np.abs(d) / axes).T + 1e-12
        f = (ax ** (2 / e2) + ay ** (2 / e2)) ** (e2 / e1) + az ** (2 / e1)
        return d * f[:, None] ** (-e1 / 2)  # F is homogeneous of degree 2/e1

    return mf.Manifold.sphere(1.0, 48).warp_batch(warp), None


def _blob(rng):
    """A rock-like star-shaped blob, flattened at the bottom so that it rests."""
    n_waves = 6
    dirs = rng.normal(size=(n_waves, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freq = rng.uniform(1.0, 3.5, size=n_waves)
    amp = rng.uniform(0.03, 0.12, size=n_waves)
    phase = rng.uniform(0, 2 * np.pi, size=n_waves)
    stretch = rng.uniform(0.6, 1.0, size=3)

    def warp(points):
        d = points / np.linalg.norm(points, axis=1, keepdims=True)
        r = 1.0 + np.sin(d @ dirs.T * freq * np.pi + phase) @ amp
        return d * r[:, None] * stretch

    solid = mf.Manifold.sphere(1.0, 48).warp_batch(warp)
    cut = rng.uniform(0.3, 0.7) * stretch[2]
    return solid.trim_by_plane((0.0, 0.0, 1.0), -cut), None


def _extrusion(rng):
    """Extruded random star/blob polygon, optionally tapered and twisted, standing or lying."""
    n = int(rng.integers(5, 13))
    angles = np.sort(rng.uniform(0, 2 * np.pi, size=n))
    angles = np.linspace(0, 2 * np.pi, n, endpoint=False) * 0.5 + angles * 0.5  # avoid slivers
    radii = rng.uniform(0.35, 1.0, size=n)
    if rng.random() < 0.4:  # star
        radii[::2] *= rng.uniform(0.35, 0.7)
    polygon = np.stack([np.cos(angles) * radii, np.sin(angles) * radii], axis=1)
    height = rng.uniform(0.3, 2.0)
    scale_top = (rng.uniform(0.4, 1.0),) * 2 if rng.random() < 0.4 else (1.0, 1.0)
    twist = rng.uniform(-60, 60) if rng.random() < 0.3 else 0.0
    solid = _extrude(polygon, height, scale_top, twist, divisions=8 if twist else 0)
    if rng.random() < 0.3:  # lying on its side
        solid = solid.rotate((90.0, 0.0, 0.0))
    return solid, None


def _vase(rng):
    height = rng.uniform(0.25, 0.6)
    _, radius = _smooth_profile(rng, int(rng.integers(4, 7)), 0.12 * height, 0.4 * height, 40)
    wall = 0.03 * height
    radius = np.maximum(radius, wall + 0.05 * height)
    return _hollow_vessel(radius, height, wall, base=0.04 * height), height


def _bottle(rng):
    height = rng.uniform(0.22, 0.4)
    body_r = rng.uniform(0.14, 0.22) * height
    neck_r = rng.uniform(0.25, 0.5) * body_r
    body_top = rng.uniform(0.45, 0.7) * height
    shoulder_top = body_top + rng.uniform(0.08, 0.2) * height
    cap_r = neck_r * rng.uniform(1.0, 1.25)
    cap_h = rng.uniform(0.04, 0.1) * height
    s = np.linspace(0, 1, 10)
    shoulder = np.stack([body_r + (neck_r - body_r) * (0.5 - 0.5 * np.cos(np.pi * s)),
                         body_top + (shoulder_top - body_top) * s], axis=1)
    foot = 0.02 * height
    profile = np.concatenate([
        [[0.0, 0.0], [body_r - foot, 0.0], [body_r, foot]],
        shoulder,
        [[neck_r, height - cap_h], [cap_r, height - cap_h], [cap_r, height], [0.0, height]],
    ])
    return _revolve(profile), height


def _bowl(rng):
    diameter = rng.uniform(0.15, 0.35)
    radius = diameter / 2
    height = rng.uniform(0.3, 0.6) * diameter
    foot = rng.uniform(0.35, 0.6) * radius
    power = rng.uniform(0.35, 0.8)
    t = np.linspace(0, 1, 30)
    profile_r = foot + (radius - foot) * t ** power
    return _hollow_vessel(profile_r, height, wall=0.05 * radius, base=0.08 * height), diameter


def _mug(rng):
    height = rng.uniform(0.09, 0.16)
    radius = rng.uniform(0.3, 0.5) * height
    taper = rng.uniform(0.85, 1.1)
    t = np.linspace(0, 1, 12)
    body = _hollow_vessel(radius * (1 + (taper - 1) * t), height, wall=0.08 * radius, base=0.08 * height)
    handle_r = rng.uniform(0.25, 0.35) * height
    tube_r = rng.uniform(0.04, 0.07) * height
    ring = mf.CrossSection.circle(float(tube_r), 16).translate((float(handle_r), 0.0)).revolve(24, 180.0)
    # half ring (y >= 0, XY plane) -> XZ plane bulging towards +X, attached to the wall
    to_xz = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    attach_x = radius * (1 + (taper - 1) * 0.5) - 0.5 * tube_r
    handle = _transform(ring, to_xz, (attach_x, 0.0, height * rng.uniform(0.45, 0.55)))
    return _union([body, handle]), None


def _lamp(rng):
    floor_lamp = rng.random() < 0.4
    pole_h = rng.uniform(1.1, 1.6) if floor_lamp else rng.uniform(0.25, 0.5)
    base_r = rng.uniform(0.1, 0.18) if floor_lamp else rng.uniform(0.06, 0.12)
    base_h = rng.uniform(0.015, 0.04)
    parts = []
    if rng.random() < 0.5 or floor_lamp:
        parts.append(_cylinder(base_r, base_r * rng.uniform(0.7, 1.0), 0.0, base_h, segments=32))
    else:  # vase-like lathe base
        _, radius = _smooth_profile(rng, 4, 0.3 * base_r, base_r, 16)
        body_h = rng.uniform(0.4, 0.7) * pole_h
        profile = np.concatenate([[[0.0, 0.0]], np.stack([radius, np.linspace(0, body_h, 16)], 1), [[0.0, body_h]]])
        parts.append(_revolve(profile, 32))
    pole_r = rng.uniform(0.008, 0.015) * (1.5 if floor_lamp else 1.0)
    parts.append(_cylinder(pole_r, pole_r, 0.0, pole_h, segments=12))
    shade_bottom_r = rng.uniform(0.1, 0.22) * (1.3 if floor_lamp else 1.0)
    shade_top_r = shade_bottom_r * rng.uniform(0.45, 0.9)
    shade_h = rng.uniform(0.6, 1.1) * shade_bottom_r
    wall = 0.006
    z0 = pole_h - rng.uniform(0.3, 0.6) * shade_h
    shade = np.array([[shade_bottom_r, z0], [shade_top_r, z0 + shade_h],
                      [shade_top_r - wall, z0 + shade_h], [shade_bottom_r - wall, z0]])
    parts.append(_revolve(shade, 40))
    for k in range(3):  # spokes from the pole top to the shade rim
        a = 2 * np.pi * k / 3
        rim = np.array([np.cos(a) * (shade_top_r - wall / 2), np.sin(a) * (shade_top_r - wall / 2), z0 + shade_h - 0.01])
        parts.append(_rod((0.0, 0.0, pole_h), rim, 0.004, segments=6))
    return _union(parts), None


def _leg(p_top, p_bottom, thickness, square):
    return _rod(p_bottom, p_top, thickness / 2, segments=12, square=square)


def _chair(rng):
    width, depth = rng.uniform(0.4, 0.55), rng.uniform(0.4, 0.52)
    seat_h, seat_t = rng.uniform(0.4, 0.5), rng.uniform(0.03, 0.08)
    back_h = rng.uniform(0.3, 0.55)
    leg = rng.uniform(0.025, 0.05)
    square = rng.random() < 0.6
    splay = rng.uniform(0.0, 0.04)
    parts = [_box((width, depth, seat_t), (0.0, 0.0, seat_h - seat_t / 2))]
    hx, hy = width / 2 - leg / 2, depth / 2 - leg / 2
    for sx in (-1, 1):
        for sy in (-1, 1):
            top = (sx * hx, sy * hy, seat_h - seat_t / 2)
            bottom = (sx * (hx + splay), sy * (hy + splay), 0.0)
            parts.append(_leg(top, bottom, leg, square))
    # backrest at +Y: two posts and a panel, slats or rails
    post_top = seat_h + back_h
    for sx in (-1, 1):
        parts.append(_leg((sx * hx, hy, post_top), (sx * hx, hy, seat_h - seat_t), leg, square))
    style = rng.integers(3)
    if style == 0:
        panel_h = back_h * rng.uniform(0.35, 0.8)
        parts.append(_box((2 * hx, leg * 0.8, panel_h), (0.0, hy, post_top - panel_h / 2)))
    elif style == 1:
        n = int(rng.integers(3, 7))
        for x in np.linspace(-hx, hx, n + 2)[1:-1]:
            parts.append(_box((leg * 0.6, leg * 0.6, back_h), (x, hy, seat_h + back_h / 2)))
        parts.append(_box((2 * hx, leg, leg * 1.5), (0.0, hy, post_top - leg * 0.75)))
    else:
        for z in np.linspace(seat_h + back_h * 0.35, post_top - leg, int(rng.integers(2, 4))):
            parts.append(_box((2 * hx, leg * 0.7, leg * 1.2), (0.0, hy, z)))
    if rng.random() < 0.3:  # armrests
        arm_h = seat_h + rng.uniform(0.18, 0.25)
        for sx in (-1, 1):
            parts.append(_box((leg, depth, leg), (sx * hx, 0.0, arm_h)))
            parts.append(_leg((sx * hx, -hy, arm_h), (sx * hx, -hy, seat_h), leg * 0.8, square))
    if rng.random() < 0.4:  # stretchers between the legs
        z = rng.uniform(0.1, 0.25)
        for sx in (-1, 1):
            parts.append(_box((leg * 0.6, 2 * hy, leg * 0.6), (sx * (hx + splay * (1 - z / seat_h)), 0.0, z)))
    return _union(parts), None


def _table(rng):
    round_top = rng.random() < 0.35
    height = rng.uniform(0.45, 0.8)
    top_t = rng.uniform(0.02, 0.06)
    parts = []
    if round_top:
        radius = rng.uniform(0.3, 0.6)
        parts.append(_cylinder(radius, radius, height - top_t, height, segments=48))
        half_x = half_y = radius / math.sqrt(2)
    else:
        width, depth = rng.uniform(0.6, 1.6), rng.uniform(0.5, 1.0)
        parts.append(_box((width, depth, top_t), (0.0, 0.0, height - top_t / 2)))
        half_x, half_y = width / 2, depth / 2
    if round_top and rng.random() < 0.6:  # pedestal
        pr = rng.uniform(0.03, 0.07)
        parts.append(_cylinder(pr, pr, 0.0, height - top_t, segments=24))
        fr = rng.uniform(0.5, 0.8) * min(half_x, half_y) * math.sqrt(2)
        parts.append(_cylinder(fr, fr * rng.uniform(0.5, 1.0), 0.0, rng.uniform(0.02, 0.05), segments=40))
    else:
        leg = rng.uniform(0.03, 0.07)
        square = rng.random() < 0.6
        inset = rng.uniform(0.0, 0.1) * min(half_x, half_y)
        lx, ly = half_x - inset - leg / 2, half_y - inset - leg / 2
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(_leg((sx * lx, sy * ly, height - top_t), (sx * lx, sy * ly, 0.0), leg, square))
        if rng.random() < 0.5:  # apron
            apron_h = rng.uniform(0.05, 0.12)
            z = height - top_t - apron_h / 2
            parts.append(_box((2 * lx, leg * 0.5, apron_h), (0.0, ly, z)))
            parts.append(_box((2 * lx, leg * 0.5, apron_h), (0.0, -ly, z)))
            parts.append(_box((leg * 0.5, 2 * ly, apron_h), (lx, 0.0, z)))
            parts.append(_box((leg * 0.5, 2 * ly, apron_h), (-lx, 0.0, z)))
        if rng.random() < 0.3:  # lower shelf
            z = rng.uniform(0.1, 0.3) * height
            parts.append(_box((2 * lx, 2 * ly, top_t * 0.7), (0.0, 0.0, z)))
    return _union(parts), None


def _stool(rng):
    height = rng.uniform(0.45, 0.8)
    seat_r = rng.uniform(0.15, 0.22)
    seat_t = rng.uniform(0.03, 0.06)
    n_legs = int(rng.choice([3, 4]))
    leg_r = rng.uniform(0.012, 0.025)
    top_r, foot_r = 0.75 * seat_r, seat_r * rng.uniform(1.0, 1.35)
    parts = [_cylinder(seat_r, seat_r * rng.uniform(0.9, 1.0), height - seat_t, height, segments=40)]
    phase = rng.uniform(0, 2 * np.pi)
    for k in range(n_legs):
        a = phase + 2 * np.pi * k / n_legs
        d = np.array([np.cos(a), np.sin(a)])
        parts.append(_rod((*(d * foot_r), 0.0), (*(d * top_r), height - seat_t), leg_r, segments=10))
    if rng.random() < 0.6:  # footrest ring where it meets the splayed legs
        z = rng.uniform(0.25, 0.45) * height
        ring_r = foot_r + (top_r - foot_r) * z / (height - seat_t)
        ring = mf.CrossSection.circle(float(leg_r * 0.8), 8).translate((float(ring_r), 0.0)).revolve(40)
        parts.append(ring.translate((0.0, 0.0, float(z))))
    return _union(parts), None


def _shelf(rng):
    width, depth, height = rng.uniform(0.5, 1.2), rng.uniform(0.25, 0.4), rng.uniform(0.7, 1.8)
    board = rng.uniform(0.015, 0.03)
    n = int(rng.integers(3, 7))
    parts = []
    if rng.random() < 0.7:  # side panels
        for sx in (-1, 1):
            parts.append(_box((board, depth, height), (sx * (width / 2 - board / 2), 0.0, height / 2)))
    else:  # corner posts
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(_box((board * 1.5, board * 1.5, height),
                                  (sx * (width / 2 - board), sy * (depth / 2 - board), height / 2)))
    bottom = rng.uniform(0.0, 0.1)
    for z in np.linspace(bottom + board / 2, height - board / 2, n):
        parts.append(_box((width - 0.002, depth, board), (0.0, 0.0, z)))
    if rng.random() < 0.5:  # back panel
        parts.append(_box((width, board * 0.5, height - bottom), (0.0, depth / 2 - board / 4, (height + bottom) / 2)))
    return _union(parts), None


def _sofa(rng):
    width, depth = rng.uniform(1.2, 2.1), rng.uniform(0.7, 0.95)
    seat_h = rng.uniform(0.38, 0.46)
    back_h = rng.uniform(0.65, 0.9)
    arm_w, arm_h = rng.uniform(0.08, 0.2), rng.uniform(0.5, 0.65)
    back_t = rng.uniform(0.15, 0.25)
    foot_h = rng.uniform(0.03, 0.1)
    parts = [_box((width, depth, seat_h - foot_h - 0.1), (0.0, 0.0, foot_h + (seat_h - foot_h - 0.1) / 2))]
    parts.append(_box((width, back_t, back_h - foot_h), (0.0, depth / 2 - back_t / 2, foot_h + (back_h - foot_h) / 2)))
    for sx in (-1, 1):
        parts.append(_box((arm_w, depth, arm_h - foot_h), (sx * (width / 2 - arm_w / 2), 0.0, foot_h + (arm_h - foot_h) / 2)))
    n_cushions = int(rng.integers(1, 4))
    inner_w = width - 2 * arm_w
    cw = inner_w / n_cushions
    for k in range(n_cushions):  # seat cushions with small gaps
        x = -inner_w / 2 + cw * (k + 0.5)
        parts.append(_box((cw - 0.01, depth - back_t - 0.01, 0.11), (x, -back_t / 2, seat_h - 0.055)))
    for sx in (-1, 1):
        for sy in (-1, 1):
            parts.append(_cylinder(0.025, 0.02, 0.0, foot_h + 0.01, sx * (width / 2 - 0.06), sy * (depth / 2 - 0.06), 12))
    return _union(parts), None


def _cabinet(rng):
    width, depth, height = rng.uniform(0.4, 1.2), rng.uniform(0.35, 0.6), rng.uniform(0.5, 1.4)
    leg_h = rng.uniform(0.05, 0.15) if rng.random() < 0.5 else 0.0
    parts = [_box((width, depth, height - leg_h), (0.0, 0.0, leg_h + (height - leg_h) / 2))]
    if leg_h > 0:
        for sx in (-1, 1):
            for sy in (-1, 1):
                parts.append(_cylinder(0.02, 0.015, 0.0, leg_h + 0.01, sx * (width / 2 - 0.04), sy * (depth / 2 - 0.04), 12))
    n_rows = int(rng.integers(1, 5))
    n_cols = 2 if width > 0.7 and rng.random() < 0.7 else 1
    gap = 0.006
    row_h = (height - leg_h) / n_rows
    col_w = width / n_cols
    for r in range(n_rows):  # door/drawer fronts at -Y with knobs
        for c in range(n_cols):
            x = -width / 2 + col_w * (c + 0.5)
            z = leg_h + row_h * (r + 0.5)
            parts.append(_box((col_w - 2 * gap, 0.012, row_h - 2 * gap), (x, -depth / 2 - 0.005, z)))
            parts.append(_rod((x, -depth / 2, z), (x, -depth / 2 - 0.035, z), 0.008, segments=8))
    return _union(parts), None


def _hammer(rng):
    length = rng.uniform(0.25, 0.4)
    handle_r = rng.uniform(0.012, 0.02)
    head_len = rng.uniform(0.25, 0.4) * length
    head_t = rng.uniform(0.025, 0.04)
    parts = [_rod((0.0, 0.0, 0.0), (length, 0.0, 0.0), handle_r, segments=14)]
    x_head = length - head_t / 2
    if rng.random() < 0.5:  # mallet: cylinder head
        parts.append(_rod((x_head, -head_len / 2, 0.0), (x_head, head_len / 2, 0.0), head_t * 0.9, segments=20))
    else:  # claw hammer: box head with a tapered claw
        parts.append(_box((head_t, head_len * 0.6, head_t), (x_head, -head_len * 0.2, 0.0)))
        claw = _extrude(np.array([[-head_t / 2, 0.0], [head_t / 2, 0.0], [head_t * 0.15, head_len * 0.4],
                                  [-head_t * 0.15, head_len * 0.4]]), head_t * 0.8)
        parts.append(claw.translate((0.0, 0.0, -head_t * 0.4)).translate((float(x_head), float(head_len * 0.08), 0.0)))
    if rng.random() < 0.5:  # grip
        parts.append(_rod((0.0, 0.0, 0.0), (length * 0.35, 0.0, 0.0), handle_r * 1.3, segments=14))
    return _union(parts), None


def _spatula(rng):
    handle_len = rng.uniform(0.15, 0.25)
    handle_r = rng.uniform(0.008, 0.015)
    blade_len, blade_w = rng.uniform(0.07, 0.12), rng.uniform(0.05, 0.1)
    blade_t = rng.uniform(0.003, 0.006)
    parts = [_rod((0.0, 0.0, 0.0), (handle_len, 0.0, 0.0), handle_r, segments=12)]
    if rng.random() < 0.5:  # flat blade, rounded outline
        outline = np.array([[0.0, -blade_w * 0.3], [blade_len * 0.3, -blade_w / 2], [blade_len, -blade_w / 2],
                            [blade_len, blade_w / 2], [blade_len * 0.3, blade_w / 2], [0.0, blade_w * 0.3]])
        blade = _extrude(outline, blade_t).translate((float(handle_len - 0.005), 0.0, float(-handle_r)))
    else:  # spoon-like: a flattened ellipsoid
        blade = mf.Manifold.sphere(1.0, 24).scale((blade_len / 2, blade_w / 2, blade_t * 2)).translate(
            (float(handle_len + blade_len / 2 - 0.01), 0.0, float(-handle_r * 0.5)))
    parts.append(blade)
    return _union(parts), None


GENERATORS = {
    "superquadric": _superquadric,
    "blob": _blob,
    "extrusion": _extrusion,
    "vase": _vase,
    "bottle": _bottle,
    "bowl": _bowl,
    "mug": _mug,
    "lamp": _lamp,
    "chair": _chair,
    "table": _table,
    "stool": _stool,
    "shelf": _shelf,
    "sofa": _sofa,
    "cabinet": _cabinet,
    "hammer": _hammer,
    "spatula": _spatula,
}
CATEGORIES = tuple(GENERATORS)

# Metric largest extent (metres) for the abstract shapes, drawn log-uniformly.
ABSTRACT_SIZE_RANGE_M = (0.3, 1.5)
MIN_SIZE_M = 0.15


def _to_arrays(solid) -> tuple[np.ndarray, np.ndarray]:
    mesh = solid.to_mesh()
    return np.asarray(mesh.vert_properties[:, :3], np.float64), np.asarray(mesh.tri_verts, np.int64)


def normalise(vertices: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre at the bounding-box centre and scale the largest extent to 1; returns (v, extent)."""
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    extent = float((hi - lo).max())
    return (vertices - (lo + hi) / 2) / extent, extent


def make_shape(category: str, rng: np.random.Generator) -> Shape:
    """One random object of the given category, in the canonical frame."""
    _require_manifold()
    if category not in GENERATORS:
        raise Sam3DError(f"Unknown shape category {category!r}; choose one of: {', '.join(CATEGORIES)}.")
    solid, _ = GENERATORS[category](rng)
    if solid.status() != mf.Error.NoError or solid.is_empty():
        raise Sam3DError(f"Shape generator {category!r} produced an invalid solid ({solid.status()}).")
    vertices, faces = _to_arrays(solid)
    canonical, extent = normalise(vertices)
    if category in ("superquadric", "blob", "extrusion"):
        lo, hi = ABSTRACT_SIZE_RANGE_M
        size = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
    else:  # built in metres: keep its own size, with a little spread
        size = max(MIN_SIZE_M, extent * float(rng.uniform(0.92, 1.08)))
    return Shape(canonical, faces.astype(np.int32), category, size)


def random_shape(rng: np.random.Generator, categories=None) -> Shape:
    """A shape of a uniformly drawn category (from `categories`, default all)."""
    names = list(categories) if categories is not None else list(CATEGORIES)
    return make_shape(names[int(rng.integers(len(names)))], rng)
