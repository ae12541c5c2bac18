"""ONNX Runtime sessions: one per model stage, created lazily, cached, released on demand.

This is the one place that creates `onnxruntime.InferenceSession`s.  Provider order is CUDA then
CPU, chosen from `onnxruntime.get_available_providers()`.  ONNX Runtime silently falls back to
the CPU when CUDA cannot start; we check the providers a session really got and say so.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import numpy as np

from .contract import ModelCard
from .errors import DeviceError, ModelError

log = logging.getLogger("sam3d")

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")


def _ort():
    try:
        import onnxruntime
    except ImportError:  # pragma: no cover - the package is a hard dependency
        raise ModelError("ONNX Runtime is not installed; install the add-on's runtime wheels.") from None
    return onnxruntime


def select_providers(device: str) -> list[str]:
    """Provider list for a device choice; raises DeviceError for unusable requests."""
    if device not in DEVICES:
        raise DeviceError(f"Unknown device '{device}'; use one of: {', '.join(DEVICES)}.")
    available = _ort().get_available_providers()
    if device == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if device == "cuda":
        raise DeviceError(
            "CUDA was requested but this ONNX Runtime has no CUDA support; install the 'gpu' extra "
            "(onnxruntime-gpu) or use device 'auto' or 'cpu'."
        )
    return [CPU]


class Stage:
    """One ONNX graph of a model with its session, feeding float32 or float16 as the graph wants."""

    def __init__(self, name: str, session, io_binding: bool):
        self.name = name
        self.session = session
        self.input_types = {i.name: i.type for i in session.get_inputs()}
        self.output_names = [o.name for o in session.get_outputs()]
        self.io_binding = io_binding
        self._device_inputs: dict[str, object] = {}

    _DTYPES = {"tensor(float16)": np.float16, "tensor(int64)": np.int64, "tensor(int32)": np.int32}

    def _cast(self, name: str, value: np.ndarray) -> np.ndarray:
        want = self._DTYPES.get(self.input_types.get(name), np.float32)
        return np.ascontiguousarray(value, dtype=want)

    def pin(self, name: str, value: np.ndarray) -> None:
        """Keep an input that is reused across calls (the condition) on the device (CUDA)."""
        if self.io_binding:
            ort = _ort()
            self._device_inputs[name] = ort.OrtValue.ortvalue_from_numpy(self._cast(name, value), "cuda", 0)

    def unpin(self) -> None:
        self._device_inputs.clear()

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.io_binding:
            outs = self.session.run(self.output_names, {k: self._cast(k, v) for k, v in feeds.items()})
        else:
            binding = self.session.io_binding()
            for k in self.input_types:
                if k in self._device_inputs and k not in feeds:
                    binding.bind_ortvalue_input(k, self._device_inputs[k])
                else:
                    binding.bind_cpu_input(k, self._cast(k, feeds[k]))
            for o in self.output_names:
                binding.bind_output(o, "cpu")
            self.session.run_with_iobinding(binding)
            outs = binding.copy_outputs_to_cpu()
        return {n: np.asarray(o, dtype=np.int64 if np.issubdtype(np.asarray(o).dtype, np.integer) else np.float32)
                for n, o in zip(self.output_names, outs)}


class SessionCache:
    """Lazily created sessions for the stages of one model on one device."""

    def __init__(self, card: ModelCard, device: str = "auto", notice: Callable[[str], None] | None = None,
                 memory_arena: bool = True):
        """memory_arena=False: activations go back to the system after each run instead of staying
        in ORT's CPU arena (for graphs whose size follows the input, like the sparse texture
        graphs: an arena would keep the largest object's activations for the session's life)."""
        self.card = card
        self.device = device
        self.memory_arena = memory_arena
        self.providers = select_providers(device)
        self.notice = notice or log.warning
        self._stages: dict[str, Stage] = {}
        self._lock = threading.Lock()
        self.active_device = "cuda" if self.providers[0] == CUDA else "cpu"

    def stage(self, name: str) -> Stage:
        if name not in self.card.stages:
            raise KeyError(name)
        with self._lock:
            if name not in self._stages:
                self._stages[name] = self._create(name)
            return self._stages[name]

    def _create(self, name: str) -> Stage:
        ort = _ort()
        path = self.card.file(name)
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # keep ORT's own warnings out of the artist's console
        if not self.memory_arena:
            opts.enable_cpu_mem_arena = False
            opts.enable_mem_pattern = False  # shapes change with every object
        try:
            session = ort.InferenceSession(str(path), sess_options=opts, providers=self.providers)
        except Exception as exc:  # noqa: BLE001 - ORT raises several unrelated types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"Model file {path.name} of '{self.card.name}' cannot be loaded ({first[:160]}); reinstall or re-export the model.") from None
        got = session.get_providers()
        if CUDA in self.providers and CUDA not in got:
            self.notice(f"CUDA is listed but could not start for {path.name}; running on the CPU.")
            if self.device == "cuda":
                raise DeviceError("CUDA was requested but could not start (check the NVIDIA driver and CUDA/cuDNN libraries); use device 'cpu'.")
        self.active_device = "cuda" if CUDA in got else "cpu"
        self._check_io(name, session)
        return Stage(name, session, io_binding=self.active_device == "cuda")

    def _check_io(self, name: str, session) -> None:
        want_in = {i["name"] for i in self.card.io(name)["inputs"]}
        want_out = {o["name"] for o in self.card.io(name)["outputs"]}
        got_in = {i.name for i in session.get_inputs()}
        got_out = {o.name for o in session.get_outputs()}
        if want_in != got_in or want_out != got_out:
            raise ModelError(
                f"Model file {self.card.file(name).name} does not match its card (inputs {sorted(got_in)}); "
                "it is from another model version: re-export the model."
            )

    def release(self) -> None:
        """Drop every session (frees GPU memory); the next call recreates them."""
        with self._lock:
            for st in self._stages.values():
                st.unpin()
            self._stages.clear()

    @property
    def loaded(self) -> list[str]:
        return sorted(self._stages)
