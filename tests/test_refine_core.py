"""Scene refinement core (NumPy only): action language, executor, verifiers, built-in policy, loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sam3d_addon.refine import actions as A
from sam3d_addon.refine import loop as L
from sam3d_addon.refine import policy_builtin as P
from sam3d_addon.refine import scene as S
from sam3d_addon.refine import synthetic as Y
from sam3d_addon.refine import verify as V


def two_objects() -> S.SceneState:
    v, f = Y.box_mesh((0.6, 0.6, 0.8))
    v2, f2 = Y.box_mesh((1.2, 0.8, 0.7))
    return Y.make_scene([dict(name="chair", vertices=v, faces=f, xy=(-0.6, 0.3), yaw_deg=20),
                         dict(name="table", vertices=v2, faces=f2, xy=(0.6, 0.6))])


# -- 1. the action language -----------------------------------------------------------------------

def test_valid_program_is_accepted_and_names_are_tracked():
    st = two_objects()
    prog = [{"action": "duplicate", "object": "table", "new_name": "table 2", "offset": [2, 0, 0]},
            {"action": "set_material", "object": "table 2", "base_color": [1, 0, 0], "roughness": 0.3},
            {"action": "delete", "object": "chair"},
            {"action": "move", "object": "chair", "delta": [0, 0, 1]},  # deleted just before
            {"action": "add_light", "type": "point", "position": [0, 0, 3], "power": 500},
            {"action": "set_light", "light": "light_1", "power": 100},
            {"action": "done"},
            {"action": "delete", "object": "table"}]  # after done: ignored
    acts, rej = A.validate_program(prog, st.names())
    assert [a.name for a in acts] == ["duplicate", "set_material", "delete", "add_light", "set_light", "done"]
    assert [r.index for r in rej] == [3] and "unknown object 'chair'" in rej[0].reason
    assert acts[3].args["type"] == "POINT"


@pytest.mark.parametrize("item, reason", [
    ({"action": "explode", "object": "chair"}, "unknown action"),
    ({"action": "move", "object": "sofa", "delta": [0, 0, 1]}, "unknown object"),
    ({"action": "move", "object": "chair", "delta": [0, 0, 11]}, "outside [-10, 10]"),
    ({"action": "move", "object": "chair", "delta": [0, 0, float("nan")]}, "finite"),
    ({"action": "move", "object": "chair", "delta": [0, 0, 10 ** 400]}, "finite"),
    ({"action": "move", "object": "chair", "delta": [0, True, 0]}, "must be a number"),
    ({"action": "move", "object": "chair", "delta": [0, 0]}, "list of 3"),
    ({"action": "move", "object": "chair", "delta": [0, 0, 0], "code": "x"}, "unexpected field"),
    ({"action": "move", "object": "chair"}, "missing field"),
    ({"action": "scale", "object": "chair", "factor": 0.0}, "outside"),
    ({"action": "rotate", "object": "chair"}, "exactly one of"),
    ({"action": "rotate", "object": "chair", "axis": "w", "angle_deg": 3}, "must be one of"),
    ({"action": "set_material", "object": "chair", "description": "x" * 201}, "longer than"),
    ({"action": "set_material", "object": "chair"}, "at least one"),
    ({"action": "duplicate", "object": "chair", "new_name": "table"}, "already taken"),
    ({"action": "duplicate", "object": "chair", "new_name": "a;import os"}, "not a valid name"),
    ({"action": "place_on", "object": "chair", "support": "chair"}, "cannot support itself"),
    ({"action": "set_light", "light": "sun", "power": 3}, "unknown light"),
    ({"action": "reconstruct", "mask_id": "../etc/passwd"}, "unknown mask id"),
    ("move chair up", "expected an action object"),
])
def test_invalid_actions_are_rejected_with_one_line(item, reason):
    acts, rej = A.validate_program([item], two_objects().names())
    assert acts == [] and len(rej) == 1
    assert reason in rej[0].reason and "\n" not in str(rej[0])


def test_parse_reply_fences_prose_and_caps():
    assert A.parse_reply('Here:\n```json\n[{"action": "done"}]\n```\nbye') == [{"action": "done"}]
    assert A.parse_reply('I think [{"action": "done"}] is right') == [{"action": "done"}]
    assert A.parse_reply('{"program": [{"action": "done"}]}') == {"program": [{"action": "done"}]}
    with pytest.raises(A.ActionParseError, match="no JSON program"):
        A.parse_reply("I would move the chair left.")
    with pytest.raises(A.ActionParseError, match="characters"):
        A.parse_reply("[" + " " * A.MAX_REPLY_CHARS + "]")
    with pytest.raises(A.ActionParseError):
        A.parse_reply("[" * 5000)  # nesting bombs never get through
    acts, rej = A.validate_program({"program": [{"action": "done"}]}, two_objects().names())
    assert [a.name for a in acts] == ["done"] and not rej
    acts, rej = A.validate_program([{"action": "done"}] * 40, two_objects().names())
    assert "only the first 32" in rej[0].reason
    assert "place_on" in A.describe_language()


# -- 2. the executor ----------------------------------------------------------------------------

def test_executor_works_on_copies_and_each_action_does_what_it_says():
    st = two_objects()
    before = {n: o.matrix_world.copy() for n, o in st.objects.items()}
    prog = [{"action": "move", "object": "chair", "delta": [0.1, 0.2, 0.5]},
            {"action": "rotate", "object": "table", "axis": "z", "angle_deg": 90},
            {"action": "scale", "object": "table", "factor": 2.0},
            {"action": "place_on", "object": "chair", "support": "table"},
            {"action": "duplicate", "object": "chair", "offset": [3, 0, 0]},
            {"action": "align", "object": "chair.001", "target": "table", "axis": "y"},
            {"action": "set_material", "object": "table", "base_color": [0.1, 0.2, 0.3], "metallic": 1,
             "description": "__import__('os').system('touch /tmp/pwned')"},
            {"action": "add_light", "type": "SUN", "position": [0, 0, 5], "power": 3, "color": [1, 0.9, 0.8]},
            {"action": "reconstruct", "mask_id": "chair"}]
    acts, rej = A.validate_program(prog, st.names())
    assert not rej
    new, done = S.execute(st, acts)
    assert not done
    for n, M in before.items():  # the input state is untouched
        np.testing.assert_array_equal(st.objects[n].matrix_world, M)
    assert "chair.001" not in st.objects and not st.lights and not st.requests
    chair, table, dup = new.objects["chair"], new.objects["table"], new.objects["chair.001"]
    assert chair.world_bounds()[0][2] == pytest.approx(table.world_bounds()[1][2])  # resting on the top
    assert np.linalg.norm(table.matrix_world[:3, 0]) == pytest.approx(2.0)
    tl, th = table.world_bounds()
    dl, dh = dup.world_bounds()
    assert (dl[1] + dh[1]) / 2 == pytest.approx((tl[1] + th[1]) / 2)
    assert dup.source == "chair" and dup.vertices is chair.vertices  # meshes are shared, never copied
    assert table.material.description.startswith("__import__")  # data, stored as text, never run
    assert new.lights["light_1"].type == "SUN" and new.requests == [{"reconstruct": "chair"}]


def test_look_at_turns_the_front_towards_the_target():
    st = two_objects()
    acts, _ = A.validate_program([{"action": "look_at", "object": "chair", "target": "table"}], st.names())
    new, _ = S.execute(st, acts)
    ch, tb = new.objects["chair"], new.objects["table"]
    front = ch.matrix_world[:3, :3] @ np.array([0, -1.0, 0])
    want = np.mean(tb.world_bounds(), axis=0) - np.mean(ch.world_bounds(), axis=0)
    angle = math.degrees(math.atan2(front[1], front[0]) - math.atan2(want[1], want[0]))
    assert abs((angle + 180) % 360 - 180) < 1e-6


# -- 3. verifiers -------------------------------------------------------------------------------

def test_verifiers_on_the_ground_truth_and_on_broken_scenes():
    st = two_objects()
    rep = V.verify(st)
    assert rep.collisions == [] and rep.unsupported == [] and rep.out_of_bounds == []
    assert rep.iou_mean > 0.93 and rep.support == {"chair": "ground", "table": "ground"}

    broken = st.copy()
    broken.objects["chair"].matrix_world[:3, 3] = broken.objects["table"].matrix_world[:3, 3] + [0.2, 0, 0]
    broken.objects["table"].matrix_world[2, 3] += 0.3
    rep2 = V.verify(broken)
    assert [c[:2] for c in rep2.collisions] == [("chair", "table")]
    assert rep2.unsupported == ["chair", "table"] and rep2.score < rep.score  # chair: below ground
    assert rep2.iou["chair"] < 0.5

    touching = st.copy()  # face to face: no collision (volume 0)
    lo, hi = touching.objects["table"].world_bounds()
    clo, chi = touching.objects["chair"].world_bounds()
    touching.objects["chair"].matrix_world[0, 3] += lo[0] - chi[0]
    touching.objects["chair"].matrix_world[1, 3] += (lo[1] + hi[1]) / 2 - (clo[1] + chi[1]) / 2
    assert V.collisions(touching) == []

    st.footprint = (-2.0, 2.0, -2.0, 2.0)
    far = st.copy()
    far.objects["table"].matrix_world[0, 3] += 5
    assert V.verify(st).out_of_bounds == [] and V.verify(far).out_of_bounds == ["table"]


def test_depth_order_consistency_reads_occlusion_from_the_masks():
    v, f = Y.box_mesh((0.5, 0.5, 0.5))
    st = Y.make_scene([dict(name="front", vertices=v, faces=f, xy=(0.0, -0.5)),
                       dict(name="back", vertices=v * 2, faces=f, xy=(0.1, 1.0))])
    rep = V.verify(st)
    assert rep.depth_pairs == 1 and rep.depth_consistent == 1.0
    swapped = st.copy()  # the same silhouettes, but the masks say the other order
    swapped.objects["front"].mask_id, swapped.objects["back"].mask_id = "back", "front"
    assert V.photo_consistency(swapped).depth_consistent < 1.0


# -- 4. the built-in policy and 5. the loop ---------------------------------------------------------

def test_builtin_policy_recovers_perturbed_poses_through_the_loop(tmp_path):
    gt = two_objects()
    start = Y.perturb(gt, np.random.default_rng(1))
    result = L.refine(start, P.BuiltinPolicy(seed=0), rounds=3, candidates=3, log_dir=tmp_path)
    assert result.initial.iou_mean < 0.8 and result.final.iou_mean > 0.9
    assert result.final.collisions == [] and result.final.unsupported == []
    assert result.kept_rounds >= 1 and result.stop_reason in ("no improvement", "round budget used", "policy said done")
    for n in gt.objects:
        err = np.linalg.norm(result.state.objects[n].matrix_world[:3, 3] - gt.objects[n].matrix_world[:3, 3])
        assert err < 0.08, (n, err)
    lines = [json.loads(x) for x in (tmp_path / "refine.jsonl").read_text().splitlines()]
    assert len(lines) == len(result.rounds) and lines[0]["kept"] is not None
    assert all(c["rejections"] == [] for line in lines for c in line["candidates"])  # policy speaks the language
    for n, M in ((n, o.matrix_world) for n, o in start.objects.items()):  # inputs untouched
        assert not np.allclose(M, result.state.objects[n].matrix_world)


def test_builtin_policy_resolves_interpenetration_and_floating_without_masks():
    st = two_objects()
    st.masks = {}
    st.objects["chair"].matrix_world[:3, 3] = st.objects["table"].matrix_world[:3, 3] + [0.5, 0.1, 0.6]
    result = L.refine(st, P.BuiltinPolicy(), rounds=3, candidates=2)
    assert result.initial.collisions and result.final.collisions == [] and result.final.unsupported == []


class _Scripted:
    name = "scripted"

    def __init__(self, programs):
        self.programs = list(programs)
        self.feedback = []

    def propose(self, state, k, prompt="", feedback=(), observations=()):
        self.feedback.append(list(feedback))
        return [self.programs.pop(0)] if self.programs else [[{"action": "done"}]]


def test_loop_keeps_only_improvements_reports_rejections_and_cancels():
    gt = two_objects()
    start = gt.copy()
    start.objects["chair"].matrix_world[2, 3] += 0.4
    policy = _Scripted([
        [{"action": "move", "object": "chair", "delta": [0, 0, 3]}],  # worse: not kept
        [{"action": "move", "object": "ghost", "delta": [0, 0, 1]},  # rejected, reported
         {"action": "place_on", "object": "chair", "support": "ground"}],
    ])
    kept = []
    result = L.refine(start, policy, rounds=5, candidates=1, on_keep=lambda i, s: kept.append(i))
    assert result.stop_reason == "no improvement" and kept == [] and result.kept_rounds == 0
    policy = _Scripted(policy.programs)
    result = L.refine(start, policy, rounds=5, candidates=1, on_keep=lambda i, s: kept.append(i))
    assert kept == [0] and result.final.unsupported == []
    assert "unknown object 'ghost'" in policy.feedback[1][0]  # fed back to the policy
    assert result.stop_reason == "policy said done"

    calls = iter([False, True])
    result = L.refine(start, _Scripted([[{"action": "place_on", "object": "chair", "support": "ground"}]]),
                      rounds=3, candidates=1, cancel=lambda: next(calls, True), on_keep=lambda i, s: kept.append(i))
    assert result.stop_reason == "cancelled" and result.state is start and kept == [0]
