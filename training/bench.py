"""Measure a model's inference time per window on one onnxruntime thread (median of many runs).

The real-time budget is per window: the server runs one window per room per hop, batched across rooms. So this
reports milliseconds per window at batch 1 (one room) and at larger batches (many rooms), each the median of
`--runs` timed calls after warm-up, with BLAS pinned to one thread so the number means "one core".

The machines we share are noisy (the same model's median moves by 2x between runs), so `--compare OTHER.onnx`
times the two models alternately, call by call, in the same run, and reports the ratio of their medians: the
number to quote when saying one model costs more than another.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

WARMUP = 10


def time_calls(models: list, x: np.ndarray, runs: int) -> tuple[list[float], list[float]]:
    """(median, p90) ms per window of each model on `x`, the models called alternately (one model: plain repetition)."""
    for _ in range(WARMUP):
        for m in models:
            m.predict(x)
    times: list[list[float]] = [[] for _ in models]
    for _ in range(runs):
        for k, m in enumerate(models):
            t = time.perf_counter()
            m.predict(x)
            times[k].append(time.perf_counter() - t)
    return [float(np.median(t) / len(x) * 1000) for t in times], [float(np.percentile(t, 90) / len(x) * 1000) for t in times]


def _window(model, batch: int) -> np.ndarray:
    n_mels, frames = model.info.frontend.n_mels, model.info.patch_frames
    return (np.random.default_rng(0).random((batch, n_mels, frames)) * 3).astype(np.float32)


def bench(path: str | os.PathLike[str] | None, batches: list[int], runs: int, threads: int = 1) -> dict:
    from sendreturn_mood.model.contract import MoodModel

    model = MoodModel(path, threads=threads)
    result = {"model": str(model.path), "name": model.info.name, "threads": threads, "n_mels": model.info.frontend.n_mels,
              "frames": model.info.patch_frames, "runs": runs, "ms_per_window": {}}
    for b in batches:
        (median,), (p90,) = time_calls([model], _window(model, b), runs)
        result["ms_per_window"][str(b)] = {"median": median, "p90": p90}
    return result


def run_shapes(path: str | os.PathLike[str], names: list[str], n_mels: int, frames: int) -> dict[str, list[int]]:
    """The shapes of the float tensors `names` in one onnxruntime run of the graph on a zero [1, n_mels, frames] window."""
    import onnx
    import onnxruntime as ort

    m = onnx.load(str(path))
    m.graph.output.extend([onnx.helper.make_tensor_value_info(x, onnx.TensorProto.FLOAT, None) for x in names])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    got = sess.run(names, {m.graph.input[0].name: np.zeros((1, n_mels, frames), np.float32)})
    return {x: list(v.shape) for x, v in zip(names, got)}


def multiply_adds(path: str | os.PathLike[str], n_mels: int, frames: int, unknown: list[str] | None = None) -> dict[str, int]:
    """Multiply-adds of one window through the graph, per output (Conv, Gemm and MatMul nodes, from the shapes ONNX
    infers for a [1, n_mels, frames] input): a cost figure that, unlike a timing, the machine's load cannot move.
    Each output counts the nodes it depends on; `total` counts every node once. Shapes ONNX cannot infer (e.g. behind
    a Pad whose pads are computed, as in the MagnaTagATune musicnn graph) are read from one onnxruntime run on a
    zero window; a Conv/Gemm/MatMul still without shapes counts 0 and its output's name goes into `unknown`, so a
    caller can say the figure is a lower bound."""
    import onnx

    from training.graft import needed

    m = onnx.load(str(path))
    dims = m.graph.input[0].type.tensor_type.shape.dim
    for d, v in zip(dims, (1, n_mels, frames)):
        d.ClearField("dim_param")
        d.dim_value = v
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    shape = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
             for v in (*m.graph.value_info, *m.graph.output, *m.graph.input)}
    shape.update({t.name: list(t.dims) for t in m.graph.initializer})
    matmuls = [n for n in m.graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
    missing = sorted({x for n in matmuls for x in (n.output[0], *n.input[:2])
                      if not shape.get(x) or min(shape[x]) <= 0})
    if missing:
        shape.update(run_shapes(path, missing, n_mels, frames))

    def cost(node) -> int:
        out = shape.get(node.output[0], [])
        if node.op_type in ("Conv", "Gemm", "MatMul") and (not out or min(out) <= 0):
            if unknown is not None and node.output[0] not in unknown:
                unknown.append(node.output[0])
            return 0
        if node.op_type == "Conv":  # out [N, C_out, H, W] x weight [C_out, C_in / groups, kh, kw] without C_out
            w = shape[node.input[1]]
            return int(np.prod(out) * np.prod(w[1:]))
        if node.op_type in ("Gemm", "MatMul"):  # out [M, N] x the shared dimension K
            a = shape[node.input[0]]
            return int(np.prod(out) * a[-1])
        return 0

    result = {"total": sum(cost(n) for n in m.graph.node)}
    for o in m.graph.output:
        result[o.name] = sum(cost(n) for n in needed(m.graph, (o.name,))[0])
    return result


def compare(path: str | os.PathLike[str] | None, other: str | os.PathLike[str], batch: int, runs: int, threads: int = 1) -> dict:
    """Both models timed alternately on the same input: median ms/window of each and the ratio this / other."""
    from sendreturn_mood.model.contract import MoodModel

    models = [MoodModel(path, threads=threads), MoodModel(other, threads=threads)]
    med, _ = time_calls(models, _window(models[0], batch), runs)
    return {"batch": batch, "runs": runs, "models": [str(m.path) for m in models], "median_ms_per_window": med,
            "ratio": med[0] / med[1]}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="?", default=None, help="ONNX model (default: the shipped exported_models/mood_cnn.onnx)")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16], help="batch sizes (default 1 16)")
    parser.add_argument("--runs", type=int, default=200, help="timed runs per batch size (default 200)")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    parser.add_argument("--compare", default=None, metavar="OTHER",
                        help="also time OTHER.onnx alternately with the model (batch 1) and report the ratio of medians")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    from training.commandline import invocation

    res = bench(args.model, args.batch, args.runs, args.threads)
    res["command"] = invocation("bench")
    for b, r in res["ms_per_window"].items():
        print(f"{res['name']}: batch {b}: {r['median']:.3f} ms/window median, {r['p90']:.3f} p90 "
              f"({res['threads']} thread, {res['n_mels']}x{res['frames']} log-mel)")
    unknown: list[str] = []
    res["multiply_adds"] = macs = multiply_adds(res["model"], res["n_mels"], res["frames"], unknown)
    print(f"{res['name']}: {macs['total'] / 1e6:.1f} M multiply-adds per window ("
          + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in macs.items() if k != "total") + ")")
    if unknown:
        res["multiply_adds_uncounted_nodes"] = len(unknown)
        print(f"{res['name']}: {len(unknown)} Conv/Gemm/MatMul nodes have shapes ONNX cannot infer and count 0: "
              "the multiply-adds are a lower bound")
    if args.compare:
        c = compare(args.model, args.compare, 1, args.runs, args.threads)
        other_unknown: list[str] = []
        c["multiply_adds"] = [macs["total"], multiply_adds(args.compare, res["n_mels"], res["frames"], other_unknown)["total"]]
        c["multiply_adds_uncounted_nodes"] = [len(unknown), len(other_unknown)]
        res["compare"] = c
        print(f"side by side, batch 1: {c['median_ms_per_window'][0]:.3f} ms ({c['models'][0]}) vs "
              f"{c['median_ms_per_window'][1]:.3f} ms ({c['models'][1]}): ratio {c['ratio']:.2f}; multiply-adds "
              f"{c['multiply_adds'][0] / 1e6:.1f} M vs {c['multiply_adds'][1] / 1e6:.1f} M: ratio "
              f"{c['multiply_adds'][0] / c['multiply_adds'][1]:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(p)
    sys.exit(run(p.parse_args()))
