"""Verifiers: is a scene physically plausible and consistent with the photo?

* collision-free: pairwise mesh intersection volume (manifold3d booleans, exact for closed
  meshes), below a small fraction of the smaller object's volume; world bounding boxes rule out
  most pairs first; non-manifold meshes fall back to box overlap.
* in-bounds: inside the ground footprint when the scene has one, else in front of the photo
  camera with the centre inside the frame.
* supported: the bottom rests on the ground plane (z = ground_z) or on the top of another
  object below it, within a tolerance.
* photo consistency: each object's silhouette through the photo camera (triangles filled with
  PIL, supersampled, at a small working resolution), occluded by nearer objects (painter's
  order), against its 3Dfy mask (IoU); and depth-order consistency: where two silhouettes
  overlap, the object whose mask covers the overlap should be the nearer one.

`verify(state)` returns a `Report` whose `score` the refinement loop maximises.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from .scene import ObjectState, SceneState

WORK_SIZE = 96  # longer side of the silhouette images, pixels
SUPERSAMPLE = 4  # silhouettes are rasterised at this many samples per pixel side
COLLISION_TOL = 0.01  # intersection volume allowed, as a fraction of the smaller volume
SUPPORT_TOL_M = 0.01
SUPPORT_TOL_REL = 0.02  # of the object's height
NEAR_M = 1e-3

WEIGHTS = {"iou": 0.6, "depth": 0.1, "plausible": 0.3}


# -- silhouettes -------------------------------------------------------------------------------

def work_size(camera, longer: int = WORK_SIZE) -> tuple[int, int]:
    w, h = camera.resolution
    k = longer / max(w, h)
    return max(1, round(w * k)), max(1, round(h * k))


def silhouette(ob: ObjectState, camera, size: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Bool mask [h,w] of an object seen through the camera, and its centre's depth (inf if behind)."""
    w, h = size
    uv, depth = camera.project(ob.world_vertices(), size)
    lo, hi = ob.world_bounds()
    _, centre_depth = camera.project(((lo + hi) / 2)[None], size)
    if depth.min() <= NEAR_M:  # crosses the camera plane: not a valid view of it
        return np.zeros((h, w), bool), float("inf")
    tri = uv[ob.faces]  # [F,3,2]
    tmin, tmax = tri.min(axis=1), tri.max(axis=1)
    keep = (tmax[:, 0] >= 0) & (tmax[:, 1] >= 0) & (tmin[:, 0] <= w) & (tmin[:, 1] <= h)
    # supersampled, then a pixel is in when at least half of it is covered: thin parts (legs)
    # are neither fattened to a whole pixel nor dropped, like a mask downsized by area
    ss = SUPERSAMPLE
    img = Image.new("L", (w * ss, h * ss), 0)
    draw = ImageDraw.Draw(img)
    # PIL's pixel (i, j) is centred at (i, j); raster centres are at +0.5
    for t in (tri[keep] * ss - 0.5).tolist():
        draw.polygon([tuple(p) for p in t], fill=255)
    cover = np.asarray(img).reshape(h, ss, w, ss).mean(axis=(1, 3))
    return cover >= 127.5, float(centre_depth[0])


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    w, h = size
    if mask.shape == (h, w):
        return mask.astype(bool)
    # area average (BOX) when shrinking: a pixel is in when at least half of it was
    filt = Image.BOX if w <= mask.shape[1] else Image.BILINEAR
    img = Image.fromarray(mask.astype(np.uint8) * 255).resize((w, h), filt)
    return np.asarray(img) >= 128


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


@dataclass
class PhotoReport:
    iou: dict[str, float]  # per object with a mask: visible silhouette vs mask
    iou_mean: float | None
    depth_pairs: int
    depth_consistent: float  # fraction of overlapping pairs with the mask-consistent order


def photo_consistency(state: SceneState, size: int = WORK_SIZE, silhouettes: dict | None = None) -> PhotoReport:
    if state.camera is None or not state.masks:
        return PhotoReport({}, None, 0, 1.0)
    wh = work_size(state.camera, size)
    sil = silhouettes if silhouettes is not None else {n: silhouette(o, state.camera, wh) for n, o in state.objects.items()}
    masks = {o.mask_id: resize_mask(state.masks[o.mask_id], wh) for o in state.objects.values()
             if o.mask_id in state.masks}
    order = sorted(sil, key=lambda n: sil[n][1])  # nearest first
    covered = np.zeros(wh[::-1], bool)
    visible = {}
    for n in order:
        visible[n] = sil[n][0] & ~covered
        covered |= sil[n][0]
    ious = {n: iou(visible[n], masks[o.mask_id]) for n, o in state.objects.items() if o.mask_id in masks}
    pairs = consistent = 0
    names = [n for n in order if state.objects[n].mask_id in masks]
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            overlap = sil[a][0] & sil[b][0]
            if overlap.sum() < 4:
                continue
            ma = masks[state.objects[a].mask_id][overlap].mean()
            mb = masks[state.objects[b].mask_id][overlap].mean()
            if abs(ma - mb) < 0.2:  # the masks do not say who is in front
                continue
            pairs += 1
            consistent += int((ma > mb) == (sil[a][1] <= sil[b][1]))
    mean = float(np.mean(list(ious.values()))) if ious else None
    return PhotoReport(ious, mean, pairs, consistent / pairs if pairs else 1.0)


# -- physical plausibility ---------------------------------------------------------------------

_manifold_cache: dict[int, object] = {}


def _manifold(ob: ObjectState):
    """The object's closed mesh as a manifold3d solid in object space (cached), or None."""
    key = id(ob.vertices)
    if key in _manifold_cache:
        return _manifold_cache[key]
    solid = None
    try:
        import manifold3d as mf

        mesh = mf.Mesh(vert_properties=np.ascontiguousarray(ob.vertices, np.float32),
                       tri_verts=np.ascontiguousarray(ob.faces, np.uint32))
        cand = mf.Manifold(mesh)
        if cand.status() == mf.Error.NoError and not cand.is_empty() and cand.volume() > 0:
            solid = cand
    except Exception:  # noqa: BLE001 - any failure: fall back to boxes
        solid = None
    if len(_manifold_cache) > 256:
        _manifold_cache.clear()
    _manifold_cache[key] = solid
    return solid


def _world_solid(ob: ObjectState):
    solid = _manifold(ob)
    return None if solid is None else solid.transform(np.ascontiguousarray(ob.matrix_world[:3, :4], np.float64))


def _box_volume(lo, hi) -> float:
    return float(np.prod(np.clip(hi - lo, 0.0, None)))


def intersection_fraction(a: ObjectState, b: ObjectState) -> float:
    """Intersection volume / smaller volume (0 when apart)."""
    alo, ahi = a.world_bounds()
    blo, bhi = b.world_bounds()
    box = _box_volume(np.maximum(alo, blo), np.minimum(ahi, bhi))
    if box <= 0:
        return 0.0
    sa, sb = _world_solid(a), _world_solid(b)
    if sa is None or sb is None:
        return box / max(min(_box_volume(alo, ahi), _box_volume(blo, bhi)), 1e-12)
    vol = (sa ^ sb).volume()
    return float(vol / max(min(sa.volume(), sb.volume()), 1e-12))


def collisions(state: SceneState, tol: float = COLLISION_TOL) -> list[tuple[str, str, float]]:
    names = list(state.objects)
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            frac = intersection_fraction(state.objects[a], state.objects[b])
            if frac > tol:
                out.append((a, b, round(frac, 4)))
    return out


def support_of(state: SceneState, name: str) -> str | None:
    """'ground', the name of the object it rests on, or None."""
    ob = state.objects[name]
    lo, hi = ob.world_bounds()
    tol = max(SUPPORT_TOL_M, SUPPORT_TOL_REL * (hi[2] - lo[2]))
    if abs(lo[2] - state.ground_z) <= tol:
        return "ground"
    for other_name, other in state.objects.items():
        if other_name == name:
            continue
        olo, ohi = other.world_bounds()
        over = (min(hi[0], ohi[0]) > max(lo[0], olo[0])) and (min(hi[1], ohi[1]) > max(lo[1], olo[1]))
        if over and abs(lo[2] - ohi[2]) <= tol:
            return other_name
    return None


def in_bounds(state: SceneState, name: str) -> bool:
    ob = state.objects[name]
    lo, hi = ob.world_bounds()
    if state.footprint is not None:
        x0, x1, y0, y1 = state.footprint
        return bool(lo[0] >= x0 - SUPPORT_TOL_M and hi[0] <= x1 + SUPPORT_TOL_M
                    and lo[1] >= y0 - SUPPORT_TOL_M and hi[1] <= y1 + SUPPORT_TOL_M)
    if state.camera is None:
        return True
    uv, depth = state.camera.project(((lo + hi) / 2)[None])
    w, h = state.camera.resolution
    return bool(depth[0] > NEAR_M and 0 <= uv[0, 0] <= w and 0 <= uv[0, 1] <= h)


# -- the report --------------------------------------------------------------------------------

@dataclass
class Report:
    collisions: list = field(default_factory=list)  # (a, b, intersection fraction)
    unsupported: list = field(default_factory=list)
    out_of_bounds: list = field(default_factory=list)
    support: dict = field(default_factory=dict)  # object -> 'ground' / object / None
    iou: dict = field(default_factory=dict)
    iou_mean: float | None = None
    depth_pairs: int = 0
    depth_consistent: float = 1.0
    collision_free_frac: float = 1.0
    supported_frac: float = 1.0
    in_bounds_frac: float = 1.0
    judge: float | None = None  # an optional external (VLM) score in [0, 1]
    score: float = 0.0

    def to_json(self) -> dict:
        d = asdict(self)
        d["collisions"] = [list(c) for c in self.collisions]
        for k in ("iou_mean", "depth_consistent", "collision_free_frac", "supported_frac", "in_bounds_frac", "score"):
            if d[k] is not None:
                d[k] = round(float(d[k]), 4)
        d["iou"] = {k: round(v, 4) for k, v in self.iou.items()}
        return d

    def summary(self) -> str:
        parts = [f"score {self.score:.3f}"]
        if self.iou_mean is not None:
            parts.append(f"IoU {self.iou_mean:.3f}")
        if self.collisions:
            parts.append("collisions " + ", ".join(f"{a}/{b}" for a, b, _ in self.collisions))
        if self.unsupported:
            parts.append("floating " + ", ".join(self.unsupported))
        if self.out_of_bounds:
            parts.append("out of bounds " + ", ".join(self.out_of_bounds))
        return "; ".join(parts)


def verify(state: SceneState, size: int = WORK_SIZE, judge: float | None = None, weights: dict | None = None) -> Report:
    w = dict(WEIGHTS, **(weights or {}))
    names = list(state.objects)
    n = max(len(names), 1)
    rep = Report()
    rep.collisions = collisions(state)
    colliding = {a for a, _, _ in rep.collisions} | {b for _, b, _ in rep.collisions}
    rep.support = {name: support_of(state, name) for name in names}
    rep.unsupported = [name for name, s in rep.support.items() if s is None]
    rep.out_of_bounds = [name for name in names if not in_bounds(state, name)]
    rep.collision_free_frac = 1.0 - len(colliding) / n
    rep.supported_frac = 1.0 - len(rep.unsupported) / n
    rep.in_bounds_frac = 1.0 - len(rep.out_of_bounds) / n
    photo = photo_consistency(state, size)
    rep.iou, rep.iou_mean = photo.iou, photo.iou_mean
    rep.depth_pairs, rep.depth_consistent = photo.depth_pairs, photo.depth_consistent
    plausible = (rep.collision_free_frac + rep.supported_frac + rep.in_bounds_frac) / 3.0
    terms = {"plausible": plausible, "depth": rep.depth_consistent}
    if rep.iou_mean is not None:
        terms["iou"] = rep.iou_mean
    if judge is not None:
        rep.judge = float(judge)
        terms["judge"] = rep.judge
        w.setdefault("judge", 0.2)
    total = sum(w[k] for k in terms)
    rep.score = sum(w[k] * v for k, v in terms.items()) / total
    return rep
