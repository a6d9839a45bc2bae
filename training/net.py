"""The small real-time CNN: log-mel window -> embedding -> mood, genre and distillation heads.

Sized for <= 2 ms per 3 s window on one onnxruntime thread: a strided first convolution and max-pooling after every
block shrink the time-frequency map early, so most of the compute runs on a small map. Global mean + max pooling
over time makes it accept any number of frames (the runtime's last window of a short track is shorter than a patch);
`ceil_mode` pooling keeps even a one-frame input valid. A per-mel-band batch norm on the input replaces any fixed
normalisation, so the front end stays exactly the teacher's recipe.

The `distill` head regresses the musicnn teacher's (standardised) embedding and tag logits; it is training-only and
is not exported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from sendreturn_mood.model.contract import EMBEDDING_OUTPUT, GENRE_OUTPUT, MOOD_OUTPUT


@dataclass(frozen=True)
class NetConfig:
    n_mels: int = 96
    channels: tuple[int, ...] = (24, 48, 96, 128)
    embedding: int = 128
    n_moods: int = 4
    n_genres: int = 4
    distill_dim: int = 250  # musicnn embedding (200) + tag logits (50); 0 = no distillation head
    dropout: float = 0.3

    def to_dict(self) -> dict:
        d = asdict(self)
        d["channels"] = list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NetConfig":
        d = dict(d)
        d["channels"] = tuple(d["channels"])
        return cls(**d)


def block(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class MoodNet(nn.Module):
    """[b, n_mels, frames] -> dict(embedding, mood_logits, genre_logits, distill)."""

    def __init__(self, cfg: NetConfig = NetConfig()) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_norm = nn.BatchNorm1d(cfg.n_mels)
        c = cfg.channels
        layers: list[nn.Module] = [block(1, c[0], 5, 2), nn.MaxPool2d(2, ceil_mode=True)]
        for i in range(1, len(c)):
            layers.append(block(c[i - 1], c[i], 3, 1))
            if i < len(c) - 1:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
        self.trunk = nn.Sequential(*layers)
        self.project = nn.Sequential(nn.Linear(2 * c[-1], cfg.embedding), nn.BatchNorm1d(cfg.embedding), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(cfg.dropout)
        self.mood = nn.Linear(cfg.embedding, cfg.n_moods)
        self.genre = nn.Linear(cfg.embedding, cfg.n_genres) if cfg.n_genres else None
        self.distill = nn.Linear(cfg.embedding, cfg.distill_dim) if cfg.distill_dim else None

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        h = self.trunk(self.input_norm(x).unsqueeze(1))  # [b, c, f, t]
        h = h.mean(dim=2)  # over frequency -> [b, c, t]
        pooled = torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)  # over time: any number of frames
        return self.project(pooled)

    def mood_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embedding, mood logits) only: what a branched graph takes from its mood side."""
        e = self.embed(x)
        return e, self.mood(self.dropout(e))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e = self.embed(x)
        d = self.dropout(e)
        out = {EMBEDDING_OUTPUT: e, MOOD_OUTPUT: self.mood(d)}
        if self.genre is not None:
            out[GENRE_OUTPUT] = self.genre(d)
        if self.distill is not None:
            out["distill"] = self.distill(e)
        return out


class RandomFeatureReadout(nn.Module):
    """`training.cv.RandomFeatureHead` as layers: logits = W (sqrt(2/D) cos(A e + c)) + b, where A and c fold in the
    head's standardisation and its random projection. Why: an RBF-kernel-like head (an SVM was clearly better than
    a linear head on the teachers' genre features) that is still two matrix products and a cosine in the graph."""

    def __init__(self, A, c, W, b) -> None:
        super().__init__()
        self.project = nn.Linear(A.shape[1], A.shape[0])
        self.out = nn.Linear(W.shape[1], W.shape[0])
        with torch.no_grad():
            self.project.weight.copy_(torch.as_tensor(A, dtype=torch.float32))
            self.project.bias.copy_(torch.as_tensor(c, dtype=torch.float32))
            self.out.weight.copy_(torch.as_tensor(W, dtype=torch.float32))
            self.out.bias.copy_(torch.as_tensor(b, dtype=torch.float32))

    @classmethod
    def from_head(cls, head) -> "RandomFeatureReadout":
        """From a fitted `RandomFeatureHead` (numpy), folding sqrt(2/D) into the output layer."""
        import numpy as np

        A = (head.omega / head.scale[:, None]).T
        c = head.phase - (head.mean / head.scale) @ head.omega
        W, b = head.linear.weights[0]
        return cls(A, c, W * np.sqrt(2.0 / head.n_features), b)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cos(self.project(e)))


class MoodEnsemble(nn.Module):
    """Several mood students (e.g. the same recipe from different seeds) read as one: the embedding is theirs
    concatenated, the mood logits the mean of their own heads' logits (each head fitted on its member's embedding).

    Why: independently distilled students make partly independent errors, and averaging them needs no more labels;
    each member costs one student's compute per window. Averaging logits (not probabilities) keeps the whole read-out
    one affine map of the concatenated embedding. Measured (experiment `ensemble_2seeds`, two seeds of the 1.3.0
    recipe): better single windows (0.670 vs 0.667), not better clips (macro-F1 0.712 vs 0.719), so no ensemble ships.
    """

    genre = None
    distill = None

    def __init__(self, members: list[MoodNet]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two mood students")
        self.members = nn.ModuleList(members)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.embed(x) for m in self.members], dim=1)

    def mood_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [m.mood_forward(x) for m in self.members]
        return torch.cat([e for e, _ in outs], dim=1), torch.stack([z for _, z in outs]).mean(dim=0)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e, z = self.mood_forward(x)
        return {EMBEDDING_OUTPUT: e, MOOD_OUTPUT: z}


class BranchedNet(nn.Module):
    """Mood students and a genre student in one graph: mood (and the embedding) from the mood side, genre from a
    genre student.

    Why: the genre labels (Emotify) and the mood labels (4Q) pull one small trunk in different directions; a joint
    fine-tune gained genre accuracy only by losing mood accuracy. A second trunk trained for genre costs about one
    more student's compute per window (still far inside the 2 ms budget) and leaves the mood model untouched.
    """

    def __init__(self, mood_net: MoodNet | MoodEnsemble, genre_net: MoodNet) -> None:
        super().__init__()
        if genre_net.genre is None:
            raise ValueError("the genre branch has no genre head")
        self.mood_net = mood_net
        self.genre_net = genre_net
        self.genre = genre_net.genre  # the head export and fit_heads address

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.mood_net.embed(x)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        e, mood_logits = self.mood_net.mood_forward(x)
        g = self.genre_net.embed(x)
        return {EMBEDDING_OUTPUT: e, MOOD_OUTPUT: mood_logits, GENRE_OUTPUT: self.genre(self.genre_net.dropout(g))}


class ExportWrapper(nn.Module):
    """The runtime's graph contract: logmel -> (mood_logits, genre_logits?, embedding)."""

    def __init__(self, net: MoodNet | MoodEnsemble | BranchedNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, logmel: torch.Tensor):
        out = self.net(logmel)
        if GENRE_OUTPUT in out:
            return out[MOOD_OUTPUT], out[GENRE_OUTPUT], out[EMBEDDING_OUTPUT]
        return out[MOOD_OUTPUT], out[EMBEDDING_OUTPUT]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())
