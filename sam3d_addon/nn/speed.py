"""CPU speed of the geometry model: torch eager against ONNX Runtime, call for call.

Both runtimes get the same inputs (batch 1) and the same number of intra-op threads, and are
timed alternately in one loop, so load from other processes hits both alike; each figure is the
median over `repeats` calls after a warm-up.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from ..contract import load_card
from ..errors import ModelError
from .bundle import build_models
from .checkpoint import load_checkpoint
from .export import example_inputs, export_checkpoint, stage_graphs

BENCH_STAGES = ("velocity", "condition_encoder")


def _median_seconds(torch_call: Callable[[], Any], ort_call: Callable[[], Any], repeats: int) -> tuple[float, float]:
    torch_call()
    ort_call()
    torch_times, ort_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        torch_call()
        torch_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        ort_call()
        ort_times.append(time.perf_counter() - start)
    return statistics.median(torch_times), statistics.median(ort_times)


def bench_speed(model_dir_or_checkpoint: str | Path, repeats: int = 10, threads: int | None = None) -> dict[str, Any]:
    """Seconds per velocity-network call and per condition-encoder call, torch vs ONNX Runtime.

    A checkpoint file is exported to a temporary directory first and both runtimes use its
    weights.  A model directory (or name) holds only ONNX graphs: torch then runs the card's
    architecture (`architecture.config`) with fresh weights, which costs the same per call.
    `ratio` = torch seconds / ORT seconds for one condition call plus one velocity call; each
    stage also has its own ratio.  `threads` (default: torch's current setting) applies to both.
    """
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    source = Path(model_dir_or_checkpoint)
    previous_threads = torch.get_num_threads()
    threads = threads or previous_threads
    torch.set_num_threads(threads)
    try:
        return _bench(source, repeats, threads)
    finally:
        torch.set_num_threads(previous_threads)


def _bench(source: Path, repeats: int, threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="sam3d-bench-") as scratch:
        if source.is_file():
            card = export_checkpoint(source, scratch)
            bundle, _ = load_checkpoint(source)
            torch_weights = "checkpoint"
        else:
            card = load_card(source)
            config_name = card.data.get("architecture", {}).get("config")
            if config_name is None:
                raise ModelError(f"Model '{card.name}' has no architecture.config in its card; re-export it.")
            bundle = build_models(config_name).eval_mode()
            torch_weights = "fresh (same architecture)"
        graphs = stage_graphs(bundle)
        result: dict[str, Any] = {
            "model": str(source),
            "config": bundle.config.name,
            "torch_weights": torch_weights,
            "device": "cpu",
            "batch": 1,
            "repeats": repeats,
            "threads": threads,
        }
        generator = torch.Generator().manual_seed(0)
        for stage in BENCH_STAGES:
            session = ort.InferenceSession(str(card.file(stage)), options, providers=["CPUExecutionProvider"])
            inputs = example_inputs(card.io(stage), batch=1, generator=generator)
            feed = {name: value.numpy() for name, value in inputs.items()}
            graph = graphs[stage]

            def torch_call():
                with torch.inference_mode():
                    graph(*inputs.values())

            torch_s, ort_s = _median_seconds(torch_call, lambda: session.run(None, feed), repeats)
            result[stage] = {"torch_s": torch_s, "ort_s": ort_s, "ratio": torch_s / ort_s}
    total_torch = sum(result[stage]["torch_s"] for stage in BENCH_STAGES)
    total_ort = sum(result[stage]["ort_s"] for stage in BENCH_STAGES)
    result["ratio"] = total_torch / total_ort
    return result
