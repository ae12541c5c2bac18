"""The refinement loop: observe -> propose K programs -> apply each on a copy -> verify -> keep the best.

Each round asks the policy for K candidate programs (given the prompt, the current scene, the
observations and last round's rejections), validates them, applies each to a copy of the
scene, scores it with the verifiers (plus an optional judge), and keeps the best one if it
beats the current score.  It stops on `done`, when no candidate improves, on the round budget,
or when `cancel()` says so.  The live scene is never touched here: `on_keep(round, state)` is
called with every kept state (the Blender side applies it as one undo step).  A round that
fails or is cancelled changes nothing.  Every round is logged as one JSON line (and the
observation PNGs) to `log_dir` when given.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import Cancelled, Sam3DError
from .actions import Rejection, validate_program
from .scene import SceneState, execute
from .verify import Report, verify


@dataclass
class Proposal:
    """What a policy returns per candidate: a parsed program, or why there is none."""

    program: object = None
    error: str | None = None
    raw: str | None = None  # the reply text, for the log (never executed)


@dataclass
class CandidateResult:
    program: list[dict]
    rejections: list[str]
    report: Report | None
    done: bool
    error: str | None = None

    def to_json(self) -> dict:
        return {"program": self.program, "rejections": self.rejections, "done": self.done, "error": self.error,
                "report": self.report.to_json() if self.report is not None else None}


@dataclass
class RoundRecord:
    index: int
    score_before: float
    candidates: list[CandidateResult] = field(default_factory=list)
    kept: int | None = None
    score_after: float | None = None
    note: str = ""
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {"round": self.index, "score_before": round(self.score_before, 5),
                "score_after": None if self.score_after is None else round(self.score_after, 5),
                "kept": self.kept, "note": self.note, "seconds": round(self.seconds, 3),
                "candidates": [c.to_json() for c in self.candidates]}


@dataclass
class RefineResult:
    state: SceneState
    initial: Report
    final: Report
    rounds: list[RoundRecord]
    stop_reason: str
    kept_rounds: int

    def to_json(self) -> dict:
        return {"stop_reason": self.stop_reason, "kept_rounds": self.kept_rounds,
                "initial": self.initial.to_json(), "final": self.final.to_json(),
                "rounds": [r.to_json() for r in self.rounds]}


class _Log:
    def __init__(self, log_dir):
        self.dir = Path(log_dir) if log_dir else None
        if self.dir is not None:
            self.dir.mkdir(parents=True, exist_ok=True)
            (self.dir / "refine.jsonl").write_text("")

    def round(self, record: RoundRecord) -> None:
        if self.dir is not None:
            with open(self.dir / "refine.jsonl", "a") as fh:
                fh.write(json.dumps(record.to_json()) + "\n")

    def images(self, index: int, observations) -> None:
        if self.dir is not None:
            for view, png in observations or ():
                safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in str(view))[:40]
                (self.dir / f"round{index:02d}_{safe}.png").write_bytes(png)


def _as_proposal(item) -> Proposal:
    return item if isinstance(item, Proposal) else Proposal(program=item)


def refine(state: SceneState, policy, *, rounds: int = 3, candidates: int = 4, prompt: str = "",
           cancel: Callable[[], bool] | None = None, log_dir=None,
           observe: Callable[[SceneState], list] | None = None,
           judge: Callable[[SceneState, list], float] | None = None,
           on_keep: Callable[[int, SceneState], None] | None = None,
           progress: Callable[[float, str], None] | None = None,
           min_improvement: float = 1e-4) -> RefineResult:
    """Run the loop; returns the best state found (the input state when nothing was kept)."""
    log = _Log(log_dir)
    current = state
    initial = current_report = verify(current)
    records: list[RoundRecord] = []
    feedback: list[str] = []
    kept_rounds = 0
    stop = "round budget used"
    for index in range(int(rounds)):
        if cancel is not None and cancel():
            stop = "cancelled"
            break
        t0 = time.perf_counter()
        record = RoundRecord(index, current_report.score)
        if progress:
            progress(index / max(rounds, 1), f"round {index + 1}/{rounds}: observing")
        try:
            observations = observe(current) if observe is not None else []
            log.images(index, observations)
            if progress:
                progress(index / max(rounds, 1), f"round {index + 1}/{rounds}: asking the {policy.name} policy")
            proposals = [_as_proposal(p) for p in policy.propose(current, candidates, prompt=prompt,
                                                                 feedback=list(feedback),
                                                                 observations=observations)]
        except Cancelled:
            stop = "cancelled"
            break
        except Sam3DError as exc:
            record.note = f"policy failed: {exc}"
            record.seconds = time.perf_counter() - t0
            records.append(record)
            log.round(record)
            stop = record.note
            break

        best: tuple[float, int, SceneState, Report, bool] | None = None
        feedback = []
        for k, prop in enumerate(proposals):
            if cancel is not None and cancel():
                break
            if prop.error is not None:
                record.candidates.append(CandidateResult([], [str(Rejection(None, prop.error))], None, False, prop.error))
                feedback.append(str(Rejection(None, prop.error)))
                continue
            actions, rejections = validate_program(prop.program, current.names())
            texts = [str(r) for r in rejections]
            feedback.extend(texts)
            program = [a.to_json() for a in actions]
            if not actions:
                record.candidates.append(CandidateResult(program, texts, None, False, "no valid action"))
                continue
            only_done = all(a.name == "done" for a in actions)
            if only_done:
                record.candidates.append(CandidateResult(program, texts, current_report, True))
                continue
            new_state, done = execute(current, actions)
            report = verify(new_state, judge=judge(new_state, observations) if judge else None)
            record.candidates.append(CandidateResult(program, texts, report, done))
            if best is None or report.score > best[0]:
                best = (report.score, k, new_state, report, done)
        if cancel is not None and cancel():
            stop = "cancelled"  # a cancelled round keeps nothing
            record.note = "cancelled"
            record.seconds = time.perf_counter() - t0
            records.append(record)
            log.round(record)
            break

        usable = [c for c in record.candidates if c.error is None and c.program]
        all_done = bool(usable) and all(c.done and len(c.program) <= 1 for c in usable)
        if best is not None and best[0] > current_report.score + min_improvement:
            _, k, new_state, report, done = best
            record.kept, record.score_after = k, report.score
            record.note = f"kept candidate {k}: {report.summary()}"
            if on_keep is not None:
                on_keep(index, new_state)  # may raise: then the loop stops, the state is unchanged
            current, current_report = new_state, report
            kept_rounds += 1
            feedback.append(f"last kept: {report.summary()}")
            if done:
                stop = "policy said done"
        else:
            record.note = "no candidate improved the score"
            stop = "policy said done" if all_done else "no improvement"
        record.seconds = time.perf_counter() - t0
        records.append(record)
        log.round(record)
        if stop in ("policy said done", "no improvement"):
            break
    if progress:
        progress(1.0, stop)
    return RefineResult(current, initial, current_report, records, stop, kept_rounds)
