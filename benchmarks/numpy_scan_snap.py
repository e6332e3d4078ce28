"""The scan-and-snap right-hand sides a user without sim/ would hand to solve_ivp: theory/scan_snap.py's
SymPy formulas, lambdified to NumPy (to `math` for the 4-state system, the faster choice for scalars), with
the sums over tokens and classes written as array operations.

They are the user's baseline in benchmarks/bench_scan_snap.py, so they must solve the same equations as
sim.scan_snap: tests/test_scan_snap_sim.py checks each against the compiled right-hand side. The formulas
come from theory (the same (name, expression, arguments) list sim compiles); only the array bookkeeping is
written here.
"""
from __future__ import annotations

import functools

import numpy as np
import sympy as sp

from sim import scan_snap as ss


@functools.lru_cache(maxsize=None)  # formula_specs runs the SymPy derivations (seconds); once per module
def _lambdified(module: str = "numpy") -> dict:
    return {name: sp.lambdify(args, expr, module) for name, expr, args in ss.formula_specs()}


def reduced_rhs(params):
    """f(t, y) of the Sec. 6 reduced system for one row of ss.reduced_params."""
    fs = _lambdified("math")
    parts = [fs[f"reduced_rhs_{i}"] for i in range(4)]
    p = tuple(float(x) for x in params)

    def f(t, y):
        state = (y[0], y[1], y[2], y[3])
        return np.array([part(*state, *p) for part in parts])

    return f


def _class_arrays(table: ss.ClassTable):
    P = table.probabilities
    return P, P > 0, table.query_rows, np.eye(table.n_vocab)[table.next_tokens]


def _decoder_inputs(fs, P, on, z):
    """f_n = c_n / ||c_n|| for every class at once, c_n by Eqn. 5 (z shifted by its max on the support)."""
    z = z - np.where(on, z, -np.inf).max(axis=1, keepdims=True)
    score = np.where(on, fs["attention_score"](P, z), 0.0)
    c = score / score.sum(axis=1, keepdims=True)
    return fs["decoder_input"](c, np.linalg.norm(c, axis=1, keepdims=True))


def yz_flow_rhs(table: ss.ClassTable, eta_Y: float, eta_Z: float):
    """f(t, y) of the exact long-sequence flow (Lemma 1 with Eqn. 5), y = [Y (M x M), Z query rows]."""
    fs = _lambdified()
    P, on, rows, target = _class_arrays(table)
    M, K, nq = table.n_vocab, table.n_classes, table.n_queries

    def f(t, y):
        Y = y[:M * M].reshape(M, M)
        inputs = _decoder_inputs(fs, P, on, y[M * M:].reshape(nq, M)[rows])           # (K, M)
        logits = inputs @ Y
        score = fs["decoder_prob_score"](logits, logits.max(axis=1, keepdims=True))
        alpha = score / score.sum(axis=1, keepdims=True)
        dY = fs["decoder_velocity"](eta_Y, inputs[:, :, None], target[:, None, :], alpha[:, None, :]).sum(0) / K
        backprop = (target - alpha) @ Y.T                                              # g_n = Y (e_n - alpha_n)
        proj = (inputs * backprop).sum(axis=1, keepdims=True)
        dz = fs["attention_velocity"](eta_Z, inputs, backprop, proj) / K
        dZ = np.zeros((nq, M))
        np.add.at(dZ, rows, dz)
        return np.concatenate([dY.ravel(), dZ.ravel()])

    return f


def lemma4_rhs(table: ss.ClassTable, eta_Y: float, eta_Z: float):
    """f(t, y) of Lemma 4 with the Sec. 6 closure, y = [h(t/K), Z query rows]."""
    fs = _lambdified()
    P, on, rows, _ = _class_arrays(table)
    M, K, nq = table.n_vocab, table.n_classes, table.n_queries
    others = ~np.eye(K, dtype=bool)[:, :, None]                                        # pairs n != n'

    def f(t, y):
        h = y[0]
        inputs = _decoder_inputs(fs, P, on, y[1:].reshape(nq, M)[rows])
        overlap = inputs @ inputs.T
        beta = fs["beta_first_order"](overlap) * np.ones_like(overlap)
        gamma = fs["speed_coefficient"](M, h)
        terms = fs["lemma4_term"](eta_Z, gamma, inputs[:, None, :], beta[:, :, None], overlap[:, :, None],
                                  inputs[None, :, :])
        dz = np.where(others, terms, 0.0).sum(axis=1)
        dZ = np.zeros((nq, M))
        np.add.at(dZ, rows, dz)
        return np.concatenate([[fs["decoder_rate"](eta_Y, M, h) / K], dZ.ravel()])

    return f
