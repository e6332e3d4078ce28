"""Scan and snap in PyTorch: the authors' synthetic data, the Y/Z model, a 1-layer transformer, and training.

Read top to bottom: `SyntheticSequences` samples sequences as the authors' `Dataset2.generate` does
(a class drawn uniformly, L-1 contextual tokens i.i.d. from P(l|n) with replacement, the query last, the next
token as label); `YZModel` is their `Model2` (Y and Z free M x M matrices, l2-normalised attention output,
no residual); `OneLayerTransformer` is the standard parameterisation with embeddings, W_Q, W_K, W_V and no
positional encoding, whose Y = U W_V^T U^T and Z = U W_Q W_K^T U^T / sqrt(d) (paper Sec. 3.1);
`train` runs SGD with separate optimisers for the decoder (eta_Y) and the attention (eta_Z), as the authors'
code does, and records Y and Z at the requested steps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from theory.scan_snap import SequenceClasses, dataset2_classes

DATASETS = ("syn-small", "syn-medium")
MODELS = ("yz", "transformer")
INITS = ("zero", "default")


def make_classes(dataset: str, next_tokens: int) -> SequenceClasses:
    """Syn-Small: one next token per query (the paper's K = 2 is next_tokens = 2); Syn-Medium: two per query."""
    if dataset == "syn-small":
        return dataset2_classes(num_last=next_tokens, num_next_per_last=1)
    if dataset == "syn-medium":
        if next_tokens % 2:
            raise ValueError(f"next_tokens={next_tokens}: Syn-Medium has 2 next tokens per query, so K must be even")
        return dataset2_classes(num_last=next_tokens // 2, num_next_per_last=2)
    raise ValueError(f"dataset={dataset!r}: allowed {DATASETS}")


class SyntheticSequences:
    """Sampler for a SequenceClasses table, with its own seeded torch.Generator."""

    def __init__(self, classes: SequenceClasses, seq_len: int, seed: int, device="cpu"):
        if seq_len < 2:
            raise ValueError(f"seq_len={seq_len}: need >= 2 (contextual tokens plus the query)")
        self.classes = classes
        self.seq_len = seq_len
        self.device = torch.device(device)
        self.probabilities = torch.tensor([[float(p) for p in row] for row in classes.probabilities],
                                          dtype=torch.float64, device=self.device)
        self.queries = torch.tensor(classes.queries, device=self.device)
        self.next_tokens = torch.tensor(classes.next_tokens, device=self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def sample(self, batch: int):
        """x (batch, seq_len) with the query last, labels (batch,)."""
        k = torch.randint(self.classes.n_classes, (batch,), generator=self.generator, device=self.device)
        context = torch.multinomial(self.probabilities[k], self.seq_len - 1, replacement=True,
                                    generator=self.generator)
        x = torch.cat([context, self.queries[k].unsqueeze(1)], dim=1)
        return x, self.next_tokens[k]


class YZModel(nn.Module):
    """The authors' Model2: logits = Y^T LN(X^T b), b = softmax_t(z[x_T, x_t]) over the L-1 contextual tokens.

    decoder.weight is Y^T (M x M) and attention.weight[m, l] = z_ml; no 1/sqrt(d) (Z absorbs it).
    """

    def __init__(self, n_vocab: int, init: str = "zero"):
        super().__init__()
        if init not in INITS:
            raise ValueError(f"init={init!r}: allowed {INITS}")
        self.n_vocab = n_vocab
        self.decoder = nn.Linear(n_vocab, n_vocab, bias=False)
        self.attention = nn.Linear(n_vocab, n_vocab, bias=False)
        if init == "zero":  # Y(0) = Z(0) = 0 (paper Sec. 3.1; model2.zero_init=true)
            nn.init.zeros_(self.decoder.weight)
            nn.init.zeros_(self.attention.weight)

    def decoder_parameters(self):
        return [self.decoder.weight]

    def attention_parameters(self):
        return [self.attention.weight]

    def forward(self, x):
        query, context = x[:, -1], x[:, :-1]
        scores = self.attention.weight[query.unsqueeze(1), context]  # z[x_T, x_t], (batch, L-1)
        b = F.softmax(scores, dim=1)
        combined = torch.zeros(x.shape[0], self.n_vocab, dtype=b.dtype, device=x.device)
        combined = combined.scatter_add(1, context, b)  # X^T b
        combined = combined / combined.norm(dim=1, keepdim=True)  # LN(x) = x / ||x||_2
        return self.decoder(combined)

    def decoder_matrix(self) -> torch.Tensor:
        """Y (M x M): logits = Y^T f."""
        return self.decoder.weight.detach().T

    def attention_logits(self) -> torch.Tensor:
        """Z (M x M): z[m, l]."""
        return self.attention.weight.detach()


class OneLayerTransformer(nn.Module):
    """Embedding U (M x d), single-head attention of the last token on the L-1 contextual tokens,
    softmax(u_{x_T}^T W_Q^T W_K u_{x_t} / sqrt(d)), l2-normalised output, value W_V, logits tied to U.
    No positional encoding, residual or FFN (Assumption 1a; Sec. 3)."""

    def __init__(self, n_vocab: int, d_model: int = 128):
        super().__init__()
        self.n_vocab, self.d_model = n_vocab, d_model
        self.embed = nn.Embedding(n_vocab, d_model)
        self.W_Q = nn.Linear(d_model, d_model, bias=False)
        self.W_K = nn.Linear(d_model, d_model, bias=False)
        self.W_V = nn.Linear(d_model, d_model, bias=False)

    # The embedding enters both Y and Z; like the authors' decoder_wiki.py (only the layer playing the decoder
    # gets lr_y, everything else lr_z) it trains at eta_Z, so eta_Y = ratio * eta_Z moves only W_V
    def decoder_parameters(self):
        return [self.W_V.weight]

    def attention_parameters(self):
        return [self.embed.weight, self.W_Q.weight, self.W_K.weight]

    def forward(self, x):
        u = self.embed(x)
        q = self.W_Q(u[:, -1])  # (batch, d)
        k = self.W_K(u[:, :-1])  # (batch, L-1, d)
        b = F.softmax(torch.einsum("bd,btd->bt", q, k) / math.sqrt(self.d_model), dim=1)
        mixed = torch.einsum("bt,btd->bd", b, u[:, :-1])
        mixed = mixed / mixed.norm(dim=1, keepdim=True)
        return self.W_V(mixed) @ self.embed.weight.T

    def decoder_matrix(self) -> torch.Tensor:
        """Y = U W_V^T U^T (so that logits = Y^T f when u~ = U^T f)."""
        U = self.embed.weight.detach()
        return U @ self.W_V.weight.detach().T @ U.T

    def attention_logits(self) -> torch.Tensor:
        """Z = U W_Q W_K^T U^T / sqrt(d) in the paper's row-vector convention: z_ml = q(u_m) . k(u_l) / sqrt(d)."""
        U = self.embed.weight.detach()
        return (self.W_Q(U) @ self.W_K(U).T).detach() / math.sqrt(self.d_model)


@dataclass(frozen=True)
class TrainConfig:
    """One training run. eta_Y = lr_ratio * lr_z, as the authors' opt.lr_y_multi_on_z."""

    dataset: str = "syn-small"
    next_tokens: int = 2
    model: str = "yz"
    init: str = "zero"
    lr_z: float = 1.0
    lr_ratio: float = 10.0
    momentum: float = 0.9
    steps: int = 100
    batch: int = 128
    seq_len: int = 128
    d_model: int = 128
    seed: int = 1

    def __post_init__(self):
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset={self.dataset!r}: allowed {DATASETS}")
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r}: allowed {MODELS}")
        if self.init not in INITS:
            raise ValueError(f"init={self.init!r}: allowed {INITS}")
        if self.model == "transformer" and self.init == "zero":
            raise ValueError("init='zero' with model='transformer': W_Q = W_K = 0 has no attention gradient; "
                             "use init='default'")
        for name in ("next_tokens", "steps", "batch", "d_model"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be an integer >= 1")
        if self.dataset == "syn-medium" and self.next_tokens % 2:
            raise ValueError(f"next_tokens={self.next_tokens}: Syn-Medium needs an even K")
        if not isinstance(self.seq_len, int) or self.seq_len < 2:
            raise ValueError(f"seq_len={self.seq_len!r}: must be an integer >= 2")
        if not (self.lr_z > 0 and self.lr_ratio > 0):
            raise ValueError(f"lr_z={self.lr_z}, lr_ratio={self.lr_ratio}: both must be > 0")
        if not (0 <= self.momentum < 1):
            raise ValueError(f"momentum={self.momentum}: must lie in [0, 1)")

    @property
    def lr_y(self) -> float:
        return self.lr_z * self.lr_ratio


@dataclass
class TrainRecord:
    """Y (n_log, M, M) and Z query rows (n_log, n_q, M) at steps `steps`; loss (n_steps,) of every batch."""

    steps: np.ndarray
    Y: np.ndarray
    Z: np.ndarray
    loss: np.ndarray


def build_model(cfg: TrainConfig, n_vocab: int) -> nn.Module:
    torch.manual_seed(cfg.seed)  # the default init draws from torch's global generator
    if cfg.model == "yz":
        return YZModel(n_vocab, cfg.init)
    return OneLayerTransformer(n_vocab, cfg.d_model)


def train(cfg: TrainConfig, log_steps, device="cpu") -> TrainRecord:
    """SGD with two optimisers (decoder at eta_Y, attention at eta_Z), cross-entropy averaged over the batch.
    Y and Z are recorded before the update of every step in log_steps (step `steps` = after the last one)."""
    classes = make_classes(cfg.dataset, cfg.next_tokens)
    data = SyntheticSequences(classes, cfg.seq_len, seed=cfg.seed, device=device)
    model = build_model(cfg, classes.n_vocab).to(device=device, dtype=torch.float64)
    opt_y = torch.optim.SGD(model.decoder_parameters(), lr=cfg.lr_y, momentum=cfg.momentum)
    opt_z = torch.optim.SGD(model.attention_parameters(), lr=cfg.lr_z, momentum=cfg.momentum)
    queries = list(classes.query_tokens())
    log_set = sorted(set(int(s) for s in log_steps if 0 <= s <= cfg.steps))
    Ys, Zs, losses = [], [], []
    for step in range(cfg.steps + 1):
        if step in log_set:
            Ys.append(model.decoder_matrix().cpu().numpy().copy())
            Zs.append(model.attention_logits()[queries].cpu().numpy().copy())
        if step == cfg.steps:
            break
        x, y = data.sample(cfg.batch)
        loss_t = F.cross_entropy(model(x), y)
        opt_y.zero_grad(set_to_none=True)
        opt_z.zero_grad(set_to_none=True)
        loss_t.backward()
        opt_y.step()
        opt_z.step()
        losses.append(float(loss_t.detach()))
    return TrainRecord(np.array(log_set), np.array(Ys), np.array(Zs), np.array(losses))
