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

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from theory.scan_snap import SequenceClasses, dataset2_classes
from validate._common import checks

DATASETS = ("syn-small", "syn-medium")
MODELS = ("yz", "transformer")
INITS = ("zero", "default")

# The ranges a run can use (TrainConfig checks them before anything is computed):
#: learning rates eta_Z, eta_Y = ratio * eta_Z: below LR_MIN a run of MAX_STEPS steps moves an O(1) weight by
#: < 1e-5 (nothing to measure); above LR_MAX, eta x steps and eta / (1 - momentum) overflow float64. Rates between
#: that blow a run up are allowed: the run is recorded as diverged (`train`).
LR_MIN, LR_MAX = 1e-12, 1e200
#: the loss of every step is kept (a Python float each)
MAX_STEPS = 10 ** 7
#: K: the vocabulary is M = 10 + 12 K tokens (Syn-Small; 10 + 11.5 K for Syn-Medium), the Y/Z model two M x M
#: matrices (K = 200: M = 2410, 46 MB each) and the exact class table K x M SymPy rationals (3 s to build at 200)
MAX_NEXT_TOKENS = 200
NEXT_TOKENS_WHY = " (the vocabulary grows as 12 K and the model as its square)"
MAX_D_MODEL = 4096  # W_Q, W_K, W_V are d x d: at 4096, 1.2 GB of float64 weights, gradients and momenta
#: batch x seq_len (x d_model for the transformer) values per SGD step: about 6 float64 copies of each are alive
#: in the forward and backward pass, so 2^26 is ~3 GiB
MAX_STEP_ELEMENTS = 2 ** 26


def learning_rate(name: str, value) -> float:
    """A learning rate (or a product of them) in [LR_MIN, LR_MAX]."""
    return checks.real(name, value, LR_MIN, LR_MAX, why=" (smaller ones move nothing, larger ones overflow "
                                                        "float64; a run that blows up is recorded as diverged)")


def make_classes(dataset: str, next_tokens: int) -> SequenceClasses:
    """Syn-Small: one next token per query (the paper's K = 2 is next_tokens = 2); Syn-Medium: two per query."""
    if dataset == "syn-small":
        return dataset2_classes(num_last=next_tokens, num_next_per_last=1)
    if dataset == "syn-medium":
        if next_tokens % 2:
            raise ValueError(f"next_tokens={next_tokens}: Syn-Medium has 2 next tokens per query, so K must be even")
        return dataset2_classes(num_last=next_tokens // 2, num_next_per_last=2)
    raise ValueError(f"dataset={dataset!r}: allowed {DATASETS}")


def vocabulary(dataset: str, next_tokens: int) -> tuple[int, int]:
    """(M, number of queries) of make_classes(dataset, next_tokens), without building its exact table:
    10 common tokens, 10 distinct tokens per next token, the queries and the next tokens."""
    queries = next_tokens if dataset == "syn-small" else next_tokens // 2
    return 10 + 10 * next_tokens + queries + next_tokens, queries


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
        check = functools.partial(checks.field, self)  # check(name, rule, ...): self.name checked and stored
        check("dataset", checks.choice, DATASETS)
        check("model", checks.choice, MODELS)
        check("init", checks.choice, INITS)
        if self.model == "transformer" and self.init == "zero":
            raise ValueError("init='zero' with model='transformer': W_Q = W_K = 0 has no attention gradient; "
                             "use init='default'")
        check("next_tokens", checks.integer, 2 if self.dataset == "syn-medium" else 1, MAX_NEXT_TOKENS,
              why=NEXT_TOKENS_WHY)
        if self.dataset == "syn-medium" and self.next_tokens % 2:
            raise ValueError(f"next_tokens={self.next_tokens}: Syn-Medium has 2 next tokens per query, so K must "
                             "be even")
        check("steps", checks.integer, 1, MAX_STEPS)
        check("batch", checks.integer, 1)
        check("seq_len", checks.integer, 2, why=" (L-1 >= 1 contextual tokens plus the query)")
        check("d_model", checks.integer, 1, MAX_D_MODEL)
        check("seed", checks.integer, 0, checks.SEED_LIMIT - 1)
        check("lr_z", learning_rate)
        check("lr_ratio", checks.real, 0.0, above=True)
        learning_rate("lr_y = lr_z x lr_ratio", self.lr_y)
        check("momentum", checks.real, 0.0, 1.0, below=True, why=" (heavy-ball SGD diverges for momentum >= 1)")
        elements = self.batch * self.seq_len * (self.d_model if self.model == "transformer" else 1)
        if elements > MAX_STEP_ELEMENTS:
            width = " x d_model" if self.model == "transformer" else ""
            raise ValueError(f"batch={self.batch}, seq_len={self.seq_len}: batch x seq_len{width} = {elements:.3g} "
                             f"values per SGD step, more than {MAX_STEP_ELEMENTS:.3g} (several GiB of float64 "
                             "activations and gradients); lower batch or seq_len")

    @property
    def lr_y(self) -> float:
        return self.lr_z * self.lr_ratio


@dataclass
class TrainRecord:
    """Y (n_log, M, M) and Z query rows (n_log, n_q, M) at steps `steps`; loss (n_steps,) of every batch.

    diverged_step: None when every loss and weight stayed finite; otherwise the first step t whose weights
    (after t updates) or whose loss (on those weights) is NaN or inf. Training stops there, so the logs and
    losses hold the steps before it only."""

    steps: np.ndarray
    Y: np.ndarray
    Z: np.ndarray
    loss: np.ndarray
    diverged_step: int | None = None


def build_model(cfg: TrainConfig, n_vocab: int) -> nn.Module:
    torch.manual_seed(cfg.seed)  # the default init draws from torch's global generator
    if cfg.model == "yz":
        return YZModel(n_vocab, cfg.init)
    return OneLayerTransformer(n_vocab, cfg.d_model)


def _finite(parameters) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in parameters)


def train(cfg: TrainConfig, log_steps, device="cpu") -> TrainRecord:
    """SGD with two optimisers (decoder at eta_Y, attention at eta_Z), cross-entropy averaged over the batch.
    Y and Z are recorded before the update of every step in log_steps (step `steps` = after the last one).
    A run whose loss or weights become NaN or inf stops there and says at which step (TrainRecord.diverged_step)."""
    classes = make_classes(cfg.dataset, cfg.next_tokens)
    data = SyntheticSequences(classes, cfg.seq_len, seed=cfg.seed, device=device)
    model = build_model(cfg, classes.n_vocab).to(device=device, dtype=torch.float64)
    opt_y = torch.optim.SGD(model.decoder_parameters(), lr=cfg.lr_y, momentum=cfg.momentum)
    opt_z = torch.optim.SGD(model.attention_parameters(), lr=cfg.lr_z, momentum=cfg.momentum)
    queries = list(classes.query_tokens())
    log_set = sorted(set(int(s) for s in log_steps if 0 <= s <= cfg.steps))
    logged, Ys, Zs, losses = [], [], [], []
    diverged = None
    for step in range(cfg.steps + 1):
        if step > 0 and not _finite(model.parameters()):
            diverged = step
            break
        if step in log_set:
            logged.append(step)
            Ys.append(model.decoder_matrix().cpu().numpy().copy())
            Zs.append(model.attention_logits()[queries].cpu().numpy().copy())
        if step == cfg.steps:
            break
        x, y = data.sample(cfg.batch)
        loss_t = F.cross_entropy(model(x), y)
        loss = float(loss_t.detach())
        if not math.isfinite(loss):
            diverged = step
            break
        opt_y.zero_grad(set_to_none=True)
        opt_z.zero_grad(set_to_none=True)
        loss_t.backward()
        opt_y.step()
        opt_z.step()
        losses.append(loss)
    M = classes.n_vocab
    return TrainRecord(np.array(logged, dtype=int), np.array(Ys).reshape(len(logged), M, M),
                       np.array(Zs).reshape(len(logged), len(queries), M), np.array(losses), diverged)
