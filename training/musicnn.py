"""musicnn (MSD) rebuilt in torch with the weights of the shared ONNX file, so its layers can be fine-tuned.

Why: the frozen teacher's features are the strongest genre features we have; fine-tuning its mid/back end on the
labels is the obvious next lever, and onnx2torch cannot convert this graph (TensorFlow's SAME_UPPER padding). The
layout follows the ONNX graph node by node: batch norm on the input, a timbral front end (7 x 38 and 7 x 67
filters over [time, mel], max over frequency) and a temporal one (32/64/128-frame filters, max over frequency),
three 1-D convolutions with residual connections over their 561 concatenated channels, then max and mean over time
(TensorFlow's flatten interleaves them), a dense layer with batch norm (the 200-d `embedding`) and the 50 tag logits.
`tests/test_training_pipeline.py` checks it against onnxruntime.
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-3  # TensorFlow's batch-norm epsilon in this graph
TIMBRAL = (("conv2d", "batch_normalization_1", 59), ("conv2d_1", "batch_normalization_2", 30))  # (conv, bn, freq pool)
TEMPORAL = (("conv2d_4", "batch_normalization_5"), ("conv2d_3", "batch_normalization_4"), ("conv2d_2", "batch_normalization_3"))
MID = (("conv2d_5", "batch_normalization_6"), ("conv2d_6", "batch_normalization_7"), ("conv2d_7", "batch_normalization_8"))
MID_PAD = 3  # the 7-frame mid-end filters pad 3 frames each side


def _read(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    import onnx
    from onnx import numpy_helper

    return {i.name: torch.from_numpy(np.array(numpy_helper.to_array(i), dtype=np.float32))
            for i in onnx.load(str(path)).graph.initializer}


def _bn(W: dict[str, torch.Tensor], name: str) -> nn.BatchNorm2d:
    g = W[f"{name}/ReadVariableOp:0"]
    bn = nn.BatchNorm2d(len(g), eps=EPS)
    bn.weight.data, bn.bias.data = g.clone(), W[f"{name}/ReadVariableOp_1:0"].clone()
    bn.running_mean.data = W[f"{name}/FusedBatchNormV3/ReadVariableOp:0"].clone()
    bn.running_var.data = W[f"{name}/FusedBatchNormV3/ReadVariableOp_1:0"].clone()
    return bn


def _conv(W: dict[str, torch.Tensor], name: str) -> nn.Conv2d:
    w = W[f"{name}/Conv2D/ReadVariableOp:0"]
    conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]))
    conv.weight.data, conv.bias.data = w.clone(), W[f"{name}/BiasAdd/ReadVariableOp:0"].clone()
    return conv


def _dense(W: dict[str, torch.Tensor], name: str) -> nn.Linear:
    w = W[f"{name}/MatMul/ReadVariableOp:0"]
    lin = nn.Linear(*w.shape)
    lin.weight.data, lin.bias.data = w.T.contiguous(), W[f"{name}/BiasAdd/ReadVariableOp:0"].clone()
    return lin


class MusiCNN(nn.Module):
    """[b, frames, 96] log-mel (musicnn's layout) -> (embedding [b, 200], tag logits [b, 50], max_pool [b, 753])."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        W = _read(path)
        self.input_bn = _bn(W, "batch_normalization")
        self.timbral = nn.ModuleList(_conv(W, c) for c, _, _ in TIMBRAL)
        self.timbral_bn = nn.ModuleList(_bn(W, b) for _, b, _ in TIMBRAL)
        self.temporal = nn.ModuleList(_conv(W, c) for c, _ in TEMPORAL)
        self.temporal_bn = nn.ModuleList(_bn(W, b) for _, b in TEMPORAL)
        self.mid = nn.ModuleList(_conv(W, c) for c, _ in MID)
        self.mid_bn = nn.ModuleList(_bn(W, b) for _, b in MID)
        # the two dense-layer batch norms were folded into a scale and a shift by the converter
        self.pool_scale = nn.Parameter(W["batch_normalization_9/batchnorm/mul:0"])
        self.pool_shift = nn.Parameter(W["batch_normalization_9/batchnorm/sub:0"])
        self.dense = _dense(W, "dense")
        self.embed_scale = nn.Parameter(W["batch_normalization_10/batchnorm/mul:0"])
        self.embed_shift = nn.Parameter(W["batch_normalization_10/batchnorm/sub:0"])
        self.tags = _dense(W, "dense_1")

    def front(self, x: torch.Tensor) -> torch.Tensor:
        """[b, frames, 96] -> front-end features [b, 561, frames] (timbral 2 x 204, then temporal 51 each for 32, 64, 128)."""
        h = self.input_bn(x.unsqueeze(1))
        out = []
        for conv, bn, (_, _, pool) in zip(self.timbral, self.timbral_bn, TIMBRAL):
            y = bn(F.relu(conv(F.pad(h, (0, 0, 3, 3)))))
            out.append(F.max_pool2d(y, (1, pool)).squeeze(3))
        temporal = []
        for conv, bn in zip(self.temporal, self.temporal_bn):
            k = conv.kernel_size[0]
            y = bn(F.relu(conv(F.pad(h, (0, 0, (k - 1) // 2, k - 1 - (k - 1) // 2)))))  # SAME_UPPER
            temporal.append(y.amax(dim=3))
        return torch.cat(out + temporal[::-1], dim=1)  # graph order: timbral, then the 128-, 64- and 32-frame filters

    def _mid(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """[b, frames, c] -> [b, frames, 64]: one mid-end layer (a 7 x c filter over [time, channels])."""
        y = self.mid_bn[i](F.relu(self.mid[i](F.pad(h.unsqueeze(1), (0, 0, MID_PAD, MID_PAD)))))
        return y.squeeze(3).transpose(1, 2)

    def back(self, front: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        f = front.transpose(1, 2)  # [b, frames, 561]
        m1 = self._mid(0, f)
        m2 = self._mid(1, m1) + m1
        m3 = self._mid(2, m2) + m2
        cat = torch.cat([f, m1, m2, m3], dim=2)  # [b, frames, 753]
        mx, mean = cat.amax(dim=1), cat.mean(dim=1)
        z = torch.stack([mx, mean], dim=2).flatten(1) * self.pool_scale + self.pool_shift  # TF flatten: max/mean interleaved
        emb = F.relu(self.dense(z)) * self.embed_scale + self.embed_shift
        return emb, self.tags(emb), mx

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.back(self.front(x))
