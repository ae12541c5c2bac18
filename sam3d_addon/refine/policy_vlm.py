"""A VLM policy: any OpenAI-compatible chat endpoint with image input, via the official `openai` SDK.

The model sees the prompt, the compact scene JSON, last round's rejections and the renders
(PNG bytes: the photo camera, a top and a side view, labels drawn at the objects' centres) and
answers with a JSON program in the action language, which the loop validates and runs on a
copy of the scene.  Its reply is data: it is parsed with `json` under a size cap, never executed.

Safety: the endpoint must be a loopback address unless `online_access` is True (Blender passes
`bpy.app.online_access`); the API key comes from the argument, SAM3D_VLM_API_KEY or
OPENAI_API_KEY and is never logged, stored in a file or shown in a message; requests have a
timeout and bounded retries; the reply body is read in chunks and refused past `max_reply_bytes`.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
from urllib.parse import urlparse

from ..errors import Sam3DError
from .actions import ActionParseError, describe_language, parse_reply
from .loop import Proposal

API_KEY_ENV = ("SAM3D_VLM_API_KEY", "OPENAI_API_KEY")
DEFAULT_URL = "http://127.0.0.1:8000/v1"
DEFAULT_MODEL = "qwen2.5-vl-7b-instruct"
MAX_REPLY_BYTES = 256_000


class VLMError(Sam3DError):
    """The VLM endpoint cannot be used or did not answer."""


# The in-context library: small worked examples of good programs (3D-Generalist's observation
# that examples make the policy's actions far more often useful).
EXAMPLES = [
    ("the mug floats above the table",
     [{"action": "place_on", "object": "mug", "support": "table"}]),
    ("the chair sinks into the sofa and faces away from the camera",
     [{"action": "move", "object": "chair", "delta": [0.4, 0, 0]},
      {"action": "look_at", "object": "chair", "target": "camera"}]),
    ("make the lamp brass and the room warmer",
     [{"action": "set_material", "object": "lamp", "description": "polished brass",
       "base_color": [0.8, 0.6, 0.25], "roughness": 0.25, "metallic": 1.0},
      {"action": "add_light", "type": "POINT", "position": [0.5, -1.0, 2.0], "power": 300,
       "color": [1.0, 0.85, 0.7]}]),
    ("two identical stools side by side, the second 0.6 m to the right",
     [{"action": "duplicate", "object": "stool", "new_name": "stool 2", "offset": [0.6, 0, 0]}]),
    ("the vase is too big and turned 30 degrees too far",
     [{"action": "scale", "object": "vase", "factor": 0.8},
      {"action": "rotate", "object": "vase", "axis": "z", "angle_deg": -30}]),
    ("the scene matches the photo and the prompt", [{"action": "done"}]),
]


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(base_url: str, online_access: bool) -> str:
    """The URL if it may be used; raises VLMError (one line) otherwise."""
    parsed = urlparse(str(base_url))
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise VLMError(f"VLM URL must be http(s)://host[:port]/path, got {base_url!r}.")
    if not online_access and not is_loopback(base_url):
        raise VLMError(f"VLM endpoint {parsed.hostname} is not on this machine and online access is off; "
                       "allow online access in Blender's preferences or use a local server (127.0.0.1).")
    return str(base_url)


def resolve_api_key(explicit: str | None = None) -> str | None:
    if explicit:
        return explicit
    for name in API_KEY_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def system_prompt() -> str:
    examples = "\n".join(f"- situation: {s}\n  program: {json.dumps(p)}" for s, p in EXAMPLES)
    return (
        "You refine a 3D scene in Blender (Z up, metres) so that it matches a photo and a request. "
        "You see renders: 'photo_camera' (through the photo's camera, labels at object centres), "
        "'top' and 'side' views, and the scene as JSON.  Objects must rest on the ground or on another "
        "object, must not intersect, and should line up with the photo.\n"
        "Answer with ONE JSON array of actions and nothing else.  The only actions are:\n"
        f"{describe_language()}\n"
        "Use object labels exactly as shown.  Use {\"action\": \"done\"} when nothing should change.\n"
        f"Examples:\n{examples}"
    )


class VLMPolicy:
    name = "vlm"

    def __init__(self, base_url: str = DEFAULT_URL, model: str = DEFAULT_MODEL, api_key: str | None = None,
                 online_access: bool = False, timeout_s: float = 60.0, max_retries: int = 2,
                 max_reply_bytes: int = MAX_REPLY_BYTES, temperature: float = 0.7):
        self.base_url = check_endpoint(base_url, online_access)
        self.model = str(model)
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.max_reply_bytes = int(max_reply_bytes)
        self.temperature = float(temperature)
        key = resolve_api_key(api_key)
        if key is None and not is_loopback(self.base_url):
            raise VLMError(f"No API key for {urlparse(self.base_url).hostname}: set SAM3D_VLM_API_KEY or OPENAI_API_KEY.")
        try:
            from openai import OpenAI
        except ImportError:
            raise VLMError("The VLM policy needs the 'openai' package: pip install openai") from None
        # local servers usually ignore the key, but the SDK wants one
        self._client = OpenAI(api_key=key or "not-needed", base_url=self.base_url,
                              timeout=self.timeout_s, max_retries=self.max_retries)

    def __repr__(self) -> str:  # never shows the key
        return f"VLMPolicy(base_url={self.base_url!r}, model={self.model!r})"

    # -- messages -------------------------------------------------------------------------------
    def build_messages(self, state, prompt: str, feedback=(), observations=()) -> list[dict]:
        text = [f"Request: {prompt or 'make the scene match the photo and be physically plausible'}",
                "Scene: " + json.dumps(state.to_compact_json(), separators=(",", ":"))]
        if feedback:
            text.append("Problems with your last answer (fix them):\n" + "\n".join(f"- {f}" for f in list(feedback)[:20]))
        content: list[dict] = [{"type": "text", "text": "\n".join(text)}]
        for view, png in observations or ():
            content.append({"type": "text", "text": f"view: {view}"})
            content.append({"type": "image_url",
                            "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode("ascii")}})
        return [{"role": "system", "content": system_prompt()}, {"role": "user", "content": content}]

    # -- one request ------------------------------------------------------------------------------
    def ask(self, messages: list[dict]) -> str:
        """The reply text; raises VLMError (one line) on timeout, HTTP errors or oversize replies."""
        import openai

        try:
            with self._client.chat.completions.with_streaming_response.create(
                    model=self.model, messages=messages, temperature=self.temperature) as response:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body.extend(chunk)
                    if len(body) > self.max_reply_bytes:
                        raise VLMError(f"the VLM reply is larger than {self.max_reply_bytes} bytes; refused")
        except openai.APITimeoutError:
            raise VLMError(f"the VLM at {self.base_url} did not answer within {self.timeout_s:g} s") from None
        except openai.APIConnectionError:
            raise VLMError(f"cannot reach the VLM at {self.base_url}") from None
        except openai.APIStatusError as exc:
            raise VLMError(f"the VLM at {self.base_url} answered HTTP {exc.status_code}") from None
        try:
            data = json.loads(bytes(body))
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise VLMError("the VLM reply is not an OpenAI chat completion") from None
        if isinstance(content, list):  # content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise VLMError("the VLM reply has no text")
        return content

    # -- the policy interface -----------------------------------------------------------------------
    def propose(self, state, k: int, prompt: str = "", feedback=(), observations=()) -> list[Proposal]:
        messages = self.build_messages(state, prompt, feedback, observations)
        out = []
        for _ in range(max(1, int(k))):
            text = self.ask(messages)
            try:
                out.append(Proposal(program=parse_reply(text), raw=text[:2000]))
            except ActionParseError as exc:
                out.append(Proposal(error=str(exc), raw=text[:2000]))
        return out
