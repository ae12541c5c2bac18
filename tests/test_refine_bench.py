"""`sam3d bench refine`: the harness's report on a handful of the held-out scenes (NumPy only)."""

from __future__ import annotations

import json

import numpy as np

from sam3d_addon.refine import bench as B
from sam3d_addon.refine import synthetic as Y
from sam3d_addon.refine import verify as V

KEYS = {"trans_err_median", "rot_err_deg_median", "collision_free_pct", "supported_pct", "silhouette_iou"}


def test_bench_scenes_are_fixed_plausible_and_in_view():
    a, b = Y.bench_scene(3), Y.bench_scene(3)
    assert list(a.objects) == list(b.objects) and 3 <= len(a.objects) <= 4
    for n in a.objects:
        np.testing.assert_array_equal(a.objects[n].matrix_world, b.objects[n].matrix_world)
        np.testing.assert_array_equal(a.masks[n], b.masks[n])
    rep = V.verify(a)
    assert rep.collisions == [] and rep.unsupported == [] and rep.iou_mean > 0.85
    assert all(m.sum() >= 30 for m in a.masks.values())


def test_bench_report_structure_and_refinement_improves():
    report = B.bench_refine(quick=True, scenes=4)
    json.dumps(report)  # plain JSON
    assert report["scenes"] == 4 and report["objects"] >= 12
    before, after = report["before"], report["after"]
    assert KEYS <= set(before) and KEYS <= set(after)
    assert after["trans_err_median"] < before["trans_err_median"]
    assert after["silhouette_iou"] > before["silhouette_iou"]
    assert after["supported_pct"] >= before["supported_pct"]
    for side in (before, after):
        assert 0 <= side["collision_free_pct"] <= 100 and 0 <= side["supported_pct"] <= 100


def test_cli_bench_refine_is_wired(monkeypatch, capsys):
    from sam3d_addon import cli

    seen = {}

    def fake(quick, seed=0):
        seen.update(quick=quick, seed=seed)
        return {"before": {}, "after": {}}

    monkeypatch.setattr(B, "bench_refine", fake)
    assert cli.main(["bench", "refine", "--quick", "--json", "--seed", "3"]) == 0
    assert json.loads(capsys.readouterr().out) == {"before": {}, "after": {}}
    assert seen == {"quick": True, "seed": 3}
