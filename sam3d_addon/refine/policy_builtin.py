"""The built-in (offline, default) policy: render-and-compare layout fitting plus plausibility fixes.

For each object with a 3Dfy mask it fits translation, uniform scale and yaw (rotation about
the vertical axis) so that the object's silhouette through the photo camera matches the mask
(IoU, ignoring pixels hidden by nearer objects): a few moment-matching steps (centroid ->
move in the image plane at the object's depth, area -> scale) then a shrinking coordinate search.
Silhouettes cannot tell size from distance, so the fit is followed by a move that keeps the
silhouette exactly -- scaling about the camera centre -- chosen so the object rests on the
ground or on the object below it.  Then plausibility fixes: interpenetrating pairs are pushed
apart by the smallest axis move that clears them, floating objects are dropped onto supports.

The output is a list of programs in the action language (rotate / scale / move / place_on),
one per candidate; candidates differ in their random restarts, so the loop can keep the best.
"""

from __future__ import annotations

import math

import numpy as np

from .actions import Action
from .scene import SceneState, apply_action, euler_xyz_to_matrix
from .verify import collisions, intersection_fraction, iou, resize_mask, silhouette, support_of, work_size

FIT_SIZE = 64  # longer side of the fitting silhouettes, pixels
RESTART_YAWS = (-90.0, -30.0, -10.0, 10.0, 30.0, 90.0, 180.0)  # degrees, about the vertical axis


class BuiltinPolicy:
    name = "builtin"

    def __init__(self, seed: int = 0, fit_size: int = FIT_SIZE, search_iters: int = 4, all_restarts: bool = False):
        """`all_restarts`: a restart candidate tries every yaw of RESTART_YAWS instead of two drawn
        at random -- ~2.5x the fitting time, but the result no longer depends on the seed (the
        layout post-optimisation uses it; the loop's default keeps restarts cheap and varied)."""
        self.rng = np.random.default_rng(seed)
        self.fit_size = fit_size
        self.search_iters = search_iters
        self.all_restarts = all_restarts

    # -- the policy interface -----------------------------------------------------------------
    def propose(self, state: SceneState, k: int, prompt: str = "", feedback=(), observations=()) -> list[list[dict]]:
        programs = []
        for c in range(max(1, k)):
            if c == 1 or not state.masks or state.camera is None:
                target = self._plausibility_fixes(state.copy())  # fixes only: no photo fit
            else:
                target = self._fit_and_fix(state, restart=c >= 2)
            programs.append(program_between(state, target))
        if all(not p for p in programs):
            return [[{"action": "done"}]]
        return [p or [{"action": "done"}] for p in programs]

    # -- layout fitting -------------------------------------------------------------------------
    def _fit_and_fix(self, state: SceneState, restart: bool) -> SceneState:
        cur = state.copy()
        names = [n for n, o in cur.objects.items() if o.mask_id in cur.masks]
        if restart and len(names) > 1:
            names = [n for n in names if self.rng.random() < 0.7] or names[:1]
        for name in names:
            self._fit_object(cur, name, restart)
        for name in names:
            self._snap_along_ray(cur, name)
        return self._plausibility_fixes(cur)

    def _fit_object(self, state: SceneState, name: str, restart: bool) -> None:
        cam = state.camera
        wh = work_size(cam, self.fit_size)
        ob = state.objects[name]
        mask = resize_mask(state.masks[ob.mask_id], wh)
        # pixels covered by nearer objects cannot be compared: leave them out of the IoU
        _, my_depth = silhouette(ob, cam, wh)
        hidden = np.zeros(mask.shape, bool)
        for other_name, other in state.objects.items():
            if other_name != name:
                sil, d = silhouette(other, cam, wh)
                if d < my_depth:
                    hidden |= sil
        valid = ~hidden

        def score(M):
            ob.matrix_world = M
            sil, _ = silhouette(ob, cam, wh)
            return iou(sil & valid, mask & valid), sil

        start = ob.matrix_world.copy()
        starts = [start]
        if restart:
            yaws = RESTART_YAWS if self.all_restarts else self.rng.choice(RESTART_YAWS, size=2, replace=False)
            for yaw in yaws:
                starts.append(_rotate_yaw(start, float(yaw)))
        best_M, best_s = start, score(start)[0]
        for M0 in starts:
            M = self._moment_match(M0, score, mask & valid, wh, cam, ob.vertices)
            M, s = self._coordinate_search(M, score, ob)
            if s > best_s + 1e-6:
                best_M, best_s = M, s
        ob.matrix_world = best_M

    def _moment_match(self, M, score, target, wh, cam, vertices, steps: int = 3):
        """Centroid -> image-plane move at the object's depth; area ratio -> scale."""
        if target.sum() == 0:
            return M
        f = cam.focal_px * max(wh) / max(cam.resolution)
        right, up = cam.matrix_world[:3, 0], cam.matrix_world[:3, 1]
        ty, tx = np.nonzero(target)
        best, best_s = M, score(M)[0]
        for _ in range(steps):
            s, sil = score(M)
            if s > best_s:
                best, best_s = M, s
            if sil.sum() == 0:
                break
            sy, sx = np.nonzero(sil)
            du, dv = tx.mean() - sx.mean(), ty.mean() - sy.mean()
            lo, hi = _bounds(M, vertices)
            centre = (lo + hi) / 2
            depth = float(cam.project(centre[None], wh)[1][0])
            if not np.isfinite(depth) or depth <= 0:
                break
            shift = depth / f * (du * right - dv * up)
            ratio = min(max(math.sqrt(target.sum() / sil.sum()), 0.5), 2.0)
            M = M.copy()
            M[:3, :3] *= ratio
            M[:3, 3] = centre + shift + ratio * (M[:3, 3] - centre)
        s = score(M)[0]
        return (M if s >= best_s else best)

    def _coordinate_search(self, M, score, ob):
        lo, hi = _bounds(M, ob.vertices)
        size = float(np.max(hi - lo))
        steps = np.array([0.08 * size, 0.08 * size, 0.08 * size, 0.08, 8.0])  # x, y, z, log-scale, yaw deg
        best_M, best_s = M, score(M)[0]
        for _ in range(self.search_iters):
            improved = False
            for p in range(5):
                for sign in (1.0, -1.0):
                    cand = _perturb(best_M, p, sign * steps[p], ob.vertices)
                    s = score(cand)[0]
                    if s > best_s + 1e-6:
                        best_M, best_s, improved = cand, s, True
                        break
            if not improved:
                steps = steps / 2
        return best_M, best_s

    def _snap_along_ray(self, state: SceneState, name: str) -> None:
        """Scale about the camera centre (the silhouette does not change) so the object rests
        on the ground or on the top of an object below it; the move closest to none wins."""
        if state.camera is None:
            return
        ob = state.objects[name]
        c = state.camera.location
        lo, hi = ob.world_bounds()
        if abs(lo[2] - c[2]) < 1e-6:
            return
        tops = [state.ground_z]
        for other_name, other in state.objects.items():
            if other_name != name:
                olo, ohi = other.world_bounds()
                if ohi[2] < hi[2] and _xy_overlap(lo, hi, olo, ohi):
                    tops.append(float(ohi[2]))
        best = None
        for top in tops:
            lam = (top - c[2]) / (lo[2] - c[2])
            if 0.5 <= lam <= 2.0 and (best is None or abs(math.log(lam)) < abs(math.log(best))):
                best = lam
        if best is not None:
            M = ob.matrix_world.copy()
            M[:3, :3] *= best
            M[:3, 3] = c + best * (M[:3, 3] - c)
            ob.matrix_world = M

    # -- plausibility -------------------------------------------------------------------------
    def _plausibility_fixes(self, state: SceneState) -> SceneState:
        for _ in range(3):
            pairs = collisions(state)
            if not pairs:
                break
            for a, b, _ in pairs:
                mover = min((a, b), key=lambda n: _volume(state.objects[n]))
                other = b if mover == a else a
                separate(state, mover, other)
        for name in list(state.objects):
            if support_of(state, name) is None:
                support = _support_below(state, name)
                apply_action(state, Action("place_on", {"object": name, "support": support}))
        return state


def _bounds(M, vertices):
    v = vertices @ M[:3, :3].T + M[:3, 3]
    return v.min(axis=0), v.max(axis=0)


def _xy_overlap(lo, hi, olo, ohi) -> bool:
    return min(hi[0], ohi[0]) > max(lo[0], olo[0]) and min(hi[1], ohi[1]) > max(lo[1], olo[1])


def _volume(ob) -> float:
    lo, hi = ob.world_bounds()
    return float(np.prod(hi - lo))


def _rotate_yaw(M, yaw_deg: float, pivot=None) -> np.ndarray:
    R = euler_xyz_to_matrix([0.0, 0.0, yaw_deg])
    out = M.copy()
    p = M[:3, 3] if pivot is None else pivot
    out[:3, :3] = R @ M[:3, :3]
    out[:3, 3] = p + R @ (M[:3, 3] - p)
    return out


def _perturb(M, p: int, step: float, vertices) -> np.ndarray:
    out = M.copy()
    if p < 3:
        out[p, 3] += step
    elif p == 3:
        lo, hi = _bounds(M, vertices)
        centre = (lo + hi) / 2
        f = math.exp(step)
        out[:3, :3] *= f
        out[:3, 3] = centre + f * (M[:3, 3] - centre)
    else:
        out = _rotate_yaw(M, step)
    return out


def _support_below(state: SceneState, name: str) -> str:
    """The highest object top under this object's bottom (XY overlap), else the ground."""
    lo, hi = state.objects[name].world_bounds()
    best, best_top = "ground", state.ground_z
    for other_name, other in state.objects.items():
        if other_name == name:
            continue
        olo, ohi = other.world_bounds()
        if _xy_overlap(lo, hi, olo, ohi) and ohi[2] <= lo[2] + 0.05 * (hi[2] - lo[2]) and ohi[2] > best_top:
            best, best_top = other_name, float(ohi[2])
    return best


def separate(state: SceneState, mover: str, other: str, tol: float = 0.01) -> None:
    """Move `mover` by the smallest axis-aligned step (+-x, +-y, +z) that clears `other`."""
    ob, ot = state.objects[mover], state.objects[other]
    lo, hi = ob.world_bounds()
    olo, ohi = ot.world_bounds()
    options = [(np.array([1.0, 0, 0]), ohi[0] - lo[0]), (np.array([-1.0, 0, 0]), hi[0] - olo[0]),
               (np.array([0, 1.0, 0]), ohi[1] - lo[1]), (np.array([0, -1.0, 0]), hi[1] - olo[1]),
               (np.array([0, 0, 1.0]), ohi[2] - lo[2])]
    M0 = ob.matrix_world.copy()
    best = None
    for direction, full in options:
        if full <= 0:
            continue
        # the box separation always clears; bisect down to the smallest step that still does
        lo_t, hi_t = 0.0, float(full) + 1e-4
        for _ in range(8):
            mid = (lo_t + hi_t) / 2
            ob.matrix_world = M0.copy()
            ob.matrix_world[:3, 3] += direction * mid
            if intersection_fraction(ob, ot) > tol:
                lo_t = mid
            else:
                hi_t = mid
        if best is None or hi_t < best[1]:
            best = (direction, hi_t)
    ob.matrix_world = M0.copy()
    if best is not None:
        ob.matrix_world[:3, 3] += best[0] * best[1]


# -- from a target state back to an action program ------------------------------------------

def program_between(state: SceneState, target: SceneState, eps: float = 1e-6) -> list[dict]:
    """rotate (about z) / scale / move actions that take each object of `state` to its pose in
    `target` (poses differ by yaw, uniform scale and translation only)."""
    program: list[dict] = []
    probe = state.copy()
    for name, ob in state.objects.items():
        if name not in target.objects:
            continue
        A, B = ob.matrix_world, target.objects[name].matrix_world
        if np.allclose(A, B, atol=eps):
            continue
        sa = np.linalg.norm(A[:3, :3], axis=0).mean()
        sb = np.linalg.norm(B[:3, :3], axis=0).mean()
        Ra, Rb = A[:3, :3] / sa, B[:3, :3] / sb
        Rd = Rb @ Ra.T
        yaw = math.degrees(math.atan2(Rd[1, 0], Rd[0, 0]))
        steps = []
        if abs(yaw) > 1e-4:
            steps.append({"action": "rotate", "object": name, "axis": "z", "angle_deg": round(yaw, 6)})
        factor = sb / sa
        if abs(factor - 1.0) > 1e-6 and 0.05 <= factor <= 20.0:
            steps.append({"action": "scale", "object": name, "factor": round(float(factor), 8)})
        for step in steps:
            args = {k: v for k, v in step.items() if k != "action"}
            apply_action(probe, Action(step["action"], args))
        delta = B[:3, 3] - probe.objects[name].matrix_world[:3, 3]
        if np.abs(delta).max() > eps and np.abs(delta).max() <= 10.0:
            steps.append({"action": "move", "object": name, "delta": [round(float(d), 8) for d in delta]})
            probe.objects[name].matrix_world[:3, 3] += delta
        program.extend(steps)
    return program
