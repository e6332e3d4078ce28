"""The experiment of `python -m validate.scan_snap`: its configuration, its two regimes, their metrics and verdicts.

- The authors' regime (`authors_regime`): Syn-Small with SGD momentum 0.9, batch 128, T = 128, 100 steps and
  Y(0) = Z(0) = 0 by default (Tian et al. 2023, Sec. 8, Fig. 4): attention maps, the entropy of c_n on distinct
  tokens for several eta_Y/eta_Z, the order in which distinct tokens drop against P(l|n) (Theorem 3), common
  tokens falling (Theorem 2b).
- The theory's regime (`theory_regime`): plain SGD from zero, a small eta_Z and long sequences, where Lemma 1's
  gradient flow (sim.scan_snap.integrate_yz_flow) should describe the run; and the snap time, the peak of the
  back-propagated signal ||Y (e_n - alpha_n)|| (which tracks gamma(t), Theorem 1), against
  t0' = K ln M / eta_Y (Theorem 4a).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sim import scan_snap as ss
from theory import scan_snap as th
from validate._common.reporting import Verdict
from validate._scan_snap import analysis as an
from validate._scan_snap.models import TrainConfig, make_classes, train

#: the relative error the torch Y/Z model may have against Lemma 1's flow: a chosen bar. The flow is the limit of
#: infinite T, batch and continuous time; at T = 128-256 and batch 128 the runs stay within a few per cent of it,
#: while the attention itself moves by tens of per cent (the verdict row reports how much), so a flow that did not
#: describe the run would miss by far more than 10%.
ODE_ERROR_BAR = 0.10

#: the Dormand-Prince tolerances sim.scan_snap.integrate_yz_flow runs at (its defaults), recorded with the results
INTEGRATOR = {"rtol": 1e-7, "atol": 1e-9, "method": "Dormand-Prince 5(4), sim.scan_snap.dopri5"}


@dataclass(frozen=True)
class ScanSnapConfig:
    """Everything a run depends on.

    train: the authors'-regime run at the main ratio train.lr_ratio (its seed is replaced by each of `seeds`);
    ratios: eta_Y/eta_Z values of the entropy and snap-time measurements; the main ratio is always among them
    (it is added if missing; the values are kept sorted);
    theory_*: plain-SGD runs from zero at eta_Z = theory_lr_z, theory_steps long, with sequences of
    theory_seq_len tokens, on the first theory_seeds of `seeds`; snap_steps: length of the snap-time runs."""

    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: tuple = (1, 2, 3, 4, 5)
    ratios: tuple = (1.0, 2.0, 5.0, 10.0)
    theory_lr_z: float = 0.25
    theory_steps: int = 1000
    theory_seq_len: int = 256
    theory_seeds: int = 3
    snap_steps: int = 300
    device: str = "cpu"

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds={self.seeds!r}: need distinct integers")
        if not self.ratios or any(not r > 0 for r in self.ratios):
            raise ValueError(f"ratios={self.ratios!r}: need positive numbers")
        object.__setattr__(self, "ratios",
                           tuple(sorted({float(r) for r in self.ratios} | {float(self.train.lr_ratio)})))
        if not (self.theory_lr_z > 0):
            raise ValueError(f"theory_lr_z={self.theory_lr_z}: must be > 0")
        for name in ("theory_steps", "theory_seq_len", "theory_seeds", "snap_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < (2 if name == "theory_seq_len" else 1):
                raise ValueError(f"{name}={getattr(self, name)!r}: must be a positive integer")
        if self.device not in ("cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device={self.device!r}: allowed cpu, cuda, cuda:N")

    def progress_total(self) -> int:
        """Training runs of a whole experiment: every (ratio, seed) of the authors' regime, the theory-regime
        seeds, and one snap-time run per ratio."""
        return len(self.ratios) * len(self.seeds) + min(self.theory_seeds, len(self.seeds)) + len(self.ratios)


# ---------------------------------------------------------------------------------------------------------
# The authors' regime
# ---------------------------------------------------------------------------------------------------------
def authors_regime(cfg: ScanSnapConfig, progress) -> dict:
    """Train every (ratio, seed); entropy on distinct tokens over time, and at the main ratio the drop order,
    the logit order, the common tokens and the final loss. progress(1) after each run."""
    base = cfg.train
    classes = make_classes(base.dataset, base.next_tokens)
    table = ss.ClassTable.from_classes(classes)
    logs = np.arange(0, base.steps + 1, 2 if base.steps <= 200 else max(1, base.steps // 100))
    ratios = list(cfg.ratios)
    out = {"steps": logs, "ratios": ratios, "entropy": {}, "attention_first_seed": {}}
    for ratio in ratios:
        ent = []
        for seed in cfg.seeds:
            rec = train(replace(base, lr_ratio=ratio, seed=seed), logs, device=cfg.device)
            att = ss.attention_from_logits(table, rec.Z)
            ent.append(an.entropy_distinct(classes, att))
            if seed == cfg.seeds[0]:
                out["attention_first_seed"][ratio] = att
            if ratio == base.lr_ratio:
                per = out.setdefault("main", {"drop_tau": [], "drop_pairs": [], "logit_tau": [],
                                              "common_fall": [], "final_loss": [], "drops": []})
                taus, pairs, ltaus, drops = [], [], [], []
                for k in range(classes.n_classes):
                    dist = list(classes.distinct_tokens(k))
                    # rank by the initial attention c_l(0) ~ P(l|n) e^{z_ml(0)}: Theorem 3's r(0) ("initial value
                    # as prior"); with Z(0) = 0 this is exactly the order of P(l|n)
                    P = att[0, k, dist]
                    d = an.drop_times(logs, att[:, k, dist])
                    tau, npairs = an.drop_order_tau(P, d)
                    taus.append(tau)
                    pairs.append(npairs)
                    drops.append([None if np.isinf(x) else float(x) for x in d])
                    row = table.query_rows[k]
                    ltaus.append(an.logit_order_tau(P, rec.Z[-1, row, dist] - rec.Z[0, row, dist]))
                # pooled over classes: concordant minus discordant pairs over all comparable pairs
                per["drop_tau"].append(float(np.nansum(np.array(taus) * np.array(pairs)) / max(1, np.sum(pairs)))
                                       if np.sum(pairs) else float("nan"))
                per["drop_pairs"].append(int(np.sum(pairs)))
                per["logit_tau"].append(float(np.min(ltaus)))
                per["common_fall"].append(an.common_tokens_fall(classes, att[0], att[-1]))
                per["final_loss"].append(float(np.mean(rec.loss[-5:])))
                per["drops"].append(drops)
            progress(1)
        out["entropy"][ratio] = np.array(ent)
    # the gradient-flow prediction of the same runs, with heavy-ball effective rates eta / (1 - momentum):
    # only meaningful from Y(0) = Z(0) = 0 (the paper's initial condition)
    if base.model == "yz" and base.init == "zero":
        scale = 1.0 / (1.0 - base.momentum)
        ode = ss.integrate_yz_flow(table, np.array(ratios) * base.lr_z * scale,
                                   np.full(len(ratios), base.lr_z * scale), logs.astype(float))
        out["entropy_ode"] = {r: an.entropy_distinct(classes, ode.attention[i]) for i, r in enumerate(ratios)}
    return out


# ---------------------------------------------------------------------------------------------------------
# The theory's regime: the ODE comparison and the snap time
# ---------------------------------------------------------------------------------------------------------
def _theory_logs(steps: int, dense_until: int) -> np.ndarray:
    """Every step up to dense_until (the snap happens there), then 40 geometric steps to the end."""
    dense = np.arange(0, min(steps, dense_until) + 1)
    sparse = np.unique(np.geomspace(max(dense_until, 1), steps, 40).astype(int)) if steps > dense_until else []
    return np.unique(np.concatenate([dense, sparse])).astype(int)


def theory_regime(cfg: ScanSnapConfig, progress) -> dict:
    """Plain SGD from zero against Lemma 1's flow at the main ratio, and the snap time at every ratio.
    progress(1) after each run."""
    base = cfg.train
    classes = make_classes(base.dataset, base.next_tokens)
    table = ss.ClassTable.from_classes(classes)
    lr_z = cfg.theory_lr_z
    ratios = list(cfg.ratios)
    theory_cfg = TrainConfig(dataset=base.dataset, next_tokens=base.next_tokens, model="yz", init="zero",
                             lr_z=lr_z, lr_ratio=base.lr_ratio, momentum=0.0, steps=cfg.theory_steps,
                             batch=base.batch, seq_len=cfg.theory_seq_len)
    logs = _theory_logs(cfg.theory_steps, min(cfg.snap_steps, cfg.theory_steps))
    snap_logs = np.arange(0, cfg.snap_steps + 1)
    t_ode = np.unique(np.concatenate([logs, snap_logs])).astype(float)
    ode = ss.integrate_yz_flow(table, np.array(ratios) * lr_z, np.full(len(ratios), lr_z), t_ode)
    main = ratios.index(base.lr_ratio)
    idx_logs = np.searchsorted(t_ode, logs)
    idx_snap = np.searchsorted(t_ode, snap_logs)
    ode_att = ode.attention[main][idx_logs]
    distinct = [list(classes.distinct_tokens(k)) for k in range(classes.n_classes)]

    def distinct_error(att):  # max over classes and distinct tokens of |c - c_ode| / c_ode, per logged step
        return np.max([np.max(np.abs(att[:, k, d] - ode_att[:, k, d]) / ode_att[:, k, d], axis=1)
                       for k, d in enumerate(distinct)], axis=0)

    seeds = cfg.seeds[:cfg.theory_seeds]
    errors, atts = [], []
    for seed in seeds:
        rec = train(replace(theory_cfg, seed=seed), logs, device=cfg.device)
        att = ss.attention_from_logits(table, rec.Z)
        errors.append(distinct_error(att))
        atts.append(att)
        progress(1)
    movement = np.max([np.max(np.abs(ode_att[-1, k, d] - ode_att[0, k, d]) / ode_att[0, k, d])
                       for k, d in enumerate(distinct)])
    # snap time: peak of ||Y (e_n - alpha_n)|| against t0' = K ln M / eta_Y, for every ratio
    snap = {"ratio": [], "eta_Y": [], "measured": [], "ode": [], "t0_prime": [], "t0": [], "gamma_peak": []}
    g_meas, g_ode = {}, {}
    for i, ratio in enumerate(ratios):
        rec = train(replace(theory_cfg, lr_ratio=ratio, steps=cfg.snap_steps, seed=seeds[0]), snap_logs,
                    device=cfg.device)
        gm = ss.backprop_norms(table, rec.Y, rec.Z).mean(axis=-1)
        go = ss.backprop_norms(table, ode.Y[i][idx_snap], ode.Z[i][idx_snap]).mean(axis=-1)
        g_meas[ratio], g_ode[ratio] = gm, go
        eta_Y = ratio * lr_z
        pred = th.predicted_snap_times(classes.n_classes, classes.n_vocab, eta_Y)
        gamma = ss.speed_coefficient(snap_logs[1:].astype(float), classes.n_vocab, classes.n_classes, eta_Y)
        snap["ratio"].append(ratio)
        snap["eta_Y"].append(eta_Y)
        snap["measured"].append(an.peak_time(snap_logs[1:], gm[1:]))
        snap["ode"].append(an.peak_time(snap_logs[1:], go[1:]))
        snap["t0_prime"].append(pred["t0_prime"])
        snap["t0"].append(pred["t0"])
        snap["gamma_peak"].append(an.peak_time(snap_logs[1:], gamma))
        progress(1)
    x = np.log(snap["eta_Y"])
    fit = np.polyfit(x, np.log(snap["measured"]), 1, cov=len(x) > 2)
    slope, slope_se = (fit[0][0], float(np.sqrt(fit[1][0, 0]))) if len(x) > 2 else (fit[0], float("nan"))
    return {"logs": logs, "errors": np.array(errors), "attention": np.array(atts), "ode_attention": ode_att,
            "movement": float(movement), "seeds": list(seeds), "snap": snap, "snap_logs": snap_logs,
            "g_meas": g_meas, "g_ode": g_ode, "slope": float(slope), "slope_se": slope_se,
            "lr_z": lr_z, "ratios": ratios, "ode_steps": ode.solution.steps.tolist()}


# ---------------------------------------------------------------------------------------------------------
# What the record keeps, and the verdicts
# ---------------------------------------------------------------------------------------------------------
def metrics(cfg: ScanSnapConfig, A: dict, T: dict) -> dict:
    """The numbers of both regimes that the JSON record keeps (A: authors_regime, T: theory_regime)."""
    main_final = A["entropy"][cfg.train.lr_ratio][:, -1]
    return {
        "final_entropy_distinct": float(main_final.mean()),
        "final_entropy_distinct_sem": an.sem(main_final),
        "final_entropy_distinct_by_ratio": {r: {"mean": float(e[:, -1].mean()), "sem": an.sem(e[:, -1])}
                                            for r, e in A["entropy"].items()},
        "entropy_vs_step": {"steps": A["steps"], "by_ratio": {r: e.mean(0) for r, e in A["entropy"].items()},
                            "ode_by_ratio": A.get("entropy_ode")},
        "kendall_tau_drop_order": A["main"]["drop_tau"],
        "drop_times_per_seed_class": A["main"]["drops"],
        "kendall_tau_logit_change": A["main"]["logit_tau"],
        "common_tokens_fall": A["main"]["common_fall"],
        "final_loss": A["main"]["final_loss"],
        "ode_comparison": {"steps": T["logs"], "max_rel_error_per_seed": T["errors"],
                           "max_rel_error": float(np.max(T["errors"])), "attention_movement": T["movement"],
                           "seeds": T["seeds"], "lr_z": T["lr_z"], "lr_y": T["lr_z"] * cfg.train.lr_ratio,
                           "ode_steps_per_ratio": T["ode_steps"]},
        "snap": {**T["snap"], "exponent": T["slope"], "exponent_se": T["slope_se"]},
    }


def verdicts(cfg: ScanSnapConfig, A: dict, T: dict) -> list[Verdict]:
    """One row per prediction of both regimes (A: authors_regime, T: theory_regime)."""
    rows = []
    err = float(np.max(T["errors"]))
    rows.append(Verdict.check(
        f"Y/Z model: c_n on distinct tokens, torch vs Lemma 1 ODE, max rel. error over {len(T['logs'])} logged "
        f"steps (plain SGD, eta_Z={T['lr_z']}, ratio {cfg.train.lr_ratio}, T={cfg.theory_seq_len}, "
        f"{len(T['seeds'])} seeds; attention moved {100 * T['movement']:.0f}%)",
        "0", f"{err:.4f}", f"<= {ODE_ERROR_BAR:.2f} (chosen bar: finite T and batch leave a few %, far below the "
                           "attention's own movement)", err <= ODE_ERROR_BAR))
    m = A["main"]
    taus = np.array(m["drop_tau"], dtype=float)
    ranked = taus[np.isfinite(taus)]  # tau is nan in a seed where no distinct token dropped
    rows.append(Verdict.check(
        f"{cfg.train.model} model: drop order of distinct tokens vs c_l(0) ~ P(l|n), Kendall tau (pooled over "
        f"classes; {len(taus)} seeds, {int(np.sum(m['drop_pairs']))} comparable pairs)", "1",
        f"min {ranked.min():.3f}, mean {ranked.mean():.3f}" if ranked.size else "no token dropped",
        "= 1 in every seed", bool(np.all(taus == 1.0))))
    lt = np.array(m["logit_tau"])
    rows.append(Verdict.check("order of z_ml(t)-z_ml(0) over distinct tokens vs P(l|n), Kendall tau (Eqn. 98)",
                              "1", f"min {lt.min():.3f}, mean {lt.mean():.3f}", "= 1 in every seed",
                              bool(np.all(lt > 1 - 1e-9))))
    rows.append(Verdict.check("every common token's attention falls (Theorem 2b)", "all seeds",
                              f"{int(np.sum(m['common_fall']))}/{len(m['common_fall'])} seeds", "all",
                              bool(all(m["common_fall"]))))
    ratios = A["ratios"]
    lo, hi = ratios[0], ratios[-1]
    e_lo, e_hi = A["entropy"][lo][:, -1], A["entropy"][hi][:, -1]
    diff = float(e_hi.mean() - e_lo.mean())
    se = float(np.hypot(an.sem(e_lo), an.sem(e_hi)))
    rows.append(Verdict.check(
        f"final entropy rises with eta_Y/eta_Z: H(ratio {hi:g}) - H(ratio {lo:g}) (Fig. 4, Thm. 4c)", "> 0",
        f"{diff:.4f} +- {se:.4f}", "> 2 s.e.m. (seed-to-seed)", diff > 2 * se))
    if "entropy_ode" in A:
        for r in ratios:
            meas, pred = A["entropy"][r][:, -1], A["entropy_ode"][r][-1]
            rows.append(Verdict.check(
                f"final entropy, ratio {r:g}: torch (momentum {cfg.train.momentum}) vs ODE at eta/(1-momentum)",
                f"{pred:.4f}", f"{meas.mean():.4f} +- {an.sem(meas):.4f}", "info (outside the theory's regime)",
                None))
    s = T["snap"]
    for r, eY, meas, ode, t0p in zip(s["ratio"], s["eta_Y"], s["measured"], s["ode"], s["t0_prime"]):
        rows.append(Verdict.check(
            f"Y/Z model snap: peak of ||Y(e_n-alpha_n)||, ratio {r:g} (eta_Y={eY:g}); ODE peak {ode:.2f}",
            f"t0'=K lnM/eta_Y={t0p:.2f}", f"{meas:.2f} ({meas / t0p:.3f} t0')", "info", None))
    ode_slope = float(np.polyfit(np.log(s["eta_Y"]), np.log(s["ode"]), 1)[0])
    rows.append(Verdict.check("snap time exponent of the Lemma 1 gradient flow (no SGD discretisation), same ratios",
                              "p = -1", f"{ode_slope:.3f}", "info", None))
    fitted = np.isfinite(T["slope_se"])  # a standard error needs at least 3 ratios
    tol = 3 * T["slope_se"] if fitted else float("nan")
    rows.append(Verdict.check(
        f"snap time ~ eta_Y^p over ratios {', '.join(f'{r:g}' for r in s['ratio'])} (Theorem 4a)", "p = -1",
        f"{T['slope']:.3f} +- {T['slope_se']:.3f}",
        f"3 s.e. of the fit = {tol:.3f}" if fitted else "info (< 3 ratios: no s.e.)",
        (abs(T["slope"] + 1) <= tol) if fitted else None))
    return rows
