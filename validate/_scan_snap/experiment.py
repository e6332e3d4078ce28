"""The experiment of `python -m validate.scan_snap`: its configuration, its two regimes, their metrics and verdicts.

- The authors' regime (`authors_regime`): Syn-Small with SGD momentum 0.9, batch 128, T = 128, 100 steps and
  Y(0) = Z(0) = 0 by default (Tian et al. 2023, Sec. 8, Fig. 4): attention maps, the entropy of c_n on distinct
  tokens for several eta_Y/eta_Z, the order in which distinct tokens drop against P(l|n) (Theorem 3), common
  tokens falling (Theorem 2b).
- The theory's regime (`theory_regime`): plain SGD from zero, a small eta_Z and long sequences, where Lemma 1's
  gradient flow (sim.scan_snap.integrate_yz_flow) should describe the run; and the snap time, the peak of the
  back-propagated signal ||Y (e_n - alpha_n)|| (which tracks gamma(t), Theorem 1), against
  t0' = K ln M / eta_Y (Theorem 4a).

Divergence (DIVERGENCE_POLICY): a training run whose loss, weights or measurements (attention, entropy,
back-propagated signal) become NaN or inf is recorded as diverged with its step, in the record's "diverged"
list, and EXCLUDED from every number and verdict; the "diverged runs" verdict counts them and FAILs when any
diverged (the gradient flow the theory describes never blows up), and a verdict whose inputs all diverged FAILs
and says so. A prediction that cannot be computed, a setting of Lemma 1's flow the integrator cannot finish
(step-size underflow, too many steps, NaN) or a rate the theory's formulas refuse, is recorded in
"prediction_failures" with its reason; what it would have predicted is missing (the verdict that needs the main
ratio's flow FAILs, the informational rows say "integration failed" or "no t0'"), and the run finishes.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace

import numpy as np

from sim import scan_snap as ss
from sim.machine import physical_memory
from theory import scan_snap as th
from validate._common import checks
from validate._common.reporting import Verdict
from validate._scan_snap import analysis as an
from validate._scan_snap.models import MAX_STEPS, TrainConfig, learning_rate, make_classes, train, vocabulary

#: the relative error the torch Y/Z model may have against Lemma 1's flow: a chosen bar. The flow is the limit of
#: infinite T, batch and continuous time; at T = 128-256 and batch 128 the runs stay within a few per cent of it,
#: while the attention itself moves by tens of per cent (the verdict row reports how much), so a flow that did not
#: describe the run would miss by far more than 10%.
ODE_ERROR_BAR = 0.10

#: the Dormand-Prince tolerances sim.scan_snap.integrate_yz_flow runs at (its defaults), recorded with the results
INTEGRATOR = {"rtol": 1e-7, "atol": 1e-9, "method": "Dormand-Prince 5(4), sim.scan_snap.dopri5"}

DIVERGENCE_POLICY = ("a run whose loss, weights or measurements become NaN/inf is recorded (diverged: regime, "
                     "ratio, seed, step) and excluded from every metric and verdict; the 'diverged runs' verdict "
                     "counts them (FAIL when any); a verdict whose inputs all diverged FAILs; a flow the integrator "
                     "cannot finish, or a rate the theory refuses, is recorded in prediction_failures and its "
                     "predictions are missing")

#: a peak of the back-propagated signal needs at least three logged steps (snap_logs[1:]) around it
MIN_SNAP_STEPS = 3
#: at most this fraction of the machine's memory for the trajectories a run keeps (the Lemma 1 flows dominate)
MEMORY_FRACTION = 0.5


@dataclass(frozen=True)
class ScanSnapConfig:
    """Everything a run depends on.

    train: the authors'-regime run at the main ratio train.lr_ratio (its seed is replaced by each of `seeds`);
    ratios: distinct eta_Y/eta_Z values of the entropy and snap-time measurements; the main ratio is always among
    them (it is added if missing; the values are kept sorted);
    theory_*: plain-SGD runs from zero at eta_Z = theory_lr_z, theory_steps long, with sequences of
    theory_seq_len tokens, on the first theory_seeds of `seeds`; snap_steps: length of the snap-time runs.
    Numbers may be NumPy scalars; every field is checked here (ValueError naming it), so a config that constructs
    runs to the end."""

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
        check = functools.partial(checks.field, self)  # check(name, rule, ...): self.name checked and stored
        if not isinstance(self.train, TrainConfig):
            raise ValueError(f"train={self.train!r}: must be a TrainConfig")
        check("seeds", checks.seeds)
        ratios = checks.sequence("ratios", self.ratios, lambda name, v: checks.real(name, v, 0.0, above=True))
        object.__setattr__(self, "ratios", tuple(sorted(set(ratios) | {self.train.lr_ratio})))
        check("theory_lr_z", learning_rate)
        check("theory_steps", checks.integer, 1, MAX_STEPS)
        check("theory_seq_len", checks.integer, 2)
        check("theory_seeds", checks.integer, 1, len(self.seeds),
              why=f" (how many of the {len(self.seeds)} seeds the theory regime uses)")
        check("snap_steps", checks.integer, MIN_SNAP_STEPS, MAX_STEPS, why=" (a peak needs three logged steps)")
        check("device", checks.device)
        for ratio in self.ratios:  # every run the experiment will train is a valid TrainConfig
            for name, build in (("ratios", lambda: replace(self.train, lr_ratio=ratio)),
                                ("theory_lr_z, theory_seq_len (the theory regime)",
                                 lambda: self.theory_train(ratio, self.theory_steps))):
                try:
                    build()
                except ValueError as error:
                    raise ValueError(f"{name}, ratio {ratio:g}: {error}") from None
        need, have = self.memory_bytes(), physical_memory()
        if have is not None and need > MEMORY_FRACTION * have:
            raise ValueError(f"snap_steps={self.snap_steps}, next_tokens={self.train.next_tokens}, "
                             f"{len(self.ratios)} ratios: the flows and logs need ~{need / 2 ** 30:.1f} GiB, more "
                             f"than half of this machine's {have / 2 ** 30:.1f} GiB; lower one of them")

    def theory_train(self, ratio: float, steps: int) -> TrainConfig:
        """A theory-regime run (plain SGD from zero, Y/Z model) at `ratio` for `steps` steps."""
        base = self.train
        return TrainConfig(dataset=base.dataset, next_tokens=base.next_tokens, model="yz", init="zero",
                           lr_z=self.theory_lr_z, lr_ratio=ratio, momentum=0.0, steps=steps, batch=base.batch,
                           seq_len=self.theory_seq_len)

    def memory_bytes(self) -> int:
        """About the most memory the run holds: the Lemma 1 flows of every ratio at every logged time of both
        regimes (float64 states of M^2 + n_q M values), a copy of one flow's snap-time states, and one snap run's
        logs (twice: the list and the array)."""
        M, n_q = vocabulary(self.train.dataset, self.train.next_tokens)
        state = 8 * (M * M + n_q * M)
        authors_times = len(_logged_steps(self.train.steps))
        sparse = _sparse_logs(self.theory_steps, min(self.snap_steps, self.theory_steps))
        theory_times = self.snap_steps + 1 + int(np.sum(sparse > self.snap_steps))  # the theory regime's t_ode
        return state * (len(self.ratios) * (theory_times + authors_times) + 3 * (self.snap_steps + 1))

    def progress_total(self) -> int:
        """Training runs of a whole experiment: every (ratio, seed) of the authors' regime, the theory-regime
        seeds, and one snap-time run per ratio."""
        return len(self.ratios) * len(self.seeds) + self.theory_seeds + len(self.ratios)


# ---------------------------------------------------------------------------------------------------------
# Training runs and flows that may fail: recorded, never raised
# ---------------------------------------------------------------------------------------------------------
def _measured_run(cfg: TrainConfig, logs, device, table, classes, where: dict, diverged: list):
    """Train one run and measure its attention c_n and entropy on distinct tokens. A run that blows up (NaN/inf
    in loss or weights, or in what is measured on them) is appended to `diverged` (where, step, cause) and gives
    None; otherwise (record, attention, entropy)."""
    rec = train(cfg, logs, device=device)
    step, cause = rec.diverged_step, "loss or weights"
    if step is None:
        att = ss.attention_from_logits(table, rec.Z)
        ent = an.entropy_distinct(classes, att)
        step, cause = an.first_nonfinite_step(rec.steps, rec.Y, att, ent), "measurement"
    if step is not None:
        diverged.append({**where, "step": step, "cause": cause})
        return None
    return rec, att, ent


def _failure_reason(error: Exception) -> str:
    text = str(error)
    for status, reason in (("status 1", "too many steps"), ("status 2", "step-size underflow")):
        if status in text:
            return f"integrator stopped early ({reason})"
    return text


def flows(table: ss.ClassTable, eta_Y, eta_Z, t) -> list:
    """Lemma 1's flow for each setting (eta_Y[i], eta_Z[i]) at times t: a dict (Y, Z, attention, steps) per
    setting, or a string saying why the integrator could not finish it (then the other settings still run)."""
    def unpack(ode, i):
        parts = {"Y": ode.Y[i], "Z": ode.Z[i], "attention": ode.attention[i], "steps": int(ode.solution.steps[i])}
        finite = all(np.all(np.isfinite(parts[k])) for k in ("Y", "Z", "attention"))
        return parts if finite else "the flow's state became NaN or inf"

    # (a ValueError too: a rate the sim refuses is a setting it cannot integrate, recorded like the others)
    try:  # all settings in one batched call (the usual case) ...
        ode = ss.integrate_yz_flow(table, eta_Y, eta_Z, t)
        return [unpack(ode, i) for i in range(len(eta_Y))]
    except (RuntimeError, ValueError):  # ... and one by one when one of them fails, to keep the others
        out = []
        for a, b in zip(eta_Y, eta_Z):
            try:
                out.append(unpack(ss.integrate_yz_flow(table, [a], [b], t), 0))
            except (RuntimeError, ValueError) as error:
                out.append(_failure_reason(error))
        return out


def _record_failures(results, ratios, regime: str, failures: list) -> dict:
    """{ratio: flow} of the settings that finished; the others appended to `failures`."""
    ok = {}
    for ratio, result in zip(ratios, results):
        if isinstance(result, str):
            failures.append({"regime": regime, "ratio": ratio, "reason": result})
        else:
            ok[ratio] = result
    return ok


# ---------------------------------------------------------------------------------------------------------
# The authors' regime
# ---------------------------------------------------------------------------------------------------------
def _logged_steps(steps: int) -> np.ndarray:
    """Every 2nd step up to 200 steps, about 100 logs beyond; always the last step."""
    logs = np.arange(0, steps + 1, 2 if steps <= 200 else max(1, steps // 100))
    return np.unique(np.append(logs, steps)).astype(int)


def authors_regime(cfg: ScanSnapConfig, progress) -> dict:
    """Train every (ratio, seed); entropy on distinct tokens over time, and at the main ratio the drop order,
    the logit order, the common tokens and the final loss. progress(1) after each run. Diverged runs are left
    out of every entry and listed in "diverged"."""
    base = cfg.train
    classes = make_classes(base.dataset, base.next_tokens)
    table = ss.ClassTable.from_classes(classes)
    logs = _logged_steps(base.steps)
    ratios = list(cfg.ratios)
    out = {"steps": logs, "ratios": ratios, "entropy": {}, "entropy_seeds": {}, "attention_first_seed": {},
           "diverged": [], "runs": len(ratios) * len(cfg.seeds), "prediction_failures": []}
    main = out["main"] = {"seeds": [], "drop_tau": [], "drop_pairs": [], "logit_tau": [], "common_fall": [],
                          "final_loss": [], "drops": []}
    for ratio in ratios:
        ent, used = [], []
        for seed in cfg.seeds:
            run = _measured_run(replace(base, lr_ratio=ratio, seed=seed), logs, cfg.device, table, classes,
                                {"regime": "authors", "ratio": ratio, "seed": seed}, out["diverged"])
            progress(1)
            if run is None:
                continue
            rec, att, e = run
            ent.append(e)
            used.append(seed)
            if ratio not in out["attention_first_seed"]:
                out["attention_first_seed"][ratio] = (seed, att)
            if ratio == base.lr_ratio:
                _main_ratio_measurements(main, classes, table, logs, rec, att)
                main["seeds"].append(seed)
        out["entropy"][ratio] = np.array(ent).reshape(len(ent), len(logs))
        out["entropy_seeds"][ratio] = used
    # the gradient-flow prediction of the same runs, with heavy-ball effective rates eta / (1 - momentum):
    # only meaningful from Y(0) = Z(0) = 0 (the paper's initial condition)
    if base.model == "yz" and base.init == "zero":
        scale = 1.0 / (1.0 - base.momentum)
        results = flows(table, np.array(ratios) * base.lr_z * scale, np.full(len(ratios), base.lr_z * scale),
                        logs.astype(float))
        ok = _record_failures(results, ratios, "authors (momentum-scaled flow)", out["prediction_failures"])
        out["entropy_ode"] = {r: an.entropy_distinct(classes, flow["attention"]) for r, flow in ok.items()}
    return out


def _main_ratio_measurements(main: dict, classes, table, logs, rec, att) -> None:
    """Drop order, logit order, common tokens and final loss of one finite run at the main ratio."""
    taus, pairs, ltaus, drops = [], [], [], []
    for k in range(classes.n_classes):
        dist = list(classes.distinct_tokens(k))
        # rank by the initial attention c_l(0) ~ P(l|n) e^{z_ml(0)}: Theorem 3's r(0) ("initial value as prior");
        # with Z(0) = 0 this is exactly the order of P(l|n)
        P = att[0, k, dist]
        d = an.drop_times(logs, att[:, k, dist])
        tau, npairs = an.drop_order_tau(P, d)
        taus.append(tau)
        pairs.append(npairs)
        drops.append([None if np.isinf(x) else float(x) for x in d])
        row = table.query_rows[k]
        ltaus.append(an.logit_order_tau(P, rec.Z[-1, row, dist] - rec.Z[0, row, dist]))
    # pooled over classes: concordant minus discordant pairs over all comparable pairs
    main["drop_tau"].append(float(np.nansum(np.array(taus) * np.array(pairs)) / np.sum(pairs))
                            if np.sum(pairs) else float("nan"))
    main["drop_pairs"].append(int(np.sum(pairs)))
    main["logit_tau"].append(float(np.min(ltaus)))
    main["common_fall"].append(an.common_tokens_fall(classes, att[0], att[-1]))
    main["final_loss"].append(float(np.mean(rec.loss[-5:])))
    main["drops"].append(drops)


# ---------------------------------------------------------------------------------------------------------
# The theory's regime: the ODE comparison and the snap time
# ---------------------------------------------------------------------------------------------------------
def _sparse_logs(steps: int, dense_until: int) -> np.ndarray:
    """40 geometric steps from dense_until to the end (none when the run ends there)."""
    if steps <= dense_until:
        return np.array([], dtype=int)
    return np.unique(np.geomspace(max(dense_until, 1), steps, 40).astype(int))


def _theory_logs(steps: int, dense_until: int) -> np.ndarray:
    """Every step up to dense_until (the snap happens there), then 40 geometric steps to the end."""
    dense = np.arange(0, min(steps, dense_until) + 1)
    return np.unique(np.concatenate([dense, _sparse_logs(steps, dense_until)])).astype(int)


def theory_regime(cfg: ScanSnapConfig, progress) -> dict:
    """Plain SGD from zero against Lemma 1's flow at the main ratio, and the snap time at every ratio.
    progress(1) after each run. Diverged runs are left out and listed in "diverged"; flows the integrator could
    not finish and rates the theory refuses in "prediction_failures"."""
    base = cfg.train
    classes = make_classes(base.dataset, base.next_tokens)
    table = ss.ClassTable.from_classes(classes)
    lr_z = cfg.theory_lr_z
    ratios = list(cfg.ratios)
    logs = _theory_logs(cfg.theory_steps, min(cfg.snap_steps, cfg.theory_steps))
    snap_logs = np.arange(0, cfg.snap_steps + 1)
    t_ode = np.unique(np.concatenate([logs, snap_logs])).astype(float)
    failures, diverged = [], []
    ode = _record_failures(flows(table, np.array(ratios) * lr_z, np.full(len(ratios), lr_z), t_ode), ratios,
                           "theory", failures)
    idx_logs = np.searchsorted(t_ode, logs)
    idx_snap = np.searchsorted(t_ode, snap_logs)
    main_flow = ode.get(base.lr_ratio)
    ode_att = main_flow["attention"][idx_logs] if main_flow is not None else None
    distinct = [list(classes.distinct_tokens(k)) for k in range(classes.n_classes)]

    def distinct_error(att):  # max over classes and distinct tokens of |c - c_ode| / c_ode, per logged step
        with np.errstate(divide="ignore", invalid="ignore"):  # a flow's attention underflowed to 0: inf, judged
            return np.max([np.max(np.abs(att[:, k, d] - ode_att[:, k, d]) / ode_att[:, k, d], axis=1)
                           for k, d in enumerate(distinct)], axis=0)

    seeds = cfg.seeds[:cfg.theory_seeds]
    errors, atts, used = [], [], []
    for seed in seeds:
        run = _measured_run(replace(cfg.theory_train(base.lr_ratio, cfg.theory_steps), seed=seed), logs,
                            cfg.device, table, classes, {"regime": "theory", "ratio": base.lr_ratio, "seed": seed},
                            diverged)
        progress(1)
        if run is not None:
            atts.append(run[1])
            used.append(seed)
            if ode_att is not None:
                errors.append(distinct_error(run[1]))
    movement = (float(np.max([np.max(np.abs(ode_att[-1, k, d] - ode_att[0, k, d]) / ode_att[0, k, d])
                              for k, d in enumerate(distinct)])) if ode_att is not None else None)
    # snap time: peak of ||Y (e_n - alpha_n)|| against t0' = K ln M / eta_Y, for every ratio (on the first seed)
    snap = {"ratio": [], "eta_Y": [], "measured": [], "ode": [], "t0_prime": [], "t0": [], "gamma_peak": []}
    g_meas, g_ode = {}, {}
    for ratio in ratios:
        eta_Y = ratio * lr_z
        pred = _predicted_snap(classes, snap_logs, eta_Y)
        if "reason" in pred:
            failures.append({"regime": "theory (t0' and gamma(t))", "ratio": ratio, "reason": pred["reason"]})
        run = _measured_run(replace(cfg.theory_train(ratio, cfg.snap_steps), seed=seeds[0]), snap_logs, cfg.device,
                            table, classes, {"regime": "snap", "ratio": ratio, "seed": seeds[0]}, diverged)
        progress(1)
        measured = None
        if run is not None:
            gm = ss.backprop_norms(table, run[0].Y, run[0].Z).mean(axis=-1)
            step = an.first_nonfinite_step(snap_logs, gm)
            if step is None:
                g_meas[ratio] = gm
                measured = an.peak_time(snap_logs[1:], gm[1:])
            else:
                diverged.append({"regime": "snap", "ratio": ratio, "seed": seeds[0], "step": step,
                                 "cause": "measurement"})
        flow_peak = None
        if ratio in ode:
            g_ode[ratio] = ss.backprop_norms(table, ode[ratio]["Y"][idx_snap], ode[ratio]["Z"][idx_snap]).mean(-1)
            flow_peak = an.peak_time(snap_logs[1:], g_ode[ratio][1:])
        for key, value in (("ratio", ratio), ("eta_Y", eta_Y), ("measured", measured), ("ode", flow_peak),
                           ("t0_prime", pred.get("t0_prime")), ("t0", pred.get("t0")),
                           ("gamma_peak", pred.get("gamma_peak"))):
            snap[key].append(value)
    slope, slope_se = _power_law(snap["eta_Y"], snap["measured"])
    return {"logs": logs, "errors": np.array(errors).reshape(len(errors), len(logs)),
            "attention": np.array(atts), "ode_attention": ode_att, "movement": movement, "seeds": used,
            "seeds_asked": list(seeds), "snap": snap, "snap_logs": snap_logs, "g_meas": g_meas, "g_ode": g_ode,
            "slope": slope, "slope_se": slope_se, "lr_z": lr_z, "ratios": ratios,
            "ode_steps": [ode[r]["steps"] if r in ode else None for r in ratios], "diverged": diverged,
            "runs": len(seeds) + len(ratios), "prediction_failures": failures}


def _predicted_snap(classes, snap_logs, eta_Y) -> dict:
    """Theorem 4's t0' and t0 and the peak of gamma(t) (Eqn. 85) at eta_Y, or {"reason"} where the theory's
    formulas refuse that rate (outside the range they evaluate in float64): the prediction is then missing."""
    try:
        pred = th.predicted_snap_times(classes.n_classes, classes.n_vocab, eta_Y)
        gamma = ss.speed_coefficient(snap_logs[1:].astype(float), classes.n_vocab, classes.n_classes, eta_Y)
    except ValueError as error:
        return {"reason": f"no prediction at eta_Y={eta_Y:g} ({error})"}
    return {**pred, "gamma_peak": an.peak_time(snap_logs[1:], gamma)}


def _power_law(x, y) -> tuple[float | None, float | None]:
    """Exponent p of y ~ x^p by least squares in log-log over the pairs where y is known, and its standard error
    (None with fewer than 2, resp. 3, such pairs)."""
    pairs = [(a, b) for a, b in zip(x, y) if b is not None]
    if len(pairs) < 2:
        return None, None
    lx, ly = np.log([a for a, _ in pairs]), np.log([b for _, b in pairs])
    if len(pairs) < 3:
        return float(np.polyfit(lx, ly, 1)[0]), None
    fit, cov = np.polyfit(lx, ly, 1, cov=True)
    return float(fit[0]), float(np.sqrt(cov[0, 0]))


# ---------------------------------------------------------------------------------------------------------
# What the record keeps, and the verdicts
# ---------------------------------------------------------------------------------------------------------
def _mean_sem(values) -> dict:
    values = np.asarray(values, dtype=float)
    return {"mean": float(values.mean()) if values.size else None, "sem": an.sem(values) if values.size else None,
            "runs": int(values.size)}


def metrics(cfg: ScanSnapConfig, A: dict, T: dict) -> dict:
    """The numbers of both regimes that the JSON record keeps (A: authors_regime, T: theory_regime). Diverged
    runs are left out of every number (None where no run is left) and listed under "diverged"; a Kendall tau is
    None (null) in a seed where it is undefined (no token dropped; z_ml did not move), as its verdict row says."""
    main_final = _mean_sem(A["entropy"][cfg.train.lr_ratio][:, -1])
    errors = T["errors"]
    return {
        "divergence_policy": DIVERGENCE_POLICY,
        "diverged": A["diverged"] + T["diverged"],
        "diverged_count": len(A["diverged"]) + len(T["diverged"]),
        "runs": A["runs"] + T["runs"],
        "prediction_failures": A["prediction_failures"] + T["prediction_failures"],
        "final_entropy_distinct": main_final["mean"],
        "final_entropy_distinct_sem": main_final["sem"],
        "final_entropy_distinct_by_ratio": {r: _mean_sem(e[:, -1]) for r, e in A["entropy"].items()},
        "entropy_vs_step": {"steps": A["steps"],
                            "by_ratio": {r: e.mean(0) if len(e) else None for r, e in A["entropy"].items()},
                            "ode_by_ratio": A.get("entropy_ode")},
        "kendall_tau_drop_order": A["main"]["drop_tau"],
        "drop_times_per_seed_class": A["main"]["drops"],
        "kendall_tau_logit_change": A["main"]["logit_tau"],
        "common_tokens_fall": A["main"]["common_fall"],
        "final_loss": A["main"]["final_loss"],
        "main_ratio_seeds": A["main"]["seeds"],
        "ode_comparison": {"steps": T["logs"], "max_rel_error_per_seed": errors,
                           "max_rel_error": float(np.max(errors)) if errors.size else None,
                           "attention_movement": T["movement"], "seeds": T["seeds"], "lr_z": T["lr_z"],
                           "lr_y": T["lr_z"] * cfg.train.lr_ratio, "ode_steps_per_ratio": T["ode_steps"]},
        "snap": {**T["snap"], "exponent": T["slope"], "exponent_se": T["slope_se"]},
    }


def _diverged_text(runs: list) -> str:
    """'ratio 10 seeds 1, 2 (steps 4, 5)' style summary of diverged runs, grouped by regime and ratio."""
    groups = {}
    for run in runs:
        groups.setdefault((run["regime"], run["ratio"]), []).append(run)
    return "; ".join(f"{regime} ratio {ratio:g}: seed{'s' * (len(g) > 1)} {', '.join(str(r['seed']) for r in g)} "
                     f"at step{'s' * (len(g) > 1)} {', '.join(str(r['step']) for r in g)}"
                     for (regime, ratio), g in groups.items())


def _all_diverged(runs: list) -> str:
    return (f"no finite run: all {len(runs)} diverged (NaN/inf from step {min(r['step'] for r in runs)})"
            if runs else "no run")


def _excluded(runs: list) -> str:
    return f"; {len(runs)} diverged run{'s' * (len(runs) > 1)} excluded" if runs else ""


def verdicts(cfg: ScanSnapConfig, A: dict, T: dict) -> list[Verdict]:
    """One row per prediction of both regimes (A: authors_regime, T: theory_regime), judged on the runs that
    stayed finite (see DIVERGENCE_POLICY)."""
    diverged = A["diverged"] + T["diverged"]
    failures = A["prediction_failures"] + T["prediction_failures"]
    runs_total = A["runs"] + T["runs"]
    rows = [Verdict.check(
        "training runs that diverged (NaN or inf in loss, weights or measurements); each is excluded from every "
        "row below", "0", f"{len(diverged)} of {runs_total}" + (f": {_diverged_text(diverged)}" if diverged else ""),
        "0 (the gradient flow never blows up)", not diverged)]
    # the flows of both regimes (the authors' only from zero with the Y/Z model) and t0' per ratio
    n_predictions = len(cfg.ratios) * (2 + (cfg.train.model == "yz" and cfg.train.init == "zero"))
    rows.append(Verdict.check(
        "predictions that could not be computed (a Lemma 1 flow the integrator could not finish, a rate the "
        "theory's formulas refuse); the rows below that need them say so", "0",
        f"{len(failures)} of {n_predictions}" + "".join(f"; {f['regime']} ratio {f['ratio']:g}: {f['reason']}"
                                                        for f in failures), "info", None))
    rows.append(_ode_comparison_row(cfg, T))
    rows += _main_ratio_rows(cfg, A)
    rows.append(_entropy_rises_row(A))
    if "entropy_ode" in A:
        for r in A["ratios"]:
            meas = A["entropy"][r][:, -1]
            lost = [d for d in A["diverged"] if d["ratio"] == r]
            pred = f"{A['entropy_ode'][r][-1]:.4f}" if r in A["entropy_ode"] else "integration failed"
            rows.append(Verdict.check(
                f"final entropy, ratio {r:g}: torch (momentum {cfg.train.momentum}) vs ODE at eta/(1-momentum)",
                pred, (f"{meas.mean():.4f} +- {an.sem(meas):.4f}{_excluded(lost)}" if meas.size else
                       _all_diverged(lost)), "info (outside the theory's regime)", None))
    rows += _snap_rows(T)
    return rows


def _ode_comparison_row(cfg: ScanSnapConfig, T: dict) -> Verdict:
    lost = [d for d in T["diverged"] if d["regime"] == "theory"]
    quantity = (f"Y/Z model: c_n on distinct tokens, torch vs Lemma 1 ODE, max rel. error over {len(T['logs'])} "
                f"logged steps (plain SGD, eta_Z={T['lr_z']}, ratio {cfg.train.lr_ratio}, T={cfg.theory_seq_len}, "
                f"{len(T['seeds_asked'])} seeds")
    tolerance = (f"<= {ODE_ERROR_BAR:.2f} (chosen bar: finite T and batch leave a few %, far below the attention's "
                 "own movement)")
    if T["ode_attention"] is None:
        failure = next(f["reason"] for f in T["prediction_failures"]
                       if f["ratio"] == cfg.train.lr_ratio and f["regime"] == "theory")
        return Verdict.check(quantity + ")", "0", f"no prediction: the flow's integration failed ({failure})",
                             tolerance, False)
    quantity += f"; attention moved {100 * T['movement']:.0f}%)"
    if not T["errors"].size:
        return Verdict.check(quantity, "0", _all_diverged(lost), tolerance, False)
    err = float(np.max(T["errors"]))
    if not np.isfinite(err):
        return Verdict.check(quantity, "0", "undefined: the flow's attention on a distinct token underflowed to 0",
                             tolerance, False)
    return Verdict.check(quantity, "0", f"{err:.4f}{_excluded(lost)}", tolerance, err <= ODE_ERROR_BAR)


def _main_ratio_rows(cfg: ScanSnapConfig, A: dict) -> list[Verdict]:
    """Drop order, logit order and common tokens at the main ratio, over its finite seeds."""
    m = A["main"]
    lost = [d for d in A["diverged"] if d["ratio"] == cfg.train.lr_ratio]
    note = _excluded(lost)
    rows = []
    taus = np.array(m["drop_tau"], dtype=float)
    ranked = taus[np.isfinite(taus)]  # tau is nan in a seed where no distinct token dropped
    quantity = (f"{cfg.train.model} model: drop order of distinct tokens vs c_l(0) ~ P(l|n), Kendall tau (pooled "
                f"over classes; {len(taus)} seeds, {int(np.sum(m['drop_pairs']))} comparable pairs)")
    if not taus.size:
        rows.append(Verdict.check(quantity, "1", _all_diverged(lost), "= 1 in every seed", False))
    else:
        measured = (f"min {ranked.min():.3f}, mean {ranked.mean():.3f}" + (
            f"; no token dropped in {taus.size - ranked.size} seeds" if ranked.size < taus.size else "")
            if ranked.size else "no token dropped in any seed")
        rows.append(Verdict.check(quantity, "1", measured + note, "= 1 in every seed", bool(np.all(taus == 1.0))))
    lt = np.array(m["logit_tau"], dtype=float)
    quantity = "order of z_ml(t)-z_ml(0) over distinct tokens vs P(l|n), Kendall tau (Eqn. 98)"
    if not lt.size:
        rows.append(Verdict.check(quantity, "1", _all_diverged(lost), "= 1 in every seed", False))
    else:
        known = lt[np.isfinite(lt)]  # undefined where z did not move on a class's distinct tokens (a tie)
        measured = (f"min {known.min():.3f}, mean {known.mean():.3f}" + (
            f"; undefined in {lt.size - known.size} seeds (z_ml tied)" if known.size < lt.size else "")
            if known.size else "undefined in every seed (z_ml tied)")
        rows.append(Verdict.check(quantity, "1", measured + note, "= 1 in every seed", bool(np.all(lt > 1 - 1e-9))))
    quantity = "every common token's attention falls (Theorem 2b)"
    fall = m["common_fall"]
    rows.append(Verdict.check(quantity, "all seeds", f"{int(np.sum(fall))}/{len(fall)} seeds{note}" if fall else
                              _all_diverged(lost), "all", bool(fall) and all(fall)))
    return rows


def _entropy_rises_row(A: dict) -> Verdict:
    """H(largest ratio) - H(smallest ratio) at the end, over the ratios with a finite run."""
    finite = [r for r in A["ratios"] if len(A["entropy"][r])]
    tolerance = "> 2 s.e.m. (seed-to-seed)"
    if len(finite) < 2:
        quantity = "final entropy rises with eta_Y/eta_Z (Fig. 4, Thm. 4c)"
        if len(A["ratios"]) < 2:
            return Verdict.check(quantity, "> 0", "one ratio: nothing to compare", "info (needs 2 ratios)", None)
        if not finite:
            return Verdict.check(quantity, "> 0", _all_diverged(A["diverged"]), tolerance, False)
        return Verdict.check(quantity, "> 0", f"only ratio {finite[0]:g} has a finite run{_excluded(A['diverged'])}",
                             "info (needs 2 ratios)", None)
    lo, hi = finite[0], finite[-1]
    e_lo, e_hi = A["entropy"][lo][:, -1], A["entropy"][hi][:, -1]
    diff = float(e_hi.mean() - e_lo.mean())
    se = float(np.hypot(an.sem(e_lo), an.sem(e_hi)))
    return Verdict.check(f"final entropy rises with eta_Y/eta_Z: H(ratio {hi:g}) - H(ratio {lo:g}) (Fig. 4, Thm. 4c)",
                         "> 0", f"{diff:.4f} +- {se:.4f}{_excluded(A['diverged'])}", tolerance, diff > 2 * se)


def _snap_rows(T: dict) -> list[Verdict]:
    """The snap time per ratio (informational), the flow's exponent, and the fitted exponent (judged)."""
    rows = []
    s = T["snap"]
    lost = [d for d in T["diverged"] if d["regime"] == "snap"]
    for r, eY, meas, ode, t0p in zip(s["ratio"], s["eta_Y"], s["measured"], s["ode"], s["t0_prime"]):
        flow = f"ODE peak {ode:.2f}" if ode is not None else "ODE integration failed"
        run = next((d for d in lost if d["ratio"] == r), None)
        measured = "" if meas is None else f"{meas:.2f}" + (f" ({meas / t0p:.3g} t0')" if t0p is not None else "")
        rows.append(Verdict.check(
            f"Y/Z model snap: peak of ||Y(e_n-alpha_n)||, ratio {r:g} (eta_Y={eY:g}); {flow}",
            f"t0'=K lnM/eta_Y={t0p:.3g}" if t0p is not None else "no t0' (rate outside the theory's range)",
            measured or f"diverged at step {run['step']}", "info", None))
    ode_slope, _ = _power_law(s["eta_Y"], s["ode"])
    rows.append(Verdict.check("snap time exponent of the Lemma 1 gradient flow (no SGD discretisation), same ratios",
                              "p = -1", f"{ode_slope:.3f}" if ode_slope is not None else
                              "needs 2 ratios whose flow finished", "info", None))
    quantity = f"snap time ~ eta_Y^p over ratios {', '.join(f'{r:g}' for r in s['ratio'])} (Theorem 4a)"
    if T["slope"] is None:
        if lost and len(lost) == len(s["ratio"]):
            return rows + [Verdict.check(quantity, "p = -1", _all_diverged(lost), "3 s.e. of the fit", False)]
        return rows + [Verdict.check(quantity, "p = -1", f"needs 2 ratios with a finite run{_excluded(lost)}",
                                     "info (< 2 ratios: no fit)", None)]
    if T["slope_se"] is None:
        return rows + [Verdict.check(quantity, "p = -1", f"{T['slope']:.3f}{_excluded(lost)}",
                                     "info (< 3 ratios: no s.e.)", None)]
    tol = 3 * T["slope_se"]
    return rows + [Verdict.check(quantity, "p = -1", f"{T['slope']:.3f} +- {T['slope_se']:.3f}{_excluded(lost)}",
                                 f"3 s.e. of the fit = {tol:.3f}", abs(T["slope"] + 1) <= tol)]
