"""The machine's matmul peak, measured in the same run as the benchmarks it normalizes, and the
FLOPs of one MiniLM-L6 forward (what a fraction of the FLOP bound is computed from)."""
from __future__ import annotations

import os
import time

import numpy as np

LAYERS, HIDDEN, FFN = 6, 384, 1536
PARAMS_PER_LAYER = 4 * HIDDEN * HIDDEN + 2 * HIDDEN * FFN  # Q, K, V, output projections + the FFN


def forward_flops(tokens: int) -> float:
    """FLOPs of one sequence of `tokens` real tokens: the dense layers plus attention's QK^T and AV."""
    return LAYERS * (2 * PARAMS_PER_LAYER * tokens + 4 * tokens * tokens * HIDDEN)


def _best(fn, seconds: float = 1.5) -> float:
    fn()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(n: int = 2048, threads: int | None = None) -> dict:
    """GFLOP/s (GOP/s for int8) of a square matmul on all the process's cores: fp32 and bf16 (AMX
    where present) with torch, u8 x s8 -> s32 with ONNX Runtime's MatMulInteger (VNNI/AMX)."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    threads = threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    flops = 2.0 * n ** 3
    out = {"n": n, "threads": threads}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out[f"{name}_gflops"] = round(flops / _best(lambda: torch.mm(a, b)) / 1e9, 1)
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (n, n), dtype=np.uint8)
    b = rng.integers(-127, 127, (n, n), dtype=np.int8)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "mm",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [n, n])],
                              [onnx.numpy_helper.from_array(b, "B")])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                   opts, providers=["CPUExecutionProvider"])
    out["int8_gops"] = round(flops / _best(lambda: session.run(None, {"A": a})) / 1e9, 1)
    return out


if __name__ == "__main__":
    print(matmul_peak())
