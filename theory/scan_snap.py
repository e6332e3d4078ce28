"""Scan and snap: the derivation of Tian, Wang, Chen & Du (NeurIPS 2023, arXiv 2305.16380) in SymPy.

A 1-layer transformer is reparameterised by two free M x M matrices: the decoder Y = U W_V^T U^T and the
attention logits Z = U W_Q W_K^T U^T / sqrt(d) (paper Sec. 3.1). Everything below is a SymPy object a user can
print, substitute into and differentiate; `python -m theory.scan_snap` prints every result and its check.

Contents, in the paper's order (equation numbers follow arXiv v4):

* data model (Sec. 3.2): `SequenceClasses`, the authors' `Dataset2` layout (`dataset2_classes`, `syn_small`,
  `syn_medium`), distinct and common tokens;
* Lemma 2 / Eqn. 5: the long-sequence attention `long_sequence_attention`;
* Lemma 1 / Eqn. 3: the exact gradient flow, as per-component formulas (`decoder_velocity`,
  `attention_velocity`) that `verify_lemma1` checks against the symbolic gradient of the objective (Eqn. 15);
* Lemma 6: `decoder_closed_form` derives e^{Mh} + (M-1)Mh = M eta_Y t + 1 from dh/dt = eta_Y/((M-1)+e^{Mh});
* Eqn. 85: the speed-control coefficient `speed_coefficient` (gamma);
* Lemma 4 / Eqn. 97: the attention-logit ODE `lemma4_attention_velocity`; Eqn. 98 for distinct tokens;
* Theorem 3 / Eqn. 11: the invariant r_{l/l'|n}(t) e^{-2 z_ml(t)} = const (`verify_theorem3_invariant`);
* Sec. 6 / Eqns. 13, 120-129: the reduced common-token ODE, Gamma(t), B_n(t) in closed form (`snap_closed_forms`);
* Theorem 4 / Eqn. 14: the two regimes of B_n by series and limits (`theorem4_regimes`).

Notation: Y[l, j] is the logit contribution of contextual token l to output token j (logits = Y^T f);
z[m, l] is the attention logit of query m on key l; f_n = c_n / ||c_n|| is the decoder input of class n.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import sympy as sp

from theory._cli import count, print_sections, real_number, section_parser, shown

# ---------------------------------------------------------------------------------------------------------
# Symbols shared by every result
# ---------------------------------------------------------------------------------------------------------
M = sp.Symbol("M", positive=True)  # vocabulary size (softmax width of the decoder)
K = sp.Symbol("K", positive=True)  # number of next tokens (sequence classes)
eta_Y = sp.Symbol("eta_Y", positive=True)  # decoder learning rate
eta_Z = sp.Symbol("eta_Z", positive=True)  # attention learning rate
nu = sp.Symbol("nu", positive=True)  # learning-rate ratio eta_Y / eta_Z
t = sp.Symbol("t", nonnegative=True)  # training time (SGD steps of batch size 1, or gradient-flow time)
h = sp.Symbol("h", nonnegative=True)  # Lemma 5/6 decoder scale: w_n = (M-1) h zeta_n
u = sp.Symbol("u", nonnegative=True)  # u = M h, the natural parameter of Lemma 6's solution
C0 = sp.Symbol("C_0", positive=True)  # Sec. 6 constant rho_0^4 / K
Gamma = sp.Symbol("Gamma", nonnegative=True)  # Gamma(t) = eta_Z int_0^t gamma

# per-component symbols of the Lemma 1 / Lemma 4 flows (scalars; sim/ loops over the indices)
prob_l = sp.Symbol("P_l", positive=True)  # P(l | n)
logit_l = sp.Symbol("z_l", real=True)  # z_{m l}
attn_l = sp.Symbol("c_l", nonnegative=True)  # c_{l|n}
attn_norm = sp.Symbol("c_norm", positive=True)  # ||c_n||_2
input_l = sp.Symbol("f_l", nonnegative=True)  # f_{n l}
input_other_l = sp.Symbol("f_other_l", nonnegative=True)  # f_{n' l}
overlap = sp.Symbol("f_dot_f_other", nonnegative=True)  # f_n . f_{n'}
beta = sp.Symbol("beta", real=True)  # beta_{n n'} of Theorem 1
gamma_sym = sp.Symbol("gamma", nonnegative=True)  # gamma(t) of Eqn. 85
target_j = sp.Symbol("e_j", nonnegative=True)  # [j == n]
prob_out_j = sp.Symbol("alpha_j", nonnegative=True)  # alpha_{n j} = softmax(Y^T f_n)_j
decoder_logit_j = sp.Symbol("s_j", real=True)  # (Y^T f_n)_j
decoder_logit_max = sp.Symbol("s_max", real=True)  # any constant: softmax is shift invariant
backprop_l = sp.Symbol("g_l", real=True)  # g_l = (Y (e_n - alpha_n))_l
backprop_proj = sp.Symbol("f_dot_g", real=True)  # f_n . g


# ---------------------------------------------------------------------------------------------------------
# Data model (Sec. 3.2) and the authors' Dataset2 layout (their public code: github.com/facebookresearch/
# luckmatters, ssl/real-dataset/decoder_only.py)
# ---------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SequenceClasses:
    """Sequence classes s_n = (P(l|n), psi(n), n) of Sec. 3.2.

    Class k has query token queries[k] = psi(n), next token next_tokens[k] = n and contextual distribution
    probabilities[k][l] = P(l | n) over the n_vocab tokens (exact SymPy numbers, each row sums to one).
    A token l is *distinct* if exactly one class has P(l|n) > 0 and *common* if several do.
    Classes are drawn uniformly (Theorem 1's assumption, and the authors' `random.choice(facts)`).
    """

    n_vocab: int
    queries: tuple
    next_tokens: tuple
    probabilities: tuple

    def __post_init__(self):
        # sequences (lists, tuples, NumPy arrays) become tuples and NumPy scalars Python numbers, so that the
        # classes hash and compare by value; exact SymPy probabilities stay exact
        n_vocab = count("n_vocab", self.n_vocab, 2)
        object.__setattr__(self, "n_vocab", n_vocab)
        for name in ("queries", "next_tokens", "probabilities"):
            object.__setattr__(self, name, _sequence(name, getattr(self, name)))
        k = len(self.next_tokens)
        if k < 1 or len(self.queries) != k or len(self.probabilities) != k:
            raise ValueError(f"queries/next_tokens/probabilities: need equal lengths >= 1, got "
                             f"{len(self.queries)}/{k}/{len(self.probabilities)}")
        for name in ("queries", "next_tokens"):
            object.__setattr__(self, name, tuple(count(f"{name}[{i}]", x, 0, n_vocab - 1)
                                                 for i, x in enumerate(getattr(self, name))))
        if len(set(self.next_tokens)) != k:
            raise ValueError(f"next_tokens={shown(self.next_tokens)}: must be distinct")
        rows = []
        for k_, row in enumerate(self.probabilities):
            row = _sequence(f"probabilities[{k_}]", row)
            if len(row) != n_vocab:
                raise ValueError(f"probabilities[{k_}]: need {n_vocab} non-negative entries, got {len(row)}")
            for l, p in enumerate(row):
                real_number(f"probabilities[{k_}][{l}]", p, 0.0)
            row = tuple(p.item() if hasattr(p, "item") and not isinstance(p, sp.Basic) else p for p in row)
            if sp.nsimplify(sum(row)) != 1:
                raise ValueError(f"probabilities[{k_}]: must sum to 1, sums to {sum(row)}")
            rows.append(row)
        object.__setattr__(self, "probabilities", tuple(rows))

    @property
    def n_classes(self) -> int:
        return len(self.next_tokens)

    def support(self, k: int) -> tuple:
        """supp(n) = {l : P(l|n) > 0} of class k."""
        return tuple(l for l, p in enumerate(self.probabilities[k]) if p > 0)

    def classes_using(self, token: int) -> tuple:
        """Omega(l) = {n : P(l|n) > 0}, as class indices."""
        return tuple(k for k in range(self.n_classes) if self.probabilities[k][token] > 0)

    def distinct_tokens(self, k: int) -> tuple:
        """G_DT(n): tokens that only class k uses, |Omega(l)| = 1."""
        return tuple(l for l in self.support(k) if len(self.classes_using(l)) == 1)

    def common_tokens(self) -> tuple:
        """G_CT: tokens used by more than one class, |Omega(l)| > 1."""
        return tuple(l for l in range(self.n_vocab) if len(self.classes_using(l)) > 1)

    def query_tokens(self) -> tuple:
        """The distinct query tokens, in first-appearance order (rows of Z that training can change)."""
        return tuple(dict.fromkeys(self.queries))


def _sequence(name: str, value) -> tuple:
    """A list, tuple or 1-D NumPy array as a tuple; a ValueError naming `name` for anything else."""
    if isinstance(value, (str, bytes, dict, set)) or not hasattr(value, "__len__") or not hasattr(
            value, "__getitem__") or getattr(value, "ndim", 1) == 0:
        raise ValueError(f"{name}={shown(value)}: must be a sequence (list, tuple or 1-D array)")
    return tuple(value)


def dataset2_classes(num_last: int, num_next_per_last: int, num_common: int = 10,
                     num_common_per_last: int = 0, num_unique_per_next: int = 10,
                     common_weight=sp.Integer(1), unique_min=sp.Rational(1, 10),
                     unique_max=sp.Integer(1)) -> SequenceClasses:
    """The authors' `Dataset2` (decoder_only.py), with exact rational probabilities.

    Token layout: [global common | common per query | distinct per next token | queries | next tokens].
    Each class has unnormalised weight `common_weight` on every common token and
    linspace(unique_min, unique_max, num_unique_per_next) on its own distinct tokens, then is normalised.
    The vocabulary is M = num_common + num_common_per_last*num_last + num_unique_per_next*K + num_last + K.
    The weights are finite and >= 0 (Python, NumPy or exact SymPy numbers), and every class needs some weight.
    """
    num_last, num_next_per_last = count("num_last", num_last, 1), count("num_next_per_last", num_next_per_last, 1)
    num_common, num_common_per_last = count("num_common", num_common, 0), count("num_common_per_last",
                                                                                 num_common_per_last, 0)
    num_unique_per_next = count("num_unique_per_next", num_unique_per_next, 1)
    weights = {}
    for name, value in (("common_weight", common_weight), ("unique_min", unique_min), ("unique_max", unique_max)):
        number = real_number(name, value, 0.0)
        weights[name] = value if isinstance(value, sp.Basic) else sp.nsimplify(number)   # SymPy stays exact
    common_weight, unique_min, unique_max = weights.values()
    n_next = num_last * num_next_per_last
    common_per_last_offset = num_common
    unique_offset = common_per_last_offset + num_common_per_last * num_last
    query_offset = unique_offset + num_unique_per_next * n_next
    next_offset = query_offset + num_last
    n_vocab = next_offset + n_next
    step = (unique_max - unique_min) / (num_unique_per_next - 1) if num_unique_per_next > 1 else 0
    unique_weights = [unique_min + i * step for i in range(num_unique_per_next)]
    if sum(unique_weights) == 0 and (common_weight == 0 or num_common + num_common_per_last == 0):
        raise ValueError("common_weight, unique_min, unique_max: every class needs a positive total weight (a "
                         "positive common_weight on some common token, or a positive unique weight)")
    queries, next_tokens, rows = [], [], []
    k = 0
    for m in range(num_last):
        for _ in range(num_next_per_last):
            weights = [sp.Integer(0)] * n_vocab
            for l in range(num_common):
                weights[l] = common_weight
            start = common_per_last_offset + m * num_common_per_last
            for l in range(start, start + num_common_per_last):
                weights[l] = common_weight
            start = unique_offset + num_unique_per_next * k
            for i, wgt in enumerate(unique_weights):
                weights[start + i] = wgt
            total = sum(weights)
            rows.append(tuple(wgt / total for wgt in weights))
            queries.append(query_offset + m)
            next_tokens.append(next_offset + k)
            k += 1
    return SequenceClasses(n_vocab, tuple(queries), tuple(next_tokens), tuple(rows))


def syn_small() -> SequenceClasses:
    """Syn-Small (Fig. 4): 2 queries, one next token each, 10 common + 2 x 10 distinct tokens, M = 34."""
    return dataset2_classes(num_last=2, num_next_per_last=1)


def syn_medium(num_last: int) -> SequenceClasses:
    """Syn-Medium (Fig. 6): num_last queries, 2 next tokens each (K = 2 num_last), 10 common tokens."""
    return dataset2_classes(num_last=num_last, num_next_per_last=2)


# ---------------------------------------------------------------------------------------------------------
# Lemma 2 / Eqn. 5: attention in the long-sequence limit
# ---------------------------------------------------------------------------------------------------------
#: un-normalised long-sequence attention score c~_{l|n} = P(l|n) exp(z_{ml}) (Eqn. 5)
attention_score = prob_l * sp.exp(logit_l)


def long_sequence_attention(probabilities, logits) -> list:
    """c_{l|m,n} = P(l|m,n) e^{z_ml} / sum_l' P(l'|m,n) e^{z_ml'} (Lemma 2, Eqn. 5; needs T -> infinity).
    probabilities and logits: sequences of one length (numbers or SymPy expressions)."""
    probabilities, logits = _sequence("probabilities", probabilities), _sequence("logits", logits)
    if not probabilities or len(probabilities) != len(logits):
        raise ValueError(f"probabilities, logits: need one length >= 1, got {len(probabilities)} and {len(logits)}")
    if all(sp.sympify(p).is_zero for p in probabilities):
        raise ValueError("probabilities: all zero, so the attention 0/0 is undefined")
    scores = [attention_score.subs({prob_l: p, logit_l: z}) for p, z in zip(probabilities, logits)]
    total = sum(scores)
    return [s / total for s in scores]


# ---------------------------------------------------------------------------------------------------------
# Lemma 1 / Eqn. 3: the exact gradient flow of J(Y, Z), per component
# ---------------------------------------------------------------------------------------------------------
#: f_{nl} = c_{l|n} / ||c_n|| (the l2-normalised attention output, Sec. 3)
decoder_input = attn_l / attn_norm
#: un-normalised decoder probability exp(s_j - s_max); alpha_j = this / sum_j (softmax is shift invariant)
decoder_prob_score = sp.exp(decoder_logit_j - decoder_logit_max)
#: dY_{lj}/dt for one sample of class n: eta_Y f_{nl} ([j == n] - alpha_{nj}) (Lemma 1, Eqn. 3)
decoder_velocity = eta_Y * input_l * (target_j - prob_out_j)
#: dz_{ml}/dt for one sample of class n: eta_Z [diag(c) P_perp(c) / ||c|| g]_l = eta_Z f_l (g_l - f_l (f.g))
#: with g = Y (e_n - alpha_n) (Lemma 1, Eqns. 3-4; X^T diag(b) X -> diag(c) by Lemma 2)
attention_velocity = eta_Z * input_l * (backprop_l - input_l * backprop_proj)


def objective_one_class(Y, z_row, probabilities, next_token):
    """J for one class in the long-sequence limit (Eqn. 15 with Lemma 2): e_n^T Y^T f - log 1^T exp(Y^T f)."""
    c = sp.Matrix(long_sequence_attention(probabilities, z_row))
    f = c / sp.sqrt(sum(x ** 2 for x in c))
    logits = Y.T * f
    return logits[next_token] - sp.log(sum(sp.exp(x) for x in logits)), c, f


def verify_lemma1(n_vocab: int = 3) -> dict:
    """Check Lemma 1 symbolically: the component formulas equal dJ/dY and dJ/dz on a generic small case.

    Assumptions: long sequences (Lemma 2, so X^T b_T = c_n); Y and Z free matrices; a single class with
    positive P(l|n) on every token; no residual. Everything else (Y, z, P) is a free symbol.
    Returns {'dY': residuals, 'dz': residuals}, all of which simplify to 0.
    """
    n_vocab = count("n_vocab", n_vocab, 1)
    Y = sp.Matrix(n_vocab, n_vocab, lambda i, j: sp.Symbol(f"Y_{i}{j}", real=True))
    z = [sp.Symbol(f"z_{l}", real=True) for l in range(n_vocab)]
    p = [sp.Symbol(f"p_{l}", positive=True) for l in range(n_vocab)]
    n = 0
    J, c, f = objective_one_class(Y, z, p, n)
    logits = Y.T * f
    alpha = [sp.exp(x) / sum(sp.exp(y) for y in logits) for x in logits]
    e = [1 if j == n else 0 for j in range(n_vocab)]
    g = [sum(Y[l, j] * (e[j] - alpha[j]) for j in range(n_vocab)) for l in range(n_vocab)]
    f_dot_g = sum(f[l] * g[l] for l in range(n_vocab))
    res_Y, res_z = [], []
    for l in range(n_vocab):
        for j in range(n_vocab):
            formula = decoder_velocity.subs({eta_Y: 1, input_l: f[l], target_j: e[j], prob_out_j: alpha[j]})
            res_Y.append(sp.simplify(sp.diff(J, Y[l, j]) - formula))
        formula = attention_velocity.subs({eta_Z: 1, input_l: f[l], backprop_l: g[l], backprop_proj: f_dot_g})
        res_z.append(sp.simplify(sp.diff(J, z[l]) - formula))
    return {"dY": res_Y, "dz": res_z}


def lemma1_gradients_numeric(Y_values, z_values, probabilities_values, next_token: int):
    """Evaluate Lemma 1 (Eqn. 3, long-sequence form) at given numbers, through the SymPy formulas above.

    Returns (dJ/dY, dJ/dz) as nested lists of SymPy Floats; used by tests to compare with torch autograd.
    Assumes what `verify_lemma1` assumes: Y_values M x M, z_values and probabilities_values of length M
    (finite numbers; probabilities >= 0, not all 0), next_token in [0, M).
    """
    z_values = [real_number(f"z_values[{l}]", z) for l, z in enumerate(_sequence("z_values", z_values))]
    n_vocab = len(z_values)
    rows = _sequence("Y_values", Y_values)
    if n_vocab == 0 or len(rows) != n_vocab:
        raise ValueError(f"Y_values, z_values: need an M x M matrix and M >= 1 logits, got {len(rows)} rows and "
                         f"{n_vocab} logits")
    Y_values = [[real_number(f"Y_values[{l}][{j}]", y) for j, y in enumerate(_sequence(f"Y_values[{l}]", row))]
                for l, row in enumerate(rows)]
    if any(len(row) != n_vocab for row in Y_values):
        raise ValueError(f"Y_values: every row needs {n_vocab} entries")
    probabilities_values = [real_number(f"probabilities_values[{l}]", p, 0.0)
                            for l, p in enumerate(_sequence("probabilities_values", probabilities_values))]
    if len(probabilities_values) != n_vocab or not any(probabilities_values):
        raise ValueError(f"probabilities_values: need {n_vocab} entries >= 0, not all 0")
    next_token = count("next_token", next_token, 0, n_vocab - 1)
    c = [sp.Float(x, 30) for x in long_sequence_attention(
        [sp.nsimplify(p) for p in probabilities_values], [sp.Float(z, 30) for z in z_values])]
    norm = sp.sqrt(sum(x ** 2 for x in c))
    f = [decoder_input.subs({attn_l: x, attn_norm: norm}) for x in c]
    s = [sum(sp.Float(Y_values[l][j], 30) * f[l] for l in range(n_vocab)) for j in range(n_vocab)]
    s_max = max(s)
    scores = [decoder_prob_score.subs({decoder_logit_j: x, decoder_logit_max: s_max}) for x in s]
    alpha = [x / sum(scores) for x in scores]
    e = [1 if j == next_token else 0 for j in range(n_vocab)]
    dY = [[decoder_velocity.subs({eta_Y: 1, input_l: f[l], target_j: e[j], prob_out_j: alpha[j]})
           for j in range(n_vocab)] for l in range(n_vocab)]
    g = [sum(sp.Float(Y_values[l][j], 30) * (e[j] - alpha[j]) for j in range(n_vocab)) for l in range(n_vocab)]
    f_dot_g = sum(a * b for a, b in zip(f, g))
    dz = [attention_velocity.subs({eta_Z: 1, input_l: f[l], backprop_l: g[l], backprop_proj: f_dot_g})
          for l in range(n_vocab)]
    return dY, dz


# ---------------------------------------------------------------------------------------------------------
# Lemma 6: the decoder ODE and its closed form; Eqn. 85: the speed-control coefficient gamma
# ---------------------------------------------------------------------------------------------------------
#: dh/dt = eta_Y / ((M-1) + e^{Mh}) (Lemma 6; one class presented every step, f_n fixed, Assumption 2)
decoder_rate = eta_Y / ((M - 1) + sp.exp(M * h))
#: gamma as a function of the decoder scale h = h(t/K) (Eqn. 85)
speed_coefficient = (M - 1) ** 2 * h / ((M - 1) + sp.exp(M * h))


@lru_cache(maxsize=None)
def decoder_closed_form() -> dict:
    """Derive Lemma 6: dh/dt = eta_Y/((M-1)+e^{Mh}), h(0) = 0  =>  e^{Mh} + (M-1) M h = M eta_Y t + 1.

    Assumptions: Lemma 3's reparameterisation (W = F^T Y, Assumption 2: weakly correlated f_n), Y(0) = 0,
    the same class presented at every step, and f_n held fixed (decoder much faster than attention,
    Assumption 1c). Separating variables, int_0^h ((M-1) + e^{M h'}) dh' = eta_Y t; the explicit solution
    comes out in terms of the Lambert W function.

    Returns {'implicit': Eq, 'residual': expr (zero on the solution), 'explicit': h(t), 'dsolve': SymPy's
    general solution, 'checks': {...: True}}.
    """
    H = sp.Symbol("H", nonnegative=True)
    lhs = sp.integrate(1 / decoder_rate.subs(eta_Y, 1), (h, 0, H))  # separated: int dh / rate = eta_Y t
    implicit_lhs = sp.expand(M * lhs).subs(H, h)
    implicit = sp.Eq(sp.expand(implicit_lhs + 1), M * eta_Y * t + 1)
    residual = implicit.lhs - implicit.rhs
    explicit = sp.solve(residual, h)[0]
    hf = sp.Function("h")
    general = sp.dsolve(sp.Eq(hf(t).diff(t), decoder_rate.subs(h, hf(t))), hf(t))
    C1 = sp.Symbol("C1")
    # implicit differentiation of F(h, t) = 0 must give back the ODE: dh/dt = -F_t / F_h
    implicit_slope = -sp.diff(residual, t) / sp.diff(residual, h)
    checks = {
        "implicit form is e^(Mh) + (M-1)Mh = M eta_Y t + 1":
            sp.simplify(residual - (sp.exp(M * h) + (M - 1) * M * h - M * eta_Y * t - 1)) == 0,
        "implicit differentiation gives dh/dt = eta_Y/((M-1)+e^(Mh))":
            sp.simplify(implicit_slope - decoder_rate) == 0,
        "h = 0 at t = 0 solves the implicit form": sp.simplify(residual.subs({h: 0, t: 0})) == 0,
        "dsolve's general solution with C1 = 1/M is the explicit solution":
            sp.simplify(general.rhs.subs(C1, 1 / M) - explicit) == 0,
        "explicit (Lambert W) solution solves the implicit form (30 digits, 3 points)": all(
            abs(sp.N(residual.subs(h, explicit).subs({M: mv, eta_Y: ev, t: tv}), 30)) < 1e-25
            for mv, ev, tv in ((34, 1, 3), (100, sp.Rational(1, 2), 20), (7, 3, sp.Rational(1, 10)))),
    }
    return {"implicit": implicit, "residual": residual, "explicit": explicit, "dsolve": general,
            "checks": checks}


def time_of_decoder_scale(scale) -> sp.Expr:
    """t at which h(t/K) = u/M (inverting Lemma 6 with t -> t/K): t = K (e^u + (M-1) u - 1) / (M eta_Y).
    scale: a SymPy expression, or a finite number >= 0."""
    if not (isinstance(scale, sp.Basic) and scale.free_symbols):
        scale = real_number("scale", scale, 0.0, keep_int=True)
    res = decoder_closed_form()["residual"].subs(h, scale / M)
    return K * sp.solve(res, t)[0]


# ---------------------------------------------------------------------------------------------------------
# Lemma 4 / Eqns. 97-98 and Theorem 3
# ---------------------------------------------------------------------------------------------------------
#: one (n, n') term of Eqn. 97: dz_ml/dt += eta_Z gamma f_nl beta_nn' [(f_n.f_n') f_nl - f_n'l]
lemma4_attention_velocity = eta_Z * gamma_sym * input_l * beta * (overlap * input_l - input_other_l)
#: Sec. 6 closure used by sim: beta_{nn'} ~ E'_{nn'} ~ f_n . f_{n'} (first order in the overlaps E)
beta_first_order = overlap


def verify_eqn98() -> dict:
    """For a distinct token l of class n (f_{n'l} = 0 for n' != n), Eqn. 97 reduces to Eqn. 98:
    dz_ml/dt = eta_Z f_nl^2 xi_n with xi_n = gamma sum_{n'} beta_nn' f_n.f_n' > 0 (Theorem 2a).
    Checked for three competing classes with free overlaps and betas. Returns {'residual': 0}."""
    f_nl = sp.Symbol("f_nl", positive=True)
    betas = sp.symbols("beta_1:4", positive=True)
    overlaps = sp.symbols("o_1:4", positive=True)
    total = sum(lemma4_attention_velocity.subs({input_l: f_nl, beta: b, overlap: o, input_other_l: 0})
                for b, o in zip(betas, overlaps))
    xi = gamma_sym * sum(b * o for b, o in zip(betas, overlaps))
    return {"residual": sp.simplify(total - eta_Z * f_nl ** 2 * xi)}


def verify_theorem3_invariant() -> dict:
    """Theorem 3 (Eqn. 11): for distinct tokens l, l' of class n, r(t) = r(0) e^{2 (z_l(t) - z_l(0))}.

    Assumptions: Lemma 4 in the long-sequence limit, so by Eqn. 98 dz_l/dt = eta_Z f_l^2 xi_n(t) and
    dz_l'/dt = eta_Z f_l'^2 xi_n(t) with the same xi_n (any positive function of t); f_l / f_l' =
    c~_l / c~_l' = P_l e^{z_l} / (P_l' e^{z_l'}) (Eqn. 5). Proof by SymPy: d/dt [r e^{-2 z_l}] = 0.
    Returns {'derivative_of_invariant': 0, 'r': r(t) expression}.
    """
    tt = sp.Symbol("t")
    zl, zl2, xi = sp.Function("z_l")(tt), sp.Function("z_lp")(tt), sp.Function("xi_n")(tt)
    P1, P2, norm = sp.Symbol("P_l", positive=True), sp.Symbol("P_lp", positive=True), sp.Function("S")(tt)
    f1 = attention_score.subs({prob_l: P1, logit_l: zl}) / norm  # f_nl (any common normaliser S(t))
    f2 = attention_score.subs({prob_l: P2, logit_l: zl2}) / norm
    r = f1 ** 2 / f2 ** 2 - 1
    flow = {zl.diff(tt): eta_Z * f1 ** 2 * xi, zl2.diff(tt): eta_Z * f2 ** 2 * xi}
    invariant = r * sp.exp(-2 * zl)
    derivative = sp.simplify(invariant.diff(tt).subs(flow))
    return {"derivative_of_invariant": derivative, "r": sp.simplify(r)}


# ---------------------------------------------------------------------------------------------------------
# Sec. 6: the snap. Reduced common-token ODE (Eqn. 13), Gamma, B_n (Eqns. 120-129)
# ---------------------------------------------------------------------------------------------------------
z_common = sp.Symbol("z_c", real=True)
B_sym = sp.Symbol("B", real=True)
#: dz_ml/dt = -eta_Z gamma e^{4 z_ml} / C_0 for the single common token (Eqn. 13)
common_logit_rate = -eta_Z * gamma_sym * sp.exp(4 * z_common) / C0
#: eta_Z xi_n(t) = eta_Z gamma e^{4 z_ml} / C_0, the integrand of B_n (Eqns. 12-13)
scan_rate = eta_Z * gamma_sym * sp.exp(4 * z_common) / C0

#: state and right-hand side of the reduced Sec. 6 system integrated by sim: (h(t/K), Gamma, z_c, B_n)
reduced_state = (h, Gamma, z_common, B_sym)
reduced_params = (eta_Y, eta_Z, M, K, C0)
reduced_rhs = (
    decoder_rate / K,  # d/dt h(t/K)
    eta_Z * speed_coefficient,  # dGamma/dt = eta_Z gamma
    common_logit_rate.subs(gamma_sym, speed_coefficient),
    scan_rate.subs(gamma_sym, speed_coefficient),
)


@lru_cache(maxsize=None)
def snap_closed_forms() -> dict:
    """Integrate Sec. 6 exactly (Eqns. 120-129). Assumptions: one common token l shared by all classes,
    one query, normalisers frozen at rho_0 (so f_n.f_n' ~ e^{2 z_ml}/rho_0^2, beta ~ f_n.f_n'), z_ml(0) = 0,
    B_n(0) = 0, gamma from Eqn. 85 with Lemma 6's h.

    * z_c(Gamma): dz/dGamma = -e^{4z}/C_0 solved by dsolve: e^{-4 z} = 1 + 4 Gamma / C_0.
    * B_n(Gamma) = int dGamma e^{4z}/C_0 = (1/4) ln((C_0 + 4 Gamma)/C_0). The paper writes (1/4) ln(C_0+4Gamma),
      dropping the constant -ln(C_0)/4.
    * Gamma(t) = eta_Z int_0^t gamma = (eta_Z/eta_Y) K (M-1)^2 h(t/K)^2 / 2 (substituting dh from Lemma 6).
    * B_n(t) = (1/4) ln(1 + 2 (eta_Z/eta_Y) K (M-1)^2 h(t/K)^2 / C_0) (Eqn. 129).
    """
    G = sp.Symbol("G", nonnegative=True)
    zf = sp.Function("z")
    sol = sp.dsolve(sp.Eq(zf(G).diff(G), common_logit_rate.subs(z_common, zf(G)) / (eta_Z * gamma_sym)),
                    zf(G), ics={zf(0): 0})
    sols = sol if isinstance(sol, list) else [sol]
    z_of_gamma = next(s.rhs for s in sols if s.rhs.is_real is not False and sp.im(s.rhs.subs(G, 1)) == 0)
    z_of_gamma = sp.logcombine(sp.simplify(z_of_gamma.subs(G, Gamma)), force=True)
    B_of_gamma = sp.integrate((scan_rate / (eta_Z * gamma_sym)).subs(z_common, z_of_gamma.subs(Gamma, G)),
                              (G, 0, Gamma))
    B_of_gamma = sp.simplify(B_of_gamma)
    # Gamma(t) = eta_Z int gamma dt; with t' = t/K, dt = K dt' and dt' = dh ((M-1)+e^{Mh}) / eta_Y
    Hs = sp.Symbol("H", nonnegative=True)
    Gamma_of_h = sp.integrate(eta_Z * speed_coefficient * K / decoder_rate, (h, 0, Hs)).subs(Hs, h)
    Gamma_of_h = sp.simplify(Gamma_of_h)
    B_of_h = sp.expand_log(B_of_gamma.subs(Gamma, Gamma_of_h), force=True)
    checks = {
        "e^{-4 z} = 1 + 4 Gamma / C_0": sp.simplify(sp.exp(-4 * z_of_gamma) - (1 + 4 * Gamma / C0)) == 0,
        "B_n = ln((C_0 + 4 Gamma)/C_0)/4": sp.simplify(B_of_gamma - sp.log((C0 + 4 * Gamma) / C0) / 4) == 0,
        "Gamma = (eta_Z/eta_Y) K (M-1)^2 h^2 / 2":
            sp.simplify(Gamma_of_h - eta_Z / eta_Y * K * (M - 1) ** 2 * h ** 2 / 2) == 0,
    }
    return {"z_common": z_of_gamma, "B_of_Gamma": B_of_gamma, "Gamma_of_h": Gamma_of_h,
            "B_of_h": sp.simplify(B_of_gamma.subs(Gamma, Gamma_of_h)), "checks": checks}


@lru_cache(maxsize=None)
def theorem4_regimes() -> dict:
    """Theorem 4 (Eqn. 14): the two regimes of B_n(t), by SymPy series and limits.

    Uses the parameterisation u = M h(t/K), in which Lemma 6 gives t explicitly:
    t(u) = K (e^u + (M-1) u - 1) / (M eta_Y). Assumptions are those of `snap_closed_forms`.

    * Scanning (u -> 0, t << K ln M / eta_Y): series t = K u/eta_Y + O(u^2), so h = eta_Y t/(K M) and
      B_n = (1/4) ln(1 + 2 (M-1)^2 eta_Y eta_Z t^2 / (K M^2 C_0)); B_n / ln t -> 1/2: O(ln t).
    * Crossover: gamma(u) peaks at u* = 1 + W((M-1)/e); t(u*) / (K ln M / eta_Y) -> 1 as M -> infinity,
      which is t0' = K ln M / eta_Y.
    * Snapping (u -> infinity): ln(M eta_Y t / K) / u -> 1, so h = ln(M eta_Y t/K)/M and
      B_n = (1/4) ln(1 + 2 K (M-1)^2 ln^2(M eta_Y t/K) / (nu M^2 C_0)); B_n / ln ln t -> 1/2: O(ln ln t).
    * B_n at t0 = 2 K ln M / eta_Y depends on eta_Y, eta_Z only through nu = eta_Y / eta_Z (App. F).
    """
    out = {}
    t_of_u = time_of_decoder_scale(u)
    B_h = snap_closed_forms()["B_of_h"]
    B_of_u = B_h.subs(h, u / M)
    # scanning regime
    ser = sp.series(t_of_u, u, 0, 2).removeO()
    u_early = sp.solve(sp.Eq(t, ser), u)[0]
    B_early = sp.simplify(B_h.subs(h, u_early / M))
    out["t_series_small_u"] = sp.series(t_of_u, u, 0, 3)
    out["h_scanning"] = sp.simplify(u_early / M)
    out["B_scanning"] = B_early
    paper_early = sp.log(C0 + 2 * (M - 1) ** 2 * eta_Y * eta_Z * t ** 2 / (K * M ** 2)) / 4 - sp.log(C0) / 4
    out["B_scanning equals Eqn. 14 (first case, up to the constant ln(C_0)/4)"] = sp.simplify(
        sp.expand_log(B_early - paper_early, force=True)) == 0
    out["limit B_scanning / ln t"] = sp.limit(B_early / sp.log(t), t, sp.oo)
    # crossover: peak of gamma
    gamma_u = speed_coefficient.subs(h, u / M)
    u_peak = sp.solve(sp.diff(gamma_u, u), u)[0]
    w = sp.Symbol("w", positive=True)  # w = W((M-1)/e)  <=>  M = 1 + e w e^w
    M_of_w = 1 + sp.E * w * sp.exp(w)
    out["u_peak_of_gamma"] = u_peak
    out["peak condition holds"] = sp.simplify(sp.diff(gamma_u, u).subs(u, 1 + w).subs(M, M_of_w)) == 0
    out["limit t(u_peak) / (K ln M / eta_Y), M -> oo"] = sp.limit(
        (t_of_u.subs(u, 1 + w) / (K * sp.log(M) / eta_Y)).subs(M, M_of_w), w, sp.oo)
    # snapping regime
    out["limit ln(M eta_Y t / K) / u, u -> oo"] = sp.limit(sp.log(M * eta_Y * t_of_u / K) / u, u, sp.oo)
    B_late = sp.simplify(B_h.subs(h, sp.log(M * eta_Y * t / K) / M))
    out["B_snapping"] = B_late
    paper_late = sp.log(C0 + 2 * K * (M - 1) ** 2 / M ** 2 / nu * sp.log(M * eta_Y * t / K) ** 2) / 4 - sp.log(C0) / 4
    out["B_snapping equals Eqn. 14 (second case, nu = eta_Y/eta_Z)"] = sp.simplify(
        sp.expand_log(B_late - paper_late.subs(nu, eta_Y / eta_Z), force=True)) == 0
    out["limit B_snapping / ln ln t"] = sp.limit(B_late / sp.log(sp.log(t)), t, sp.oo)
    out["limit B_exact(u) / ln ln t(u), u -> oo"] = sp.limit(B_of_u / sp.log(sp.log(t_of_u)), u, sp.oo)
    # App. F: B_n(t0) depends only on K, M, nu
    B_t0 = B_h.subs(h, sp.Symbol("h_t0")).subs(eta_Y, nu * eta_Z)
    h_t0 = sp.solve(decoder_closed_form()["residual"].subs(t, 2 * sp.log(M) / eta_Y), h)[0]  # t0/K = 2 ln M/eta_Y
    out["h(t0/K)"] = h_t0
    out["dB(t0)/d eta_Z at fixed nu"] = sp.simplify(sp.diff(B_t0.subs(sp.Symbol("h_t0"), h_t0), eta_Z))
    return out


def predicted_snap_times(K_value, M_value, eta_Y_value) -> dict:
    """t0' = K ln M / eta_Y (end of scanning, peak of gamma) and t0 = 2 K ln M / eta_Y (start of snapping).

    K_value: an integer >= 1 (classes), M_value: an integer >= 2 (vocabulary), eta_Y_value: a finite number
    > 0 such that t0 stays a finite float."""
    vals = {K: count("K_value", K_value, 1), M: count("M_value", M_value, 2),
            eta_Y: real_number("eta_Y_value", eta_Y_value, 0.0, open_low=True)}
    t0p = K * sp.log(M) / eta_Y
    times = {"t0_prime": float(t0p.subs(vals)), "t0": float((2 * t0p).subs(vals))}
    if times["t0"] == float("inf"):
        raise ValueError(f"eta_Y_value={shown(eta_Y_value)}: t0 = 2 K ln M / eta_Y exceeds float64's range; eta_Y must "
                         f"be above {float(2 * t0p.subs({K: vals[K], M: vals[M], eta_Y: 1})) / 1.7e308:.3g}")
    return times


def _print_data(args) -> None:
    d = syn_small()
    print(f"Syn-Small: M = {d.n_vocab}, queries {d.queries}, next tokens {d.next_tokens}, "
          f"common {d.common_tokens()}, distinct of class 0 {d.distinct_tokens(0)}")
    print("  P(l|n) on class 0's distinct tokens:", [str(d.probabilities[0][l]) for l in d.distinct_tokens(0)])


def _print_checks(checks: dict) -> None:
    for k, val in checks.items():
        print(f"  [{'ok' if val else 'FAIL'}] {k}")


def _print_lemma2(args) -> None:
    print("Lemma 2 (Eqn. 5): c~_{l|n} =", attention_score)


def _print_lemma1(args) -> None:
    print("Lemma 1 (Eqn. 3) per component:\n  dY_lj/dt =", decoder_velocity, "\n  dz_ml/dt =", attention_velocity)
    v = verify_lemma1(2)
    print("  residual against the symbolic gradient of Eqn. 15 (M = 2):",
          set(v["dY"]) | set(v["dz"]))


def _print_lemma6(args) -> None:
    dc = decoder_closed_form()
    print("Lemma 6: dh/dt =", decoder_rate)
    print("  implicit closed form:", dc["implicit"])
    print("  explicit:  h(t) =", dc["explicit"])
    _print_checks(dc["checks"])


def _print_eqn85(args) -> None:
    print("Eqn. 85: gamma =", speed_coefficient, "(h evaluated at t/K)")


def _print_lemma4(args) -> None:
    print("Lemma 4 (Eqn. 97), one (n, n') term:", lemma4_attention_velocity)
    print("  Eqn. 98 residual for distinct tokens:", verify_eqn98()["residual"])


def _print_theorem3(args) -> None:
    th3 = verify_theorem3_invariant()
    print("Theorem 3: r_{l/l'|n} =", th3["r"])
    print("  d/dt [ r e^{-2 z_l} ] along Lemma 4 =", th3["derivative_of_invariant"])


def _print_sec6(args) -> None:
    sc = snap_closed_forms()
    print("Sec. 6 (Eqns. 13, 120-129):\n  z_c(Gamma) =", sc["z_common"], "\n  B_n(Gamma) =", sc["B_of_Gamma"],
          "\n  Gamma(h) =", sc["Gamma_of_h"], "\n  B_n(h) =", sc["B_of_h"])
    _print_checks(sc["checks"])


def _print_theorem4(args) -> None:
    print("Theorem 4 (Eqn. 14):")
    for k, val in theorem4_regimes().items():
        print(f"  {k}: {val}")


def _print_snap_times(args) -> None:
    print("Predicted t0', t0 for Syn-Small (K=2, M=34), eta_Y = 1:", predicted_snap_times(2, 34, 1))


# name -> (what it prints, printer), in the paper's order
SECTIONS = {
    "data": ("the Syn-Small classes of Sec. 3.2", _print_data),
    "lemma2": ("the long-sequence attention, Eqn. 5", _print_lemma2),
    "lemma1": ("the gradient flow, Eqn. 3, checked against the gradient of Eqn. 15", _print_lemma1),
    "lemma6": ("the decoder ODE and its closed form", _print_lemma6),
    "eqn85": ("the speed-control coefficient gamma", _print_eqn85),
    "lemma4": ("the attention-logit ODE, Eqns. 97-98", _print_lemma4),
    "theorem3": ("the invariant of Eqn. 11", _print_theorem3),
    "sec6": ("the common-token ODE, Gamma(t) and B_n(t), Eqns. 13, 120-129", _print_sec6),
    "theorem4": ("the scanning and snapping regimes of B_n, Eqn. 14", _print_theorem4),
    "snap-times": ("the predicted t0' and t0 of Syn-Small", _print_snap_times),
}


def main(argv=None) -> None:
    args = section_parser("scan_snap", __doc__, SECTIONS).parse_args(argv)
    sp.init_printing(use_unicode=True)
    print("Scan and snap (Tian, Wang, Chen, Du 2023): SymPy derivations\n")
    print_sections(SECTIONS, args)


if __name__ == "__main__":
    main()
