"""Marker-based modular addition and the attention-only transformer of Xu (2026), read top to bottom.

Task (Xu 2026, section 3.1; the released code `helpers.sample_m_bubble_batch`): a sequence of T tokens holds m
marker tokens, marker i being token `marker_offset + i`, each immediately followed by a value token in
{0..C-1}; every other position is a distractor drawn uniformly from the rest of the vocabulary. The label is
the sum of the m values mod C, read from the logits at the last position. Batches are fresh at every step
(there is no finite training set). Defaults follow the released code (T = 16, C = 8, m in {1, 2, 3, 4} drawn
per batch, vocabulary 256, marker_offset 100), not the paper text (T = 32).

Model (code `helpers.BubbleTransformer`): token + learned positional embeddings; n_layers pre-LN blocks
x <- x + W_O Attn(LN(x)) with a fused qkv projection (biases on), causal mask; a final LayerNorm and a linear
head on the last position. The released code builds an MLP in every block but never calls it; here `mlp`
chooses "none" (the default: attention-only, without the dead parameters), "on" (standard blocks, the paper's
contrast) or "unused" (built and skipped, to match the code's parameter count P).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from validate._common import checks

MLP_MODES = ("none", "on", "unused")


# ----------------------------------------------------------------------------------------------------------
# The task
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TaskConfig:
    """Marker-based modular addition. markers: the marker counts m that training mixes (one m per batch,
    drawn uniformly, as the code's `m_schedule`); schedule "curriculum" trains them in increasing order,
    `steps_per_stage` steps each."""
    seq_len: int = 16
    markers: tuple = (1, 2, 3, 4)
    modulus: int = 8
    vocab_size: int = 256
    marker_offset: int = 100
    batch_size: int = 128
    schedule: str = "mixed"
    steps_per_stage: int = 5000

    def __post_init__(self):
        markers = checks.field(self, "markers", checks.sequence, lambda name, m: checks.integer(name, m, 1))
        for name in ("seq_len", "modulus", "vocab_size", "marker_offset", "batch_size", "steps_per_stage"):
            checks.field(self, name, checks.integer)
        if self.seq_len < 4:
            raise ValueError(f"seq_len must be >= 4, got {self.seq_len}")
        if 2 * max(markers) - 1 > self.seq_len - 2:
            raise ValueError(f"markers: m = {max(markers)} pairs (marker, value) with gaps >= 2 need "
                             f"2m - 1 <= seq_len - 2 = {self.seq_len - 2} positions")
        if not 2 <= self.modulus <= self.marker_offset:
            raise ValueError(f"modulus must be in [2, marker_offset = {self.marker_offset}], got {self.modulus}")
        if self.vocab_size < self.marker_offset + max(markers) + 1:
            raise ValueError(f"vocab_size must be > marker_offset + max(markers) = "
                             f"{self.marker_offset + max(markers)} so distractors exist, got {self.vocab_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.schedule not in ("mixed", "curriculum"):
            raise ValueError(f"schedule must be 'mixed' or 'curriculum', got {self.schedule!r}")
        if self.steps_per_stage < 1:
            raise ValueError(f"steps_per_stage must be >= 1, got {self.steps_per_stage}")

    @property
    def largest_marker_count(self) -> int:
        """The largest m this task's sequence and vocabulary hold: 2m - 1 <= seq_len - 2 positions for the
        (marker, value) pairs with their gaps, and a vocabulary with room for distractors."""
        return min((self.seq_len - 1) // 2, self.vocab_size - self.marker_offset - 1)

    def markers_at_step(self, step: int, generator: torch.Generator) -> int:
        """m for the batch of this training step: uniform over `markers` (mixed) or the curriculum stage."""
        if self.schedule == "curriculum":
            return sorted(self.markers)[min(step // self.steps_per_stage, len(self.markers) - 1)]
        return self.markers[int(torch.randint(len(self.markers), (1,), generator=generator))]


@dataclass
class Batch:
    """tokens (B, T) long; labels (B,) long; marker_positions (B, m) long (value i sits at marker i + 1);
    target_mask (B, T) bool, True at marker and value positions (the ground-truth routing targets)."""
    tokens: torch.Tensor
    labels: torch.Tensor
    marker_positions: torch.Tensor
    target_mask: torch.Tensor
    n_markers: int

    def to(self, device) -> "Batch":
        return Batch(self.tokens.to(device), self.labels.to(device), self.marker_positions.to(device),
                     self.target_mask.to(device), self.n_markers)


def _marker_positions(n_examples: int, m: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """m positions in {1..T-2} with pairwise gaps >= 2, uniform over such sets: sorted picks from
    {1..T-2-(m-1)} shifted by 0, 1, ..., m-1 (stars and bars), so each value p+1 never hits the next marker."""
    n_slots = seq_len - 2 - (m - 1)
    picks = torch.stack([torch.randperm(n_slots, generator=generator)[:m] for _ in range(n_examples)])
    return torch.sort(picks, dim=1).values + 1 + torch.arange(m)


def sample_batch(task: TaskConfig, m: int, generator: torch.Generator, n_examples: int | None = None,
                 shared_positions: bool = True) -> Batch:
    """One batch of the task with m markers. shared_positions=True puts the markers at the same positions in
    every example, as the released code does for training; probe sets use per-example positions."""
    if m < 1 or 2 * m - 1 > task.seq_len - 2:
        raise ValueError(f"m must be in [1, {(task.seq_len - 1) // 2}] for seq_len {task.seq_len}, got {m}")
    n = task.batch_size if n_examples is None else n_examples
    T, C = task.seq_len, task.modulus
    if shared_positions:
        positions = _marker_positions(1, m, T, generator).expand(n, m)
    else:
        positions = _marker_positions(n, m, T, generator)
    # distractors: uniform over the vocabulary minus the values {0..C-1} and this batch's markers
    excluded = set(range(C)) | {task.marker_offset + i for i in range(m)}
    allowed = torch.tensor([t for t in range(task.vocab_size) if t not in excluded])
    tokens = allowed[torch.randint(len(allowed), (n, T), generator=generator)]
    values = torch.randint(C, (n, m), generator=generator)
    rows = torch.arange(n)[:, None]
    tokens[rows, positions] = task.marker_offset + torch.arange(m)
    tokens[rows, positions + 1] = values
    target_mask = torch.zeros(n, T, dtype=torch.bool)
    target_mask[rows, positions] = True
    target_mask[rows, positions + 1] = True
    return Batch(tokens, values.sum(dim=1) % C, positions.clone(), target_mask, m)


def probe_sets(task: TaskConfig, seed: int, n_examples: int = 128, markers=None) -> dict[int, Batch]:
    """Fixed probe batches, one per m (default: every m the task trains on), reused at every log step.
    Seeded apart from the training stream, so measuring never perturbs training."""
    probes = {}
    for m in (task.markers if markers is None else markers):
        generator = torch.Generator().manual_seed(1_000_003 * (seed + 1) + m)
        probes[m] = sample_batch(task, m, generator, n_examples=n_examples, shared_positions=False)
    return probes


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelConfig:
    n_layers: int = 5
    d_model: int = 128
    n_heads: int = 4
    vocab_size: int = 256
    seq_len: int = 16
    n_classes: int = 8
    mlp: str = "none"
    d_mlp: int = 512

    def __post_init__(self):
        for name in ("n_layers", "d_model", "n_heads", "vocab_size", "seq_len", "n_classes", "d_mlp"):
            checks.field(self, name, checks.integer, 1)
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if self.mlp not in MLP_MODES:
            raise ValueError(f"mlp must be one of {MLP_MODES}, got {self.mlp!r}")

    @property
    def n_parameters(self) -> int:
        """MarkerTransformer(self)'s parameter count, without building it: embeddings, per block a LayerNorm, the
        fused qkv and output projections (with biases) and the MLP ("on": with its LayerNorm; "unused": without),
        the final LayerNorm and the head."""
        d, mlp = self.d_model, 2 * self.d_model * self.d_mlp + self.d_mlp + self.d_model
        block = 2 * d + (3 * d * d + 3 * d) + (d * d + d) + {"none": 0, "on": mlp + 2 * d, "unused": mlp}[self.mlp]
        embeddings, readout = (self.vocab_size + self.seq_len) * d, 2 * d + d * self.n_classes + self.n_classes
        return embeddings + self.n_layers * block + readout

    @classmethod
    def for_task(cls, task: TaskConfig, **kwargs) -> "ModelConfig":
        return cls(vocab_size=task.vocab_size, seq_len=task.seq_len, n_classes=task.modulus, **kwargs)


class CausalSelfAttention(nn.Module):
    """Multi-head causal attention with a fused qkv projection: rows [0:d], [d:2d], [2d:3d] of qkv.weight are
    W_Q, W_K, W_V, and out.weight is W_O (the split the paper's trajectory analysis uses)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.n_heads, self.d_head = config.n_heads, config.d_model // config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model)
        self.out = nn.Linear(config.d_model, config.d_model)
        mask = torch.tril(torch.ones(config.seq_len, config.seq_len, dtype=torch.bool))
        self.register_buffer("causal_mask", mask, persistent=False)

    def forward(self, x, top_k: int | None = None):
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, self.d_head).transpose(1, 2) for t in (q, k, v))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(self.d_head)
        scores = scores.masked_fill(~self.causal_mask[:T, :T], float("-inf"))
        attention = F.softmax(scores, dim=-1)  # (B, heads, T_query, T_key)
        if top_k is not None:  # the code's `eval_with_k`: keep the k largest weights per query, renormalize
            kth = attention.topk(min(top_k, T), dim=-1).values[..., -1:]
            attention = torch.where(attention >= kth, attention, torch.zeros_like(attention))
            attention = attention / attention.sum(dim=-1, keepdim=True)
        y = (attention @ v).transpose(1, 2).reshape(B, T, d)
        return self.out(y), attention


class Block(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.ln_attention = nn.LayerNorm(config.d_model)
        self.attention = CausalSelfAttention(config)
        self.use_mlp = config.mlp == "on"
        if config.mlp == "on":  # the code's unused MLP comes without a LayerNorm of its own (its P counts none)
            self.ln_mlp = nn.LayerNorm(config.d_model)
        if config.mlp in ("on", "unused"):
            self.mlp = nn.Sequential(nn.Linear(config.d_model, config.d_mlp), nn.GELU(),
                                     nn.Linear(config.d_mlp, config.d_model))

    def forward(self, x, top_k: int | None = None):
        update, attention = self.attention(self.ln_attention(x), top_k)
        x = x + update
        if self.use_mlp:
            x = x + self.mlp(self.ln_mlp(x))
        return x, attention


@dataclass
class ModelOutput:
    logits: torch.Tensor  # (B, n_classes), read at the last position
    attention: list = field(default_factory=list)  # per layer (B, heads, T, T), when asked for


class MarkerTransformer(nn.Module):
    """The paper's attention-only pre-LN transformer (code `BubbleTransformer`)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model)
        self.position_embedding = nn.Embedding(config.seq_len, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_final = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.n_classes)

    def forward(self, tokens, return_attention: bool = False, top_k: int | None = None) -> ModelOutput:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.token_embedding(tokens) + self.position_embedding(positions)
        attention_maps = []
        for block in self.blocks:
            x, attention = block(x, top_k)
            if return_attention:
                attention_maps.append(attention)
        logits = self.head(self.ln_final(x)[:, -1])
        return ModelOutput(logits, attention_maps)

    def attention_weights(self) -> dict[str, torch.Tensor]:
        """The 4 n_layers trajectory blocks as views of the live parameters: {"L0.W_Q": (d, d), ...}.
        Views alias the parameters; a recorder must copy them (see validate._execution_manifold.trajectory)."""
        d, blocks = self.config.d_model, {}
        for layer, block in enumerate(self.blocks):
            qkv = block.attention.qkv.weight
            blocks[f"L{layer}.W_Q"] = qkv[:d]
            blocks[f"L{layer}.W_K"] = qkv[d:2 * d]
            blocks[f"L{layer}.W_V"] = qkv[2 * d:]
            blocks[f"L{layer}.W_O"] = block.attention.out.weight
        return blocks


def cross_entropy_and_accuracy(model: MarkerTransformer, batch: Batch, top_k: int | None = None):
    """Mean cross-entropy and accuracy of the last-position readout on a batch."""
    logits = model(batch.tokens, top_k=top_k).logits
    loss = F.cross_entropy(logits, batch.labels)
    accuracy = (logits.argmax(dim=-1) == batch.labels).float().mean()
    return loss, accuracy
