"""`python -m validate.signal_prop`: the token-geometry map and both exponents against random torch nets.

For each setting (ordered and chaotic phases, both residual forms) and each seed, a fresh canonical
transformer (validate/transformer.py) of width d is drawn and
  1. a simplex (q0, rho0) of n tokens is pushed through it: q, p, rho after every block, compared with
     sim.signal_prop.propagate (finite-n attention);
  2. the end-to-end Jacobian growth E|dX_l/dX_0|_F^2 / (n d) is measured with Jacobian-vector products on
     isotropic Gaussian probes, compared with propagate's tangent map;
  3. both exponents are measured at the collapsed state with JVPs: the angle exponent from a differential
     probe (zero mean over tokens), log(|J v|^2/|v|^2) - log(q_out/q_in), the gradient exponent from a
     common-mode probe (the same vector on every token), log(|J v|^2/|v|^2); compared with
     sim.signal_prop.exponents.
Tolerances: |rho_th - rho| <= max(0.03, 3 SE), |q_th/q - 1| <= max(5%, 3 SE), exponents within 3 SE,
SE = standard error over seeds (issue 2).  The Jacobian growth gets max(10%, 3 SE) relative.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

from sim.signal_prop import exponents, propagate
from theory.signal_prop import BlockParams
from validate.reporting import atomic_savefig, atomic_write_text
from validate.transformer import CanonicalBlock, CanonicalTransformer, gram_order_parameters, simplex_tokens

SETTINGS = {
    "normalized-ordered": BlockParams(alpha_A=0.5, alpha_M=0.5, sigma_w=1.0, sigma_2=1.0,
                                      residual="normalized"),
    "normalized-chaotic": BlockParams(alpha_A=0.5, alpha_M=0.5, sigma_w=2.5, sigma_2=2.5,
                                      residual="normalized"),
    "plain-ordered": BlockParams(alpha_A=0.5, alpha_M=0.5, sigma_w=1.0, sigma_2=1.0, residual="plain"),
    "plain-chaotic": BlockParams(alpha_A=0.3, alpha_M=0.3, sigma_w=6.0, sigma_2=1.0, residual="plain"),
}

RHO_FLOOR, Q_FLOOR, JACOBIAN_FLOOR = 0.03, 0.05, 0.10


@dataclass(frozen=True)
class Config:
    width: int = 1024
    n_tokens: int = 32
    depth: int = 16
    seeds: int = 8
    probes: int = 4
    q0: float = 1.0
    rho0: float = 0.5
    seed: int = 0
    device: str = "cpu"
    out: str = "runs/signal_prop"
    figure: str | None = "figures/signal_prop.png"
    settings: tuple = tuple(SETTINGS)

    def __post_init__(self):
        for name in ("width", "n_tokens", "depth", "seeds", "probes"):
            v = getattr(self, name)
            minimum = 2 if name in ("n_tokens", "seeds") else 1
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ValueError(f"{name}={v!r}: must be an integer >= {minimum}")
        if not self.q0 > 0:
            raise ValueError(f"q0={self.q0!r}: must be > 0")
        if not 0.0 <= self.rho0 < 1.0:
            raise ValueError(f"rho0={self.rho0!r}: must lie in [0, 1)")
        unknown = [s for s in self.settings if s not in SETTINGS]
        if unknown or not self.settings:
            raise ValueError(f"settings={list(self.settings)!r}: allowed values are {list(SETTINGS)}")
        if self.device != "cpu" and not (self.device.startswith("cuda") and torch.cuda.is_available()):
            raise ValueError(f"device={self.device!r}: allowed values are 'cpu' or 'cuda' (when present)")


QUICK = dict(width=256, depth=8, seeds=4, probes=2, figure=None)


# ----------------------------------------------------------------------------------------------------
# Measurements on one random network
# ----------------------------------------------------------------------------------------------------
def _jvp_growth(net, x, v):
    """|J v|^2 / |v|^2 after every block, for a batch of inputs x and probes v (both (B, n, d))."""
    def all_states(inp):
        return tuple(net(inp, return_all=True)[1:])
    _, tangents = torch.func.jvp(all_states, (x,), (v,))
    v_norm = v.pow(2).sum((-1, -2))
    return torch.stack([t.pow(2).sum((-1, -2)) / v_norm for t in tangents], dim=0)   # (L, B)


def measure_network(params: BlockParams, cfg: Config, seed: int) -> dict:
    """Forward order parameters and Jacobian growth of one random network from a simplex input."""
    gen = torch.Generator().manual_seed(seed)
    device = torch.device(cfg.device)
    net = CanonicalTransformer(params, cfg.depth, cfg.width)
    net.reset_parameters(gen)
    net.to(device)
    x = simplex_tokens(cfg.n_tokens, cfg.width, cfg.q0, cfg.rho0, batch=cfg.probes, generator=gen).to(device)
    v = torch.randn(x.shape, generator=gen).to(device)
    with torch.no_grad():
        states = net(x, return_all=True)
        q, p, rho = (torch.stack(t).mean(-1).cpu().numpy() for t in
                     zip(*[gram_order_parameters(s) for s in states]))
        growth = _jvp_growth(net, x, v).mean(-1).cpu().numpy()
    return {"q": q, "p": p, "rho": rho, "jacobian": np.concatenate([[1.0], growth])}


def collapsed_input(q_value: float, cfg: Config, gen: torch.Generator) -> torch.Tensor:
    """n identical tokens of squared norm q d (the collapsed state rho = 1)."""
    g = torch.randn(cfg.probes, 1, cfg.width, generator=gen)
    g = g * math.sqrt(q_value * cfg.width) / g.norm(dim=-1, keepdim=True)
    return g.expand(cfg.probes, cfg.n_tokens, cfg.width).contiguous()


def measure_exponents(params: BlockParams, q_value: float, cfg: Config, seed: int) -> dict:
    """Angle and gradient exponents of one random block at the collapsed state with norm q_value."""
    gen = torch.Generator().manual_seed(seed + 7919)
    block = CanonicalBlock(params, cfg.width)
    block.reset_parameters(gen)
    x = collapsed_input(q_value, cfg, gen)
    shape = (cfg.probes, cfg.n_tokens, cfg.width)
    differential = torch.randn(shape, generator=gen)
    differential = differential - differential.mean(1, keepdim=True)            # zero mean over tokens
    common = torch.randn(cfg.probes, 1, cfg.width, generator=gen).expand(shape).contiguous()

    def run(inp):
        return block(inp)

    with torch.no_grad():
        out = block(x)
        q_in = gram_order_parameters(x)[0]
        q_out = gram_order_parameters(out)[0]
        rates = {}
        for name, v in (("differential", differential), ("common", common)):
            _, jv = torch.func.jvp(run, (x,), (v,))
            rates[name] = torch.log(jv.pow(2).sum((-1, -2)) / v.pow(2).sum((-1, -2)))
    angle = (rates["differential"] - torch.log(q_out / q_in)).mean().item()
    return {"angle": angle, "gradient": rates["common"].mean().item()}


# ----------------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------------
def _mean_se(samples: np.ndarray):
    samples = np.asarray(samples, float)
    return samples.mean(0), samples.std(0, ddof=1) / math.sqrt(samples.shape[0])


def evaluate_setting(name: str, cfg: Config, progress=None) -> dict:
    params = SETTINGS[name].replace(n_tokens=cfg.n_tokens)
    theory = propagate(params, cfg.depth, cfg.q0, cfg.rho0)
    ex = exponents(params)
    runs, exps = [], []
    for s in range(cfg.seeds):
        seed = cfg.seed * 100003 + s
        runs.append(measure_network(params, cfg, seed))
        exps.append(measure_exponents(params, ex.q, cfg, seed))
        if progress is not None:
            progress.update(1)
    measured = {k: _mean_se([r[k] for r in runs]) for k in ("q", "p", "rho", "jacobian")}
    rho_gap = np.abs(theory.rho - measured["rho"][0])
    rho_tol = np.maximum(RHO_FLOOR, 3 * measured["rho"][1])
    q_rel = np.abs(theory.q / measured["q"][0] - 1)
    q_tol = np.maximum(Q_FLOOR, 3 * measured["q"][1] / measured["q"][0])
    jac_rel = np.abs(theory.jacobian / measured["jacobian"][0] - 1)
    jac_tol = np.maximum(JACOBIAN_FLOOR, 3 * measured["jacobian"][1] / measured["jacobian"][0])
    angle_m, angle_se = _mean_se([e["angle"] for e in exps])
    grad_m, grad_se = _mean_se([e["gradient"] for e in exps])
    return {
        "params": {**dataclasses.asdict(params), "activation": str(params.activation)},
        "theory": {"q": theory.q.tolist(), "rho": theory.rho.tolist(), "jacobian": theory.jacobian.tolist(),
                   "angle_exponent": ex.angle, "gradient_exponent": ex.gradient, "collapsed_q": ex.q},
        "measured": {k: {"mean": m.tolist(), "se": se.tolist()} for k, (m, se) in measured.items()},
        "measured_exponents": {"angle": angle_m, "angle_se": angle_se, "gradient": grad_m,
                               "gradient_se": grad_se},
        "checks": {
            "rho": {"max_gap": float(rho_gap.max()), "worst_layer": int(rho_gap.argmax()),
                    "tolerance_at_worst": float(rho_tol[rho_gap.argmax()]),
                    "pass": bool(np.all(rho_gap <= rho_tol))},
            "q": {"max_rel_gap": float(q_rel.max()), "worst_layer": int(q_rel.argmax()),
                  "tolerance_at_worst": float(q_tol[q_rel.argmax()]), "pass": bool(np.all(q_rel <= q_tol))},
            "jacobian": {"max_rel_gap": float(jac_rel.max()), "worst_layer": int(jac_rel.argmax()),
                         "tolerance_at_worst": float(jac_tol[jac_rel.argmax()]),
                         "pass": bool(np.all(jac_rel <= jac_tol))},
            "angle_exponent": {"gap": abs(ex.angle - angle_m), "tolerance": 3 * angle_se,
                               "pass": bool(abs(ex.angle - angle_m) <= 3 * angle_se)},
            "gradient_exponent": {"gap": abs(ex.gradient - grad_m), "tolerance": 3 * grad_se,
                                  "pass": bool(abs(ex.gradient - grad_m) <= 3 * grad_se)},
            "se_below_floors": bool(np.all(3 * measured["rho"][1] <= RHO_FLOOR)
                                    and np.all(3 * measured["q"][1] / measured["q"][0] <= Q_FLOOR)),
        },
    }


def verdict_rows(results: dict) -> list[tuple]:
    rows = []
    for name, r in results.items():
        c, th, me = r["checks"], r["theory"], r["measured"]
        L = c["rho"]["worst_layer"]
        rows.append((name, f"rho (worst layer {L})", f"{th['rho'][L]:.4f}",
                     f"{me['rho']['mean'][L]:.4f} ± {me['rho']['se'][L]:.4f}",
                     f"<= {c['rho']['tolerance_at_worst']:.3f}", c["rho"]["pass"]))
        L = c["q"]["worst_layer"]
        rows.append((name, f"q (worst layer {L})", f"{th['q'][L]:.4f}",
                     f"{me['q']['mean'][L]:.4f} ± {me['q']['se'][L]:.4f}",
                     f"rel <= {c['q']['tolerance_at_worst']:.3f}", c["q"]["pass"]))
        L = c["jacobian"]["worst_layer"]
        rows.append((name, f"|J|^2/nd (worst layer {L})", f"{th['jacobian'][L]:.4g}",
                     f"{me['jacobian']['mean'][L]:.4g} ± {me['jacobian']['se'][L]:.2g}",
                     f"rel <= {c['jacobian']['tolerance_at_worst']:.3f}", c["jacobian"]["pass"]))
        e = r["measured_exponents"]
        rows.append((name, "angle exponent", f"{th['angle_exponent']:+.4f}",
                     f"{e['angle']:+.4f} ± {e['angle_se']:.4f}",
                     f"<= {c['angle_exponent']['tolerance']:.4f}", c["angle_exponent"]["pass"]))
        rows.append((name, "gradient exponent", f"{th['gradient_exponent']:+.4f}",
                     f"{e['gradient']:+.4f} ± {e['gradient_se']:.4f}",
                     f"<= {c['gradient_exponent']['tolerance']:.4f}", c["gradient_exponent"]["pass"]))
    return rows


def format_table(rows) -> str:
    header = ("setting", "quantity", "theory", "torch (mean ± SE)", "tolerance", "verdict")
    cells = [header] + [r[:5] + ("PASS" if r[5] else "FAIL",) for r in rows]
    widths = [max(len(str(c[i])) for c in cells) for i in range(len(header))]
    lines = ["  ".join(str(c[i]).ljust(widths[i]) for i in range(len(header))) for c in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def plot(results: dict, cfg: Config, path: str):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    fig, axes = plt.subplots(3, len(names), figsize=(4.2 * len(names), 9.5), squeeze=False)
    layers = np.arange(cfg.depth + 1)
    for col, name in enumerate(names):
        r = results[name]
        for row, (key, label) in enumerate((("rho", r"$\rho$ = p/q"), ("q", "q"),
                                            ("jacobian", r"$E|dX_l/dX_0|_F^2/(nd)$"))):
            ax = axes[row, col]
            ax.plot(layers, r["theory"][key], "-", color="C0", label="theory (finite n)")
            ax.errorbar(layers, r["measured"][key]["mean"], yerr=r["measured"][key]["se"], fmt="o",
                        ms=3.5, color="C3", label=f"torch d={cfg.width}, {cfg.seeds} seeds")
            if key == "jacobian":
                ax.set_yscale("log")
            ax.set_ylabel(label)
            if row == 2:
                ax.set_xlabel("block l")
            if row == 0:
                e = r["measured_exponents"]
                ax.set_title(f"{name}\n$\\lambda_a$ th {r['theory']['angle_exponent']:+.3f} / "
                             f"torch {e['angle']:+.3f}\n$\\lambda_g$ th {r['theory']['gradient_exponent']:+.3f}"
                             f" / torch {e['gradient']:+.3f}", fontsize=9)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.suptitle(f"Token geometry through random canonical transformers: n={cfg.n_tokens}, "
                 f"depth {cfg.depth}, input rho0={cfg.rho0}", fontsize=11)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


def write_json(obj, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_text(path, json.dumps(obj, indent=1, default=float))


def versions() -> dict:
    import matplotlib
    import numba
    import scipy
    import sympy
    return {"python": sys.version.split()[0], "numpy": np.__version__, "scipy": scipy.__version__,
            "sympy": sympy.__version__, "numba": numba.__version__, "torch": torch.__version__,
            "matplotlib": matplotlib.__version__}


def run(cfg: Config, quiet: bool = False) -> dict:
    from tqdm.auto import tqdm
    torch.manual_seed(cfg.seed)
    start = time.time()
    results = {}
    with tqdm(total=len(cfg.settings) * cfg.seeds, desc="networks", disable=quiet or not sys.stderr.isatty()
              ) as bar:
        for name in cfg.settings:
            results[name] = evaluate_setting(name, cfg, bar)
    rows = verdict_rows(results)
    record = {"config": dataclasses.asdict(cfg), "versions": versions(),
              "timings": {"total_s": time.time() - start}, "settings": results,
              "verdicts": [dict(zip(("setting", "quantity", "theory", "measured", "tolerance", "pass"), r))
                           for r in rows],
              "all_pass": all(r[5] for r in rows)}
    write_json(record, os.path.join(cfg.out, "signal_prop.json"))
    for path in {os.path.join(cfg.out, "signal_prop.png"), cfg.figure} - {None}:
        plot(results, cfg, path)
    record["table"] = format_table(rows)
    return record


def parse_args(argv=None) -> tuple[Config, bool]:
    parser = argparse.ArgumentParser(prog="python -m validate.signal_prop", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Config()
    parser.add_argument("--width", type=int, default=d.width, help="model width d (default %(default)s)")
    parser.add_argument("--n-tokens", type=int, default=d.n_tokens, help="tokens n (default %(default)s)")
    parser.add_argument("--depth", type=int, default=d.depth, help="blocks (default %(default)s)")
    parser.add_argument("--seeds", type=int, default=d.seeds, help="random networks per setting (default %(default)s)")
    parser.add_argument("--probes", type=int, default=d.probes, help="inputs/probes per network (default %(default)s)")
    parser.add_argument("--rho0", type=float, default=d.rho0, help="input cosine (default %(default)s)")
    parser.add_argument("--q0", type=float, default=d.q0, help="input squared norm per dim (default %(default)s)")
    parser.add_argument("--settings", nargs="+", default=list(d.settings), metavar="NAME",
                        help=f"which settings (default all: {', '.join(SETTINGS)})")
    parser.add_argument("--seed", type=int, default=d.seed, help="base seed (default %(default)s)")
    parser.add_argument("--device", default=d.device, help="cpu or cuda (default %(default)s)")
    parser.add_argument("--out", default=d.out, help="output directory (default %(default)s)")
    parser.add_argument("--figure", default=d.figure,
                        help="also write the figure here (default %(default)s; 'none' to skip)")
    parser.add_argument("--quick", action="store_true", help="smoke preset: width 256, depth 8, 4 seeds")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    values = {k: getattr(args, k) for k in ("width", "n_tokens", "depth", "seeds", "probes", "rho0", "q0",
                                            "seed", "device", "out")}
    values["settings"] = tuple(args.settings)
    values["figure"] = None if str(args.figure).lower() == "none" else args.figure
    if args.quick:
        values.update({k: v for k, v in QUICK.items()})
    try:
        return Config(**values), args.quiet
    except ValueError as err:
        parser.error(str(err))


def main(argv=None):
    cfg, quiet = parse_args(argv)
    record = run(cfg, quiet)
    print(record["table"])
    print(f"\n{'ALL PASS' if record['all_pass'] else 'SOME FAIL'}; "
          f"{record['timings']['total_s']:.0f} s; wrote {os.path.join(cfg.out, 'signal_prop.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
