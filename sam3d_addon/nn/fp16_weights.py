"""Store an exported graph's large weights as float16; compute stays float32.

Why: `models/` must stay under 50 MB, and the weights are nearly all of a model file.  Halving
them leaves room for a larger model without a fp16 runtime: each float16 initializer feeds a
`Cast` to float32 that ONNX Runtime's constant folding evaluates once when the session is
created, so inference runs the same float32 kernels as before (measured on tiny 0.3.0's velocity
graph: 20.5 -> 10.5 MB, same speed, the same 16 Cast nodes left after optimisation as without).

Two steps, so the file holds exactly what torch computes with:
1. `round_module_fp16_` rounds the module's large parameters to float16 precision in place,
   before tracing (the rounding is the one lossy step; its effect on a model's metrics is
   measured by re-benchmarking, see the README);
2. `store_initializers_fp16` rewrites the traced file, converting only float32 initializers whose
   values float16 represents exactly, so this step changes no number.  Constants that tracing
   folded into values float16 cannot hold stay float32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Smaller tensors (norm weights, biases, embeddings of a few rows) are a few kB in all; keeping
# them float32 spares their precision for nothing measurable in size.
MIN_ELEMENTS = 1024
CAST_SUFFIX = "__fp16"
# How an export may store the large weights (`sam3d export --weights`); compute is float32 either way.
WEIGHT_STORAGE = ("float16", "float32")


def check_weights(weights: str) -> None:
    if weights not in WEIGHT_STORAGE:
        raise ValueError(f"weights must be one of {WEIGHT_STORAGE}, not {weights!r}")


def weight_card(weights: str) -> dict:
    """The model card's record of how the weights are stored."""
    check_weights(weights)
    if weights == "float32":
        return {"storage": "float32"}
    return {"storage": "float16", "min_elements": MIN_ELEMENTS, "compute": "float32"}


def round_module_fp16_(module, min_elements: int = MIN_ELEMENTS) -> int:
    """Round every floating parameter and buffer of `module` with >= min_elements values to
    float16 precision, in place (still float32 tensors).  Returns how many tensors were rounded."""
    import torch

    rounded = 0
    with torch.no_grad():
        tensors = list(module.parameters()) + list(module.buffers())
        for tensor in {id(t): t for t in tensors}.values():
            if tensor.dtype == torch.float32 and tensor.numel() >= min_elements:
                if not torch.isfinite(tensor).all() or tensor.abs().max() > 65504.0:
                    continue  # float16 cannot hold it; the file keeps it float32 too
                tensor.copy_(tensor.half().float())
                rounded += 1
    return rounded


def store_initializers_fp16(path: str | Path, min_elements: int = MIN_ELEMENTS) -> dict:
    """Rewrite the ONNX file at `path`: each float32 initializer with >= min_elements values that
    float16 holds exactly becomes a float16 initializer and a Cast back to float32 under the old
    name.  Returns {"converted": n, "kept_float32": n, "bytes_before": b, "bytes_after": b}."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = Path(path)
    bytes_before = path.stat().st_size
    model = onnx.load(str(path))
    graph = model.graph
    initializers, casts, kept = [], [], 0
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= min_elements:
            values = numpy_helper.to_array(init)
            half = values.astype(np.float16)
            if np.array_equal(half.astype(np.float32), values):
                stored = init.name + CAST_SUFFIX
                initializers.append(numpy_helper.from_array(half, stored))
                casts.append(helper.make_node("Cast", [stored], [init.name], to=TensorProto.FLOAT,
                                              name=stored + "_cast"))
                continue
            kept += 1
        initializers.append(init)
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)  # the casts first keeps the node list topologically sorted
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"converted": len(casts), "kept_float32": kept, "bytes_before": bytes_before,
            "bytes_after": path.stat().st_size}
