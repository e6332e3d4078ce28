"""The canonical signal-propagation block as a PyTorch module, read top to bottom: our reconstruction of the
block of Cowsik et al. (2024), whose exact parametrization the public abstract does not give.

Same parametrisation and names as `theory.signal_prop.BlockParams`. placement="pre" (the default):

    H = LN(X);  S = (H W_Q)(H W_K)^T / sqrt(d);  A = softmax(S) over keys (no mask)
    X <- a_A X + alpha_A * A H W_V
    H = LN(X);  X <- a_M X + alpha_M * (phi(H W_1 + b_1) W_2 + b_2)

placement="post" (LN after each residual sum, as in the original transformer): each sublayer F reads the
stream itself and X <- LN(a X + alpha F(X)), i.e. H = X in both sublayers above and the sums are LN'd.

LN(x) = sqrt(d) x / |x| (no centring, no gain).  W_Q, W_K ~ N(0, sigma_A/d), W_V ~ N(0, sigma_V^2/d),
W_1 ~ N(0, sigma_w^2/d), W_2 ~ N(0, sigma_2^2/d_ff), MLP biases b_1 (d_ff), b_2 (d) ~ N(0, sigma_b^2); with
sigma_b = 0 the block has no bias parameters at all (the same parameters, draws and arithmetic as without the
option).  a = 1 ("plain") or sqrt(1 - alpha^2) ("normalized").
"""
from __future__ import annotations

import math

import sympy as sp
import torch
from torch import nn

from theory.signal_prop import BlockParams

_TORCH_ACTIVATIONS = {"tanh": torch.tanh, "erf": torch.erf, "relu": torch.relu}


def torch_activation(activation):
    """phi as a torch function; a sympy.Lambda is lambdified onto torch's elementwise functions."""
    if isinstance(activation, str):
        return _TORCH_ACTIVATIONS[activation]
    x = activation.variables[0]
    return sp.lambdify(x, activation.expr, modules=[{"exp": torch.exp, "tanh": torch.tanh,
                                                     "erf": torch.erf, "sqrt": torch.sqrt,
                                                     "sin": torch.sin, "cos": torch.cos,
                                                     "Max": torch.maximum}, "math"])


def layer_norm(x: torch.Tensor) -> torch.Tensor:
    """LN(x) = sqrt(d) x / |x| per token: projects each token onto the sphere of radius sqrt(d)."""
    d = x.shape[-1]
    return math.sqrt(d) * x / x.norm(dim=-1, keepdim=True)


class CanonicalBlock(nn.Module):
    """One attention + MLP block, weights drawn with the standard deviations of the module docstring."""

    def __init__(self, params: BlockParams, width: int, d_ff: int | None = None):
        super().__init__()
        if not isinstance(params, BlockParams):
            raise ValueError(f"params={params!r}: must be a theory.signal_prop.BlockParams")
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"width={width!r}: must be a positive integer")
        d_ff = width if d_ff is None else d_ff
        if isinstance(d_ff, bool) or not isinstance(d_ff, int) or d_ff < 1:
            raise ValueError(f"d_ff={d_ff!r}: must be a positive integer")
        self.params, self.width, self.d_ff = params, width, d_ff
        self.W_Q = nn.Parameter(torch.empty(width, width))
        self.W_K = nn.Parameter(torch.empty(width, width))
        self.W_V = nn.Parameter(torch.empty(width, width))
        self.W_1 = nn.Parameter(torch.empty(width, d_ff))
        self.W_2 = nn.Parameter(torch.empty(d_ff, width))
        if params.sigma_b > 0:       # no bias parameters at sigma_b = 0: parameters and draws as without biases
            self.b_1 = nn.Parameter(torch.empty(d_ff))
            self.b_2 = nn.Parameter(torch.empty(width))
        else:
            self.b_1 = self.b_2 = None
        self.phi = torch_activation(params.activation)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None):
        h, d = self.params, self.width
        std = {"W_Q": math.sqrt(h.sigma_A / d), "W_K": math.sqrt(h.sigma_A / d),
               "W_V": h.sigma_V / math.sqrt(d), "W_1": h.sigma_w / math.sqrt(d),
               "W_2": h.sigma_2 / math.sqrt(self.d_ff)}
        if self.b_1 is not None:     # after the weights: a seed draws the same weights with or without biases
            std.update(b_1=h.sigma_b, b_2=h.sigma_b)
        for name, s in std.items():
            getattr(self, name).normal_(0.0, s, generator=generator)

    def attention(self, h: torch.Tensor) -> torch.Tensor:
        """A H W_V of the sublayer input H (..., n, d): LN(X) before the sum ("pre"), X itself ("post")."""
        logits = (h @ self.W_Q) @ (h @ self.W_K).transpose(-1, -2) / math.sqrt(self.width)
        return torch.softmax(logits, dim=-1) @ h @ self.W_V               # (..., n, d)

    def mlp(self, h: torch.Tensor) -> torch.Tensor:
        """phi(H W_1 + b_1) W_2 + b_2 of the sublayer input H, tokenwise."""
        if self.b_1 is None:
            return self.phi(h @ self.W_1) @ self.W_2
        return self.phi(h @ self.W_1 + self.b_1) @ self.W_2 + self.b_2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.params
        if h.placement == "post":
            x = layer_norm(h.skip_A * x + h.alpha_A * self.attention(x))
            return layer_norm(h.skip_M * x + h.alpha_M * self.mlp(x))
        x = h.skip_A * x + h.alpha_A * self.attention(layer_norm(x))
        return h.skip_M * x + h.alpha_M * self.mlp(layer_norm(x))


class CanonicalTransformer(nn.Module):
    """`depth` canonical blocks mapping token representations (..., n, d) -> (..., n, d)."""

    def __init__(self, params: BlockParams, depth: int, width: int, d_ff: int | None = None):
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(f"depth={depth!r}: must be a positive integer")
        self.params, self.depth, self.width = params, depth, width
        self.blocks = nn.ModuleList(CanonicalBlock(params, width, d_ff) for _ in range(depth))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None):
        for block in self.blocks:
            block.reset_parameters(generator)

    def forward(self, x: torch.Tensor, return_all: bool = False):
        states = [x]
        for block in self.blocks:
            x = block(x)
            states.append(x)
        return states if return_all else x


def simplex_tokens(n_tokens: int, width: int, q0: float, rho0: float, batch: int = 1,
                   generator: torch.Generator | None = None, dtype=torch.float32) -> torch.Tensor:
    """x_i = sqrt(q0) (sqrt(rho0) g + sqrt(1 - rho0) z_i), g, z_i ~ N(0, I_d): a permutation-symmetric
    simplex with E|x_i|^2/d = q0 and E x_i.x_j/d = q0 rho0 (the input of theory.signal_prop's map)."""
    if not 0.0 <= rho0 <= 1.0:
        raise ValueError(f"rho0={rho0!r}: must lie in [0, 1]")
    if q0 <= 0:
        raise ValueError(f"q0={q0!r}: must be > 0")
    g = torch.randn(batch, 1, width, generator=generator, dtype=dtype)
    z = torch.randn(batch, n_tokens, width, generator=generator, dtype=dtype)
    return math.sqrt(q0) * (math.sqrt(rho0) * g + math.sqrt(1.0 - rho0) * z)


def gram_order_parameters(x: torch.Tensor):
    """(q, p, rho) of tokens x (..., n, d): q = mean |x_i|^2/d, p = mean_{i != j} x_i.x_j/d, rho = p/q."""
    n, d = x.shape[-2], x.shape[-1]
    gram = x @ x.transpose(-1, -2) / d
    q = torch.diagonal(gram, dim1=-2, dim2=-1).mean(-1)
    p = (gram.sum((-1, -2)) - torch.diagonal(gram, dim1=-2, dim2=-1).sum(-1)) / (n * (n - 1))
    return q, p, p / q
