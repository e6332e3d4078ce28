"""Measurements on one random canonical transformer at initialization (no training).

- ``measure_network``: a simplex (q0, rho0) of n tokens pushed through a fresh network of width d: the order
  parameters q, p, rho after every block, and the end-to-end Jacobian growth E|dX_l/dX_0|_F^2 / (n d) from
  Jacobian-vector products on isotropic Gaussian probes (Cowsik et al. 2024, the token-geometry map and its
  tangent map).
- ``measure_exponents``: both exponents of one fresh block at the collapsed state (n identical tokens of
  squared norm q d), from JVPs: the angle exponent from a differential probe (zero mean over tokens),
  log(|J v|^2/|v|^2) - log(q_out/q_in), which discounts the growth of the norm itself; the gradient exponent
  from a common-mode probe (the same vector on every token), log(|J v|^2/|v|^2).
- ``measure_finite_depth``: the finite-depth exponents of a fresh depth-L network fed collapsed tokens of
  squared norm q0 d, the rates a depth-L network has at initialization (sim.signal_prop.exponents with
  depth=L): the angle exponent from the forward growth of a tiny token spread epsilon = 1 - rho, the
  common-mode and the Frobenius gradient exponents from JVPs, in float64.
Every random draw comes from a torch.Generator seeded by the caller, so a seed gives the same numbers.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from theory.signal_prop import BlockParams
from validate._signal_prop.transformer import (CanonicalBlock, CanonicalTransformer, gram_order_parameters,
                                              simplex_tokens)

EXPONENT_SEED_OFFSET = 7919  # the block of the exponent probes is drawn from its own stream, not the network's


def _jvp_growth(net: CanonicalTransformer, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """|J v|^2 / |v|^2 after every block, for a batch of inputs x and probes v (both (B, n, d)): (L, B)."""
    def all_states(inp):
        return tuple(net(inp, return_all=True)[1:])
    _, tangents = torch.func.jvp(all_states, (x,), (v,))
    v_norm = v.pow(2).sum((-1, -2))
    return torch.stack([t.pow(2).sum((-1, -2)) / v_norm for t in tangents], dim=0)


def measure_network(params: BlockParams, depth: int, width: int, q0: float, rho0: float, probes: int,
                    seed: int, device: str = "cpu") -> dict:
    """Order parameters (q, p, rho) and Jacobian growth after every block of one random network (index 0 is
    the input), each averaged over `probes` simplex inputs; n = params.n_tokens."""
    gen = torch.Generator().manual_seed(seed)
    net = CanonicalTransformer(params, depth, width)
    net.reset_parameters(gen)
    net.to(torch.device(device))
    x = simplex_tokens(params.n_tokens, width, q0, rho0, batch=probes, generator=gen).to(device)
    v = torch.randn(x.shape, generator=gen).to(device)
    with torch.no_grad():
        states = net(x, return_all=True)
        q, p, rho = (torch.stack(t).mean(-1).cpu().numpy() for t in
                     zip(*[gram_order_parameters(s) for s in states]))
        growth = _jvp_growth(net, x, v).mean(-1).cpu().numpy()
    return {"q": q, "p": p, "rho": rho, "jacobian": np.concatenate([[1.0], growth])}


def collapsed_input(q_value: float, n_tokens: int, width: int, probes: int, gen: torch.Generator,
                    dtype=torch.float32) -> torch.Tensor:
    """`probes` batches of n identical tokens of squared norm q d (the collapsed state rho = 1)."""
    g = torch.randn(probes, 1, width, generator=gen, dtype=dtype)
    g = g * math.sqrt(q_value * width) / g.norm(dim=-1, keepdim=True)
    return g.expand(probes, n_tokens, width).contiguous()


def measure_exponents(params: BlockParams, q_value: float, width: int, probes: int, seed: int) -> dict:
    """Angle and gradient exponents (per block, natural log) of one random block at the collapsed state of
    norm q_value, each averaged over `probes` probes; n = params.n_tokens."""
    gen = torch.Generator().manual_seed(seed + EXPONENT_SEED_OFFSET)
    block = CanonicalBlock(params, width)
    block.reset_parameters(gen)
    x = collapsed_input(q_value, params.n_tokens, width, probes, gen)
    shape = (probes, params.n_tokens, width)
    differential = torch.randn(shape, generator=gen)
    differential = differential - differential.mean(1, keepdim=True)            # zero mean over tokens
    common = torch.randn(probes, 1, width, generator=gen).expand(shape).contiguous()

    with torch.no_grad():
        out = block(x)
        q_in = gram_order_parameters(x)[0]
        q_out = gram_order_parameters(out)[0]
        rates = {}
        for name, v in (("differential", differential), ("common", common)):
            _, jv = torch.func.jvp(block, (x,), (v,))
            rates[name] = torch.log(jv.pow(2).sum((-1, -2)) / v.pow(2).sum((-1, -2)))
    angle = (rates["differential"] - torch.log(q_out / q_in)).mean().item()
    return {"angle": angle, "gradient": rates["common"].mean().item()}


# The initial token spread of the forward angle measurement. The measured rate deviates from the linear growth
# by O(sqrt(epsilon)), the amplitude of the token differences, and float64 resolves differences of relative
# size sqrt(1e-12) = 1e-6 to ~1e-10: at width 64, depth 16, lambda_a = +0.15 the rate moves by 4e-8 between
# epsilon_0 = 1e-16 and 1e-12 and by 5e-7 at 1e-10 (tests), far below any seed noise.
FINITE_DEPTH_EPSILON0 = 1e-12
FINITE_DEPTH_QUANTITIES = ("angle", "gradient", "gradient_frobenius")


def token_spread(x: torch.Tensor) -> torch.Tensor:
    """epsilon = 1 - rho = (q - p)/q of tokens x (..., n, d), computed from the token differences,
    q - p = sum_i |x_i - mean x|^2 / ((n - 1) d), so that it stays accurate at epsilon ~ 1e-12 (1 - p/q would
    lose it to cancellation)."""
    n, d = x.shape[-2], x.shape[-1]
    spread = (x - x.mean(-2, keepdim=True)).pow(2).sum((-1, -2)) / ((n - 1) * d)
    return spread / (x.pow(2).sum((-1, -2)) / (n * d))


def measure_finite_depth(params: BlockParams, depth: int, width: int, q0: float, probes: int, seed: int,
                         device: str = "cpu") -> dict:
    """Finite-depth exponents (per block, natural log) of one random depth-L network (L = depth, seeded by
    `seed`) fed collapsed inputs: n = params.n_tokens identical tokens of squared norm q0 d, one random direction
    per probe. Float64 throughout, the probes of each kind batched into one forward-mode JVP.

    Per probe, after l = 1..L blocks:
      angle:              epsilon_l/epsilon_0 of a forward pass from the collapsed input plus a tiny zero-mean
                          token spread (epsilon_0 = FINITE_DEPTH_EPSILON0, epsilon = 1 - rho by `token_spread`);
      gradient:           |J_l v|^2/|v|^2 for a common-mode tangent v (the same Gaussian vector on every token);
      gradient_frobenius: |J_l v|^2/|v|^2 for an isotropic Gaussian tangent v, whose mean over v is
                          E|J_l|_F^2/(nd).
    The common-mode JVP runs on one token: with n identical tokens and tangents every token carries the same
    computation (the attention weights are exactly 1/n and the logit tangents are equal along each row, so the
    softmax tangent is 0), so one token gives the same numbers up to rounding (tested) at 1/n of the cost.

    Returns, for each of these three quantities:
      result[quantity]:               (1/L) log of the mean over probes of the growth after L blocks: this
                                      network's exponent, the measured counterpart of
                                      sim.signal_prop.exponents(params, depth=L, q0=q0); means and standard
                                      errors over networks are the caller's, from calls with distinct seeds;
      result["per_probe"][quantity]:  (1/L) log of each probe's growth after L blocks, shape (probes,);
      result["log_growth"][quantity]: log of the mean over probes of the growth after l blocks, shape (L + 1,)
                                      (index 0: the input, 0): l times this network's depth-l exponent;
    and result["q"]: the collapsed norm |x|^2/d after every block (mean over probes; index 0: q0), shape (L + 1,).
    """
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes={probes!r}: must be a positive integer")
    if isinstance(q0, bool) or not isinstance(q0, (int, float)) or not (math.isfinite(q0) and q0 > 0):
        raise ValueError(f"q0={q0!r}: must be a finite number > 0")
    gen = torch.Generator().manual_seed(seed)
    net = CanonicalTransformer(params, depth, width).to(torch.float64)
    net.reset_parameters(gen)
    net.to(torch.device(device))
    n, dtype = params.n_tokens, torch.float64
    x = collapsed_input(q0, n, width, probes, gen, dtype)
    common = torch.randn(probes, 1, width, generator=gen, dtype=dtype)
    isotropic = torch.randn(probes, n, width, generator=gen, dtype=dtype)
    spread = torch.randn(probes, n, width, generator=gen, dtype=dtype)
    spread = spread - spread.mean(1, keepdim=True)
    spread = spread * torch.sqrt(FINITE_DEPTH_EPSILON0 * (n - 1) * width * q0
                                 / spread.pow(2).sum((-1, -2), keepdim=True))
    perturbed = x + spread

    def all_states(inp):
        return tuple(net(inp, return_all=True)[1:])

    def squared_norm(t):
        return t.pow(2).sum((-1, -2))

    with torch.no_grad():
        # one token for the common mode (docstring); the isotropic probes and the perturbed inputs in one batch
        _, common_out = torch.func.jvp(all_states, (x[:, :1].to(device),), (common.to(device),))
        states, isotropic_out = torch.func.jvp(all_states, (torch.cat([x, perturbed]).to(device),),
                                               (torch.cat([isotropic, torch.zeros_like(x)]).to(device),))
        eps0 = token_spread(perturbed.to(device))
        growth = {"angle": torch.stack([token_spread(s[probes:]) / eps0 for s in states]),
                  "gradient": torch.stack([squared_norm(t) for t in common_out]) / squared_norm(common.to(device)),
                  "gradient_frobenius": torch.stack([squared_norm(t[:probes]) for t in isotropic_out])
                  / squared_norm(isotropic.to(device))}
        q = torch.stack([squared_norm(s[:probes]) / (n * width) for s in states]).mean(-1)
    growth = {k: v.cpu().numpy() for k, v in growth.items()}          # (L, probes)
    result = {k: float(np.log(v[-1].mean()) / depth) for k, v in growth.items()}
    result["per_probe"] = {k: np.log(v[-1]) / depth for k, v in growth.items()}
    result["log_growth"] = {k: np.concatenate([[0.0], np.log(v.mean(-1))]) for k, v in growth.items()}
    result["q"] = np.concatenate([[float(q0)], q.cpu().numpy()])
    return result
