"""One ONNX graph from two: the mood side of an exported model, node for node and weight for weight, and the genre
side of another.

Why: a shipped model's mood student may have no training checkpoint any more (`runs/` is not kept), yet its graph
is in `exported_models/`. Replacing only its genre student (`export --mood-from`) must neither retrain nor refit the
mood side: the new graph keeps every node and initializer that `mood_logits` and `embedding` depend on from the old
graph, and every node and initializer that `genre_logits` depends on from a graph exported from the new genre
student. Export then checks that the mood outputs equal the old model's on the same inputs.
"""

from __future__ import annotations

import onnx

from sendreturn_mood.model.contract import EMBEDDING_OUTPUT, GENRE_OUTPUT, MOOD_OUTPUT
from onnx import helper

INPUT = "logmel"
MOOD_OUTPUTS = (MOOD_OUTPUT, EMBEDDING_OUTPUT)
GENRE_PREFIX = "genre_side/"  # the genre side's value and node names, so they cannot collide with the mood side's


def needed(graph: onnx.GraphProto, outputs: tuple[str, ...]) -> tuple[list[onnx.NodeProto], set[str]]:
    """The nodes (in graph order) and the value names that `outputs` depend on."""
    producer = {o: n for n in graph.node for o in n.output}
    todo, seen, keep = list(outputs), set(), set()
    while todo:
        v = todo.pop()
        if v in seen:
            continue
        seen.add(v)
        node = producer.get(v)
        if node is not None:
            keep.add(id(node))
            todo.extend(i for i in node.input if i)
    return [n for n in graph.node if id(n) in keep], seen


def _renamed(name: str) -> str:
    return name if name in ("", INPUT, GENRE_OUTPUT) else GENRE_PREFIX + name


def graft(mood_model: onnx.ModelProto, genre_model: onnx.ModelProto) -> onnx.ModelProto:
    """`mood_model`'s mood side + `genre_model`'s genre side, one input, outputs in `mood_model`'s order. Metadata is
    not copied (export writes it)."""
    if list(mood_model.opset_import) != list(genre_model.opset_import) or mood_model.functions or genre_model.functions:
        raise ValueError("graft: both graphs must use the same opsets and no local functions (export both with one exporter)")
    g_mood, g_genre = mood_model.graph, genre_model.graph
    if [i.name for i in g_mood.input] != [INPUT] or [i.name for i in g_genre.input] != [INPUT]:
        raise ValueError(f"graft: both graphs must have the one input {INPUT!r}")
    if g_mood.input[0].type != g_genre.input[0].type:
        raise ValueError("graft: the two graphs' inputs differ in type or shape")
    outputs = [o.name for o in g_mood.output]
    if set(outputs) != {*MOOD_OUTPUTS, GENRE_OUTPUT} or GENRE_OUTPUT not in {o.name for o in g_genre.output}:
        raise ValueError(f"graft: expected outputs {MOOD_OUTPUTS + (GENRE_OUTPUT,)}, got {outputs}")
    mood_nodes, mood_values = needed(g_mood, MOOD_OUTPUTS)
    genre_nodes, genre_values = needed(g_genre, (GENRE_OUTPUT,))
    renamed_nodes = []
    for n in genre_nodes:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.name = GENRE_PREFIX + n.name
        m.input[:] = [_renamed(i) for i in n.input]
        m.output[:] = [_renamed(o) for o in n.output]
        renamed_nodes.append(m)
    inits = [t for t in g_mood.initializer if t.name in mood_values] + _renamed_copies(g_genre.initializer, genre_values)
    value_info = [v for v in g_mood.value_info if v.name in mood_values] + _renamed_copies(g_genre.value_info, genre_values)
    out_info = {o.name: o for o in g_mood.output if o.name != GENRE_OUTPUT}
    out_info[GENRE_OUTPUT] = next(o for o in g_genre.output if o.name == GENRE_OUTPUT)
    graph = helper.make_graph(mood_nodes + renamed_nodes, g_mood.name, list(g_mood.input),
                              [out_info[name] for name in outputs], initializer=inits, value_info=value_info)
    model = helper.make_model(graph, opset_imports=list(mood_model.opset_import), ir_version=mood_model.ir_version,
                              producer_name=mood_model.producer_name, producer_version=mood_model.producer_version)
    onnx.checker.check_model(model)
    return model


def _renamed_copies(protos, keep: set[str]) -> list:  # type: ignore[no-untyped-def]
    """Copies of the named protos (initializers, value infos) in `keep`, renamed into the genre student's namespace."""
    out = []
    for p in protos:
        if p.name in keep:
            q = type(p)()
            q.CopyFrom(p)
            q.name = _renamed(p.name)
            out.append(q)
    return out


MASKED_INPUT = "logmel_band_masked"


def band_masked(model: onnx.ModelProto, keep) -> onnx.ModelProto:
    """The same graph behind one `Mul` of its input by `keep` ([n_mels] of 1/0): the bands set to 0 read as silence
    whatever the audio has there. Every node that read the input reads the product instead; weights are untouched."""
    import copy

    import numpy as np
    from onnx import numpy_helper

    m = copy.deepcopy(model)
    g = m.graph
    for node in g.node:
        node.input[:] = [MASKED_INPUT if v == INPUT else v for v in node.input]
    mask = numpy_helper.from_array(np.asarray(keep, dtype=np.float32).reshape(1, -1, 1), "band_mask")
    g.initializer.append(mask)
    g.node.insert(0, helper.make_node("Mul", [INPUT, "band_mask"], [MASKED_INPUT], name="band_mask"))
    onnx.checker.check_model(m)
    return m
