"""The refinement action language: JSON programs checked against a schema, never executed as code.

A program is a JSON array of action objects, e.g.

    [{"action": "move", "object": "chair", "delta": [0.1, 0, 0]},
     {"action": "place_on", "object": "mug", "support": "table"},
     {"action": "done"}]

Objects and lights are named by the labels shown in the renders.  `validate_program` checks
every field (type, range, finiteness, string length, no extra fields) and every name against
the scene as the program would change it (a duplicate's new name exists after the duplicate,
a deleted object no longer does).  It returns the accepted actions and a list of one-line
rejections that a loop can feed back to the policy.  `parse_reply` pulls the first JSON
array/object out of a model's reply (tolerating ```json fences) under a size cap.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..errors import Sam3DError

MAX_REPLY_CHARS = 64_000  # a VLM reply longer than this is refused before parsing
MAX_ACTIONS = 32  # per program
MAX_NAME_CHARS = 63  # Blender's ID name limit
MAX_DESCRIPTION_CHARS = 200
GROUND = "ground"  # the pseudo-object a place_on can target
CAMERA = "camera"  # the pseudo-object a look_at can target
AXES = ("x", "y", "z")
LIGHT_TYPES = ("POINT", "SUN", "SPOT", "AREA")

_NAME_RE = re.compile(r"^[A-Za-z0-9_.\- ]{1,%d}$" % MAX_NAME_CHARS)


class ActionParseError(Sam3DError):
    """A policy reply holds no usable JSON program."""


# -- the schema ---------------------------------------------------------------------------------
# Field kinds: ("object",) an existing object; ("object_or", extra) an object or a pseudo-object;
# ("light",) an existing light; ("mask",) a known mask id; ("vec3", lo, hi); ("number", lo, hi);
# ("string", max_chars); ("name",) a new object name; ("enum", choices).

@dataclass(frozen=True)
class ActionSpec:
    required: dict[str, tuple]
    optional: dict[str, tuple] = field(default_factory=dict)
    one_of: tuple[tuple[str, ...], ...] = ()  # groups of which exactly one field must be given
    any_of: tuple[str, ...] = ()  # at least one of these optional fields must be given
    doc: str = ""


SCHEMA: dict[str, ActionSpec] = {
    "move": ActionSpec({"object": ("object",), "delta": ("vec3", -10.0, 10.0)},
                       doc="translate by delta metres (world x, y, z; z is up)"),
    "rotate": ActionSpec({"object": ("object",)},
                         {"axis": ("enum", AXES), "angle_deg": ("number", -360.0, 360.0),
                          "euler_deg": ("vec3", -360.0, 360.0)},
                         one_of=(("axis", "euler_deg"),),
                         doc="rotate about its own origin: axis+angle_deg about a world axis, or euler_deg (XYZ)"),
    "scale": ActionSpec({"object": ("object",), "factor": ("number", 0.05, 20.0)},
                        doc="scale uniformly about its bounding-box centre"),
    "place_on": ActionSpec({"object": ("object",), "support": ("object_or", (GROUND,))},
                           doc="drop straight down (or up) so it rests on the support's top or the ground"),
    "align": ActionSpec({"object": ("object",), "target": ("object",), "axis": ("enum", AXES)},
                        doc="make its bounding-box centre coordinate along axis equal to the target's"),
    "look_at": ActionSpec({"object": ("object",), "target": ("object_or", (CAMERA,))},
                          doc="turn about the vertical axis so its front (-Y local) faces the target"),
    "delete": ActionSpec({"object": ("object",)}, doc="remove the object"),
    "duplicate": ActionSpec({"object": ("object",)},
                            {"new_name": ("name",), "offset": ("vec3", -10.0, 10.0)},
                            doc="copy the object (same mesh), moved by offset"),
    "set_material": ActionSpec({"object": ("object",)},
                               {"description": ("string", MAX_DESCRIPTION_CHARS),
                                "base_color": ("vec3", 0.0, 1.0), "roughness": ("number", 0.0, 1.0),
                                "metallic": ("number", 0.0, 1.0)},
                               any_of=("base_color", "roughness", "metallic", "description"),
                               doc="principled material: base_color linear RGB 0..1, roughness, metallic"),
    "add_light": ActionSpec({"type": ("enum", LIGHT_TYPES), "position": ("vec3", -100.0, 100.0),
                             "power": ("number", 0.0, 10_000.0)},
                            {"color": ("vec3", 0.0, 1.0)},
                            doc="a new light; power in W (SUN: strength)"),
    "set_light": ActionSpec({"light": ("light",)},
                            {"power": ("number", 0.0, 10_000.0), "color": ("vec3", 0.0, 1.0)},
                            any_of=("power", "color"), doc="change a light's power and/or colour"),
    "reconstruct": ActionSpec({"mask_id": ("mask",)}, doc="ask for the object of this mask to be 3Dfied again"),
    "done": ActionSpec({}, doc="the scene needs no more changes"),
}


@dataclass(frozen=True)
class Action:
    name: str
    args: dict[str, Any]

    def to_json(self) -> dict:
        return {"action": self.name, **self.args}


@dataclass(frozen=True)
class Rejection:
    index: int | None  # position in the program; None for the whole reply
    reason: str

    def __str__(self) -> str:
        where = "reply" if self.index is None else f"action {self.index}"
        return f"{where}: {self.reason}"


def describe_language() -> str:
    """The action language as text for a VLM prompt (generated from SCHEMA)."""
    lines = []
    for name, spec in SCHEMA.items():
        fields = [f"{k}: {_kind_text(v)}" for k, v in spec.required.items()]
        fields += [f"{k}?: {_kind_text(v)}" for k, v in spec.optional.items()]
        lines.append(f'- {{"action": "{name}"{", " if fields else ""}{", ".join(fields)}}}  -- {spec.doc}')
    return "\n".join(lines)


def _kind_text(kind: tuple) -> str:
    tag = kind[0]
    if tag in ("vec3", "number"):
        return f"{'[x,y,z] each ' if tag == 'vec3' else ''}number in [{kind[1]:g}, {kind[2]:g}]"
    if tag == "enum":
        return " | ".join(f'"{c}"' for c in kind[1])
    if tag == "object_or":
        return "object label | " + " | ".join(f'"{c}"' for c in kind[1])
    if tag == "string":
        return f"string (<= {kind[1]} chars)"
    if tag == "name":
        return f"new object name (letters, digits, _ . - space; <= {MAX_NAME_CHARS})"
    return {"object": "object label", "light": "light name", "mask": "mask id"}[tag]


# -- validation -----------------------------------------------------------------------------------

def _number(value, lo: float, hi: float, what: str) -> float:
    # bool is an int subclass: reject it explicitly so `true` is not read as 1
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} must be a number, got {type(value).__name__}")
    try:
        v = float(value)
    except OverflowError:  # a huge JSON integer
        v = math.inf
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite")
    if not lo <= v <= hi:
        raise ValueError(f"{what}={_short(v)} is outside [{lo:g}, {hi:g}]")
    return v


def _short(value, limit: int = 40) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else repr(value)
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_field(key: str, kind: tuple, value, names: dict) -> Any:
    tag = kind[0]
    if tag == "number":
        return _number(value, kind[1], kind[2], key)
    if tag == "vec3":
        if not isinstance(value, list) or len(value) != 3:
            raise ValueError(f"{key} must be a list of 3 numbers")
        return [_number(v, kind[1], kind[2], f"{key}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {type(value).__name__}")
    if tag == "string":
        if len(value) > kind[1]:
            raise ValueError(f"{key} is longer than {kind[1]} characters")
        if any(ord(c) < 32 for c in value):
            raise ValueError(f"{key} holds control characters")
        return value
    if tag == "enum":
        choice = value.upper() if kind[1] is LIGHT_TYPES else value.lower()
        if choice not in kind[1]:
            raise ValueError(f"{key} must be one of {', '.join(kind[1])}, got {_short(value)!r}")
        return choice
    if tag == "name":
        if not _NAME_RE.match(value):
            raise ValueError(f"{key} {_short(value)!r} is not a valid name (letters, digits, _ . - space)")
        if value in names["objects"] or value in names["lights"] or value in (GROUND, CAMERA):
            raise ValueError(f"{key} {value!r} is already taken")
        return value
    pool = {"object": names["objects"], "object_or": names["objects"] | set(kind[1] if tag == "object_or" else ()),
            "light": names["lights"], "mask": names["masks"]}[tag]
    if value not in pool:
        what = {"object": "object", "object_or": "object", "light": "light", "mask": "mask id"}[tag]
        known = ", ".join(sorted(pool)[:12]) or "none"
        raise ValueError(f"unknown {what} {_short(value)!r} (known: {known})")
    return value


def validate_action(item, names: dict) -> Action:
    """One action object -> Action; raises ValueError with a one-line reason."""
    if not isinstance(item, dict):
        raise ValueError(f"expected an action object, got {type(item).__name__}")
    name = item.get("action")
    if not isinstance(name, str) or name not in SCHEMA:
        raise ValueError(f"unknown action {_short(name)!r} (known: {', '.join(SCHEMA)})")
    spec = SCHEMA[name]
    allowed = {"action", *spec.required, *spec.optional}
    extra = sorted(set(item) - allowed)
    if extra:
        raise ValueError(f"{name}: unexpected field(s) {', '.join(_short(e) for e in extra)}")
    missing = [k for k in spec.required if k not in item]
    if missing:
        raise ValueError(f"{name}: missing field(s) {', '.join(missing)}")
    for group in spec.one_of:
        given = [k for k in group if k in item]
        if len(given) != 1:
            raise ValueError(f"{name}: give exactly one of {', '.join(group)}")
    if spec.any_of and not any(k in item for k in spec.any_of):
        raise ValueError(f"{name}: give at least one of {', '.join(spec.any_of)}")
    args = {}
    for key, kind in {**spec.required, **spec.optional}.items():
        if key in item:
            try:
                args[key] = _check_field(key, kind, item[key], names)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
    if name == "rotate" and "axis" in args and "angle_deg" not in args:
        raise ValueError("rotate: axis needs angle_deg")
    if name == "rotate" and "euler_deg" in args and "angle_deg" in args:
        raise ValueError("rotate: angle_deg goes with axis, not euler_deg")
    if name in ("align", "look_at") and args.get("target") == args.get("object"):
        raise ValueError(f"{name}: target must be another object")
    if name == "place_on" and args["support"] == args["object"]:
        raise ValueError("place_on: an object cannot support itself")
    return Action(name, args)


def scene_names(objects: Iterable[str], lights: Iterable[str] = (), masks: Iterable[str] = ()) -> dict:
    return {"objects": set(objects), "lights": set(lights), "masks": set(masks)}


def validate_program(program, names: dict) -> tuple[list[Action], list[Rejection]]:
    """Check a parsed program against the schema and the scene's names.

    Invalid actions are dropped (and reported); valid ones are kept in order, and names are
    tracked as the program goes (duplicate adds one, delete removes one, add_light adds one).
    Everything after a `done` is ignored.
    """
    names = {k: set(v) for k, v in names.items()}
    if isinstance(program, dict):
        program = program.get("program", program.get("actions", [program])) if ("program" in program or "actions" in program) else [program]
    if not isinstance(program, list):
        return [], [Rejection(None, f"a program must be a JSON array of actions, got {type(program).__name__}")]
    rejections: list[Rejection] = []
    if len(program) > MAX_ACTIONS:
        rejections.append(Rejection(None, f"{len(program)} actions; only the first {MAX_ACTIONS} are read"))
        program = program[:MAX_ACTIONS]
    actions: list[Action] = []
    n_lights = len(names["lights"])
    for i, item in enumerate(program):
        try:
            action = validate_action(item, names)
        except ValueError as exc:
            rejections.append(Rejection(i, str(exc)))
            continue
        actions.append(action)
        if action.name == "duplicate":
            new = action.args.get("new_name") or unique_name(action.args["object"], names["objects"])
            action.args["new_name"] = new  # fixed here so executor and validator agree
            names["objects"].add(new)
        elif action.name == "delete":
            names["objects"].discard(action.args["object"])
        elif action.name == "add_light":
            n_lights += 1
            names["lights"].add(f"light_{n_lights}")
        elif action.name == "done":
            break
    return actions, rejections


def unique_name(base: str, taken: set) -> str:
    for k in range(1, 10_000):
        candidate = f"{base[: MAX_NAME_CHARS - 4]}.{k:03d}"
        if candidate not in taken:
            return candidate
    raise ValueError("no free name")


# -- parsing a reply --------------------------------------------------------------------------------

_FENCE_RE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.S)


def parse_reply(text: str, max_chars: int = MAX_REPLY_CHARS):
    """The first JSON array or object in a model's reply; raises ActionParseError (one line)."""
    if not isinstance(text, str):
        raise ActionParseError("the reply is not text")
    if len(text) > max_chars:
        raise ActionParseError(f"the reply is {len(text)} characters, more than the {max_chars} allowed")
    fenced = _FENCE_RE.search(text)
    candidates = [fenced.group(1)] if fenced else []
    candidates.append(text)
    decoder = json.JSONDecoder()
    for chunk in candidates:
        for start, ch in enumerate(chunk):
            if ch in "[{":
                try:
                    value, _ = decoder.raw_decode(chunk, start)
                except (json.JSONDecodeError, RecursionError):
                    continue
                return value
    raise ActionParseError("no JSON program (a [...] array of actions) found in the reply")
