"""The synthetic sequence task the phase diagram trains on: a noisy token histogram.

Each sequence holds ``n_tokens`` symbols drawn uniformly from a vocabulary of ``vocab`` symbols. The label of
token i is its count in the sequence, c_i = #{j : x_j = x_i} in {1, ..., n}, observed through symmetric label
noise: with probability ``noise`` the label is replaced by a uniform draw from the n classes.

Why this task:
- it needs token mixing: a token-wise model sees only x_i, and by symmetry every symbol has the same label
  distribution, so without attention the best achievable loss is the entropy of the label marginal
  (``context_free_loss``), which a collapsed (rank-one) network also cannot beat;
- its loss floor is known exactly: the Bayes predictor puts 1 - noise + noise/n on c_i and noise/n on each
  other class, so the floor is the entropy of that distribution (``bayes_loss``);
- it is permutation-equivariant, like the canonical block (non-causal attention, no positions), so the
  network needs no positional embedding and the exponents, derived for permutation-symmetric tokens, apply
  to the architecture exactly as trained;
- its test loss needs no sampling of the label noise: ``expected_loss`` averages the cross-entropy over the
  noise analytically, so the held-out test set's only noise is its finite number of sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from validate._common import checks


@dataclass(frozen=True)
class HistogramTask:
    """Noisy token-histogram classification (see the module docstring).

    n_tokens: sequence length n (also the number of classes); vocab: alphabet size; noise: label-noise rate.
    """

    n_tokens: int = 8
    vocab: int = 4
    noise: float = 0.1

    def __post_init__(self):
        checks.field(self, "n_tokens", checks.integer, 2)
        checks.field(self, "vocab", checks.integer, 2)
        checks.field(self, "noise", checks.real, 0.0, 1.0, below=True)

    @property
    def n_classes(self) -> int:
        return self.n_tokens

    # -- data -------------------------------------------------------------------------------------------
    def clean_labels(self, tokens: torch.Tensor) -> torch.Tensor:
        """c_i - 1 (a class index in [0, n)): how often token i's symbol occurs in its sequence, minus one."""
        return (tokens.unsqueeze(-1) == tokens.unsqueeze(-2)).sum(-1) - 1

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, noisy labels), each (batch, n) int64, drawn with ``generator``."""
        tokens = torch.randint(self.vocab, (batch, self.n_tokens), generator=generator)
        labels = self.clean_labels(tokens)
        flip = torch.rand(labels.shape, generator=generator) < self.noise
        random_labels = torch.randint(self.n_classes, labels.shape, generator=generator)
        return tokens, torch.where(flip, random_labels, labels)

    def test_set(self, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out (tokens, clean labels); training draws from a generator seeded differently."""
        generator = torch.Generator().manual_seed(seed)
        tokens = torch.randint(self.vocab, (size, self.n_tokens), generator=generator)
        return tokens, self.clean_labels(tokens)

    # -- losses -----------------------------------------------------------------------------------------
    def expected_loss(self, logits: torch.Tensor, clean_labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy averaged exactly over the label noise, then over tokens: logits (..., n, K).

        E_y[-log p(y)] = -(1 - noise) log p(c) - (noise / K) sum_y log p(y).
        Reduces over the last two axes (tokens, classes) and the leading batch axis, keeping any model axis
        in front: logits (M, B, n, K) -> (M,).
        """
        log_p = torch.log_softmax(logits, dim=-1)
        clean = log_p.gather(-1, clean_labels.expand(log_p.shape[:-1]).unsqueeze(-1)).squeeze(-1)
        per_token = -(1 - self.noise) * clean - self.noise * log_p.mean(-1)
        return per_token.flatten(-2).mean(-1)

    def bayes_loss(self) -> float:
        """The loss floor: entropy of the Bayes predictive (1 - noise + noise/K on c_i, noise/K elsewhere)."""
        k, e = self.n_classes, self.noise
        right = 1 - e + e / k
        wrong = e / k
        return -right * math.log(right) - (k - 1) * (wrong * math.log(wrong) if wrong > 0 else 0.0)

    def label_marginal(self) -> list[float]:
        """P(y = k + 1) for k in [0, n): (1 - noise) Binomial(n - 1, 1/vocab)(k) + noise / n (the binomial
        in log space, so that long sequences neither overflow math.comb's float nor underflow early)."""
        n, v, e = self.n_tokens, self.vocab, self.noise

        def log_binomial(k):
            return (math.lgamma(n) - math.lgamma(k + 1) - math.lgamma(n - k) + k * math.log(1 / v)
                    + (n - 1 - k) * math.log1p(-1 / v))
        return [(1 - e) * math.exp(log_binomial(k)) + e / n for k in range(n)]

    def context_free_loss(self) -> float:
        """The best loss without token mixing: the entropy of the label marginal (every symbol looks alike)."""
        return -sum(m * math.log(m) for m in self.label_marginal() if m > 0)
