"""Measurements on one random canonical transformer at initialization (no training).

- ``measure_network``: a simplex (q0, rho0) of n tokens pushed through a fresh network of width d: the order
  parameters q, p, rho after every block, and the end-to-end Jacobian growth E|dX_l/dX_0|_F^2 / (n d) from
  Jacobian-vector products on isotropic Gaussian probes (Cowsik et al. 2024, the token-geometry map and its
  tangent map).
- ``measure_exponents``: both exponents of one fresh block at the collapsed state (n identical tokens of
  squared norm q d), from JVPs: the angle exponent from a differential probe (zero mean over tokens),
  log(|J v|^2/|v|^2) - log(q_out/q_in), which discounts the growth of the norm itself; the gradient exponent
  from a common-mode probe (the same vector on every token), log(|J v|^2/|v|^2).
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


def collapsed_input(q_value: float, n_tokens: int, width: int, probes: int, gen: torch.Generator) -> torch.Tensor:
    """`probes` batches of n identical tokens of squared norm q d (the collapsed state rho = 1)."""
    g = torch.randn(probes, 1, width, generator=gen)
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
