"""Mesh import benchmark: the bridge's NumPy/foreach_set path vs a naive per-element Python path.

`bench_import(faces=500_000)` builds the same triangle grid (about `faces` triangles) twice in
one Blender session and times both:

* project -- `blender_bridge.mesh_from_numpy`: `vertices.add` + `foreach_set('co')`, loops and
  polygons via `foreach_set` (what 3Dfy uses);
* naive -- what add-ons often do: `vertices.add`, then `v.co = ...` per vertex, and per polygon
  `p.loop_start = ...` / `p.vertices = (a, b, c)`.

Both meshes are checked to be identical before the timings are reported.
Wired into the CLI as `sam3d bench import [--faces N] --json`.
"""

from __future__ import annotations

import time

import numpy as np


def grid_mesh(faces: int) -> tuple[np.ndarray, np.ndarray]:
    """A triangulated n x m grid with about `faces` triangles: (V,3) float32, (F,3) int32."""
    faces = max(2, int(faces))
    cols = max(1, int(np.sqrt(faces / 2.0)))
    rows = max(1, faces // (2 * cols))
    ys, xs = np.mgrid[0: rows + 1, 0: cols + 1]
    z = 0.05 * np.sin(xs * 0.3) * np.cos(ys * 0.2)
    verts = np.stack([xs / cols, ys / rows, z], axis=-1).reshape(-1, 3).astype(np.float32)
    idx = np.arange((rows + 1) * (cols + 1)).reshape(rows + 1, cols + 1)
    a, b = idx[:-1, :-1].ravel(), idx[:-1, 1:].ravel()
    c, d = idx[1:, 1:].ravel(), idx[1:, :-1].ravel()
    tris = np.concatenate([np.stack([a, b, c], 1), np.stack([a, c, d], 1)]).astype(np.int32)
    return verts, tris


def bench_import(faces: int = 500_000) -> dict:
    from . import blender_bridge as bridge

    verts, tris = grid_mesh(faces)
    meshes = []
    try:
        t0 = time.perf_counter()
        fast = bridge.mesh_from_numpy("bench_project", verts, tris, smooth=False)
        project = time.perf_counter() - t0
        meshes.append(fast)

        t0 = time.perf_counter()
        slow = bridge.mesh_from_python_lists("bench_naive", verts, tris)
        naive = time.perf_counter() - t0
        meshes.append(slow)

        if bridge.mesh_signature(fast) != bridge.mesh_signature(slow):
            raise RuntimeError("bench_import: the two import paths built different meshes")
        return {
            "faces": int(len(tris)),
            "vertices": int(len(verts)),
            "project_seconds": round(project, 4),
            "naive_seconds": round(naive, 4),
            "speedup": round(naive / project, 1) if project > 0 else None,
        }
    finally:
        for mesh in meshes:
            bridge.remove_mesh(mesh)
