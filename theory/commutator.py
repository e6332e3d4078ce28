"""The SGD commutator of Xu (2026, arXiv 2602.10496, section 3.3.2), derived: theta_AB - theta_BA expanded in
the step size, and the analytic expectations of its random-subspace baselines.

Two plain SGD steps from theta on minibatch losses L_A, L_B (gradients g_X, Hessians H_X, third-derivative
tensors T_X, all at theta):

    theta_A  = theta - eta g_A(theta),       theta_AB = theta_A - eta g_B(theta_A),   and A <-> B for theta_BA.

Taylor-expanding g_B(theta - eta g_A) = g_B - eta H_B g_A + (eta^2 / 2) T_B[g_A, g_A] - ... gives

    delta = theta_AB - theta_BA
          = eta^2 (H_B g_A - H_A g_B)                              (the Lie bracket of the fields -grad L_X)
          - (eta^3 / 2) (T_B[g_A, g_A] - T_A[g_B, g_B])             (next order)
          + O(eta^4).

For quadratic losses T = 0 and g is affine, so the eta^2 term is exact; for a quartic loss the eta^3 term is
the first correction and the expansion ends at eta^4 (g is cubic). `verify_expansion` checks both with
explicit symbolic losses. The general terms are also given as MatrixSymbol expressions (`leading_term`) so
that numerical code can evaluate them term by term without retyping them.

Baselines (the paper's random-subspace control, section 3.3.2): for a uniformly random K-dim subspace Q
of R^P and any fixed delta, rho^2 = ||Q Q^T delta||^2 / ||delta||^2 ~ Beta(K/2, (P-K)/2), so E[rho^2] = K/P and
E[rho] = Gamma((K+1)/2) Gamma(P/2) / (Gamma(K/2) Gamma((P+1)/2)) ~ sqrt(K/P) (the paper's value).
The block-matched baseline (K_b random directions inside each block b of n_b coordinates) has
E[rho^2] = sum_b (K_b / n_b) ||delta_b||^2 / ||delta||^2; it is ours, not the paper's: delta is exactly zero on
parameters that receive no gradient, and a whole-vector baseline counts them.

`python -m theory.commutator` prints the derivation and the two checks (`--help` for the sections).
"""
from __future__ import annotations

import sympy as sp

from theory._cli import count, print_sections, section_parser, shown

eta = sp.Symbol("eta", positive=True)


# ----------------------------------------------------------------------------------------------------------
# Explicit losses: the exact commutator and its series in eta
# ----------------------------------------------------------------------------------------------------------

def _check_loss(name: str, loss, theta) -> None:
    """A scalar SymPy expression and a non-empty sequence of distinct symbols theta; a ValueError otherwise."""
    if isinstance(theta, (str, sp.Basic)) or not hasattr(theta, "__len__") or len(theta) == 0 or any(
            not isinstance(t, sp.Symbol) for t in theta) or len(set(theta)) != len(theta):
        raise ValueError(f"theta={shown(theta)}: must be a non-empty sequence of distinct SymPy symbols")
    if not isinstance(loss, sp.Expr) or isinstance(loss, sp.MatrixBase):
        raise ValueError(f"{name}={shown(loss)}: must be a scalar SymPy expression")


def gradient(loss, theta) -> sp.Matrix:
    """Column vector of partial derivatives of a scalar loss with respect to the symbols theta."""
    _check_loss("loss", loss, theta)
    return sp.Matrix([sp.diff(loss, t) for t in theta])


def hessian(loss, theta) -> sp.Matrix:
    _check_loss("loss", loss, theta)
    return sp.hessian(loss, theta)


def sgd_step(loss, theta, point: sp.Matrix, step=eta) -> sp.Matrix:
    """point - step * grad L(point): one plain SGD step (Xu 2026, section 3.3.2)."""
    if not isinstance(point, sp.MatrixBase) or point.shape != (len(theta), 1):
        raise ValueError(f"point={shown(point)}: must be a {len(theta)} x 1 sympy.Matrix")
    substitution = dict(zip(theta, point))
    return point - step * gradient(loss, theta).subs(substitution, simultaneous=True)


def _check_losses(loss_a, loss_b, theta) -> None:
    _check_loss("loss_a", loss_a, theta)
    _check_loss("loss_b", loss_b, theta)


def commutator_exact(loss_a, loss_b, theta, step=eta) -> sp.Matrix:
    """theta_AB - theta_BA for two SGD steps from theta, exactly (a function of theta and the step)."""
    _check_losses(loss_a, loss_b, theta)
    start = sp.Matrix(theta)
    theta_ab = sgd_step(loss_b, theta, sgd_step(loss_a, theta, start, step), step)
    theta_ba = sgd_step(loss_a, theta, sgd_step(loss_b, theta, start, step), step)
    return (theta_ab - theta_ba).applyfunc(sp.expand)


def lie_bracket_term(loss_a, loss_b, theta, step=eta) -> sp.Matrix:
    """The leading term eta^2 (H_B g_A - H_A g_B) for explicit losses."""
    _check_losses(loss_a, loss_b, theta)
    g_a, g_b = gradient(loss_a, theta), gradient(loss_b, theta)
    return (step ** 2 * (hessian(loss_b, theta) * g_a - hessian(loss_a, theta) * g_b)).applyfunc(sp.expand)


def _third_derivative_contraction(loss, theta, vector: sp.Matrix) -> sp.Matrix:
    """T[v, v]_i = sum_jk d^3 L / (d theta_i d theta_j d theta_k) v_j v_k."""
    n = len(theta)
    return sp.Matrix([sum(sp.diff(loss, theta[i], theta[j], theta[k]) * vector[j] * vector[k]
                          for j in range(n) for k in range(n)) for i in range(n)])


def next_order_term(loss_a, loss_b, theta, step=eta) -> sp.Matrix:
    """The eta^3 term -(eta^3 / 2) (T_B[g_A, g_A] - T_A[g_B, g_B]) for explicit losses."""
    _check_losses(loss_a, loss_b, theta)
    g_a, g_b = gradient(loss_a, theta), gradient(loss_b, theta)
    term = _third_derivative_contraction(loss_b, theta, g_a) - _third_derivative_contraction(loss_a, theta, g_b)
    return (-step ** 3 / 2 * term).applyfunc(sp.expand)


def commutator_series(loss_a, loss_b, theta, order: int = 3, step=eta) -> sp.Matrix:
    """Taylor coefficients of the exact commutator in eta up to and including eta^order (an integer >= 0)."""
    order = count("order", order, 0)
    exact = commutator_exact(loss_a, loss_b, theta, step)
    return exact.applyfunc(lambda e: sp.series(e, step, 0, order + 1).removeO().expand())


def verify_expansion(loss_a, loss_b, theta) -> dict:
    """Residuals (each should simplify to zero):
    'order_2': [delta]_{eta^<=2} - eta^2 (H_B g_A - H_A g_B)
    'order_3': [delta]_{eta^<=3} - (eta^2 term + eta^3 term)
    'after_leading': delta minus the eta^2 term (zero for quadratic losses, O(eta^3) otherwise)
    and 'remainder': delta minus both terms (zero for quadratic losses, O(eta^4) otherwise)."""
    _check_losses(loss_a, loss_b, theta)
    exact = commutator_exact(loss_a, loss_b, theta)
    leading = lie_bracket_term(loss_a, loss_b, theta)
    third = next_order_term(loss_a, loss_b, theta)

    def truncate(expression, order):
        return sum((expression.coeff(eta, k) * eta ** k for k in range(order + 1)), sp.Integer(0))

    # every entry is a polynomial in eta and the loss coefficients, so expand() decides equality exactly
    return {"order_2": (exact.applyfunc(lambda e: truncate(e, 2)) - leading).applyfunc(sp.expand),
            "order_3": (exact.applyfunc(lambda e: truncate(e, 3)) - leading - third).applyfunc(sp.expand),
            "after_leading": (exact - leading).applyfunc(sp.expand),
            "remainder": (exact - leading - third).applyfunc(sp.expand)}


def lowest_eta_power(vector: sp.Matrix):
    """Smallest power of eta present in a polynomial vector (None for the zero vector)."""
    if not isinstance(vector, sp.MatrixBase) or not all(sp.sympify(e).is_polynomial(eta) for e in vector):
        raise ValueError(f"vector={shown(vector)}: must be a sympy.Matrix of polynomials in eta")
    powers = [min(m[0] for m in sp.Poly(e, eta).monoms()) for e in vector if e != 0]
    return min(powers) if powers else None


# ----------------------------------------------------------------------------------------------------------
# Test losses
# ----------------------------------------------------------------------------------------------------------

def parameter_symbols(n: int) -> list:
    """theta_0, ..., theta_{n-1} (real), n an integer >= 1."""
    n = count("n", n, 1)
    return list(sp.symbols(f"theta_0:{n}", real=True))


def quadratic_losses(n: int = 2) -> tuple:
    """L_X = 1/2 theta^T H_X theta - b_X^T theta with symbolic symmetric H_X and b_X: the test case in which
    the eta^2 term is the whole commutator (T_X = 0 and g_X is affine)."""
    theta = parameter_symbols(n)
    losses = []
    for name in ("A", "B"):
        H = sp.Matrix(n, n, lambda i, j: sp.Symbol(f"h{name}_{min(i, j)}{max(i, j)}", real=True))
        b = sp.Matrix([sp.Symbol(f"b{name}_{i}", real=True) for i in range(n)])
        x = sp.Matrix(theta)
        losses.append(sp.expand((x.T * H * x)[0] / 2 - (b.T * x)[0]))
    return losses[0], losses[1], theta


def quartic_losses(n: int = 2) -> tuple:
    """L_X = quadratic part + c_X theta_0^4 / 4 + e_X theta_0^2 theta_1^2 / 2: a non-quadratic test (a diagonal
    and a coupling quartic) where the eta^3 term is nonzero. Kept small: the exact commutator of two quartic
    steps is a degree-13 polynomial, and expanding it dominates the cost."""
    quad_a, quad_b, theta = quadratic_losses(n)
    losses = []
    for name, quadratic in (("A", quad_a), ("B", quad_b)):
        c, e = sp.symbols(f"c{name} e{name}", real=True)
        losses.append(sp.expand(quadratic + c * theta[0] ** 4 / 4 + e * theta[0] ** 2 * theta[-1] ** 2 / 2))
    return losses[0], losses[1], theta


# ----------------------------------------------------------------------------------------------------------
# General form with matrix symbols (what numerical code evaluates with Hessian-vector products)
# ----------------------------------------------------------------------------------------------------------

def bracket_symbols(n=sp.Symbol("P", integer=True, positive=True)) -> dict:
    """Matrix symbols H_A, H_B (n x n) and g_A, g_B (n x 1) of the general expansion; n an integer >= 1 or a
    SymPy symbol (default: P, positive integer)."""
    n = n if isinstance(n, sp.Symbol) else count("n", n, 1)
    return {"H_A": sp.MatrixSymbol("H_A", n, n), "H_B": sp.MatrixSymbol("H_B", n, n),
            "g_A": sp.MatrixSymbol("g_A", n, 1), "g_B": sp.MatrixSymbol("g_B", n, 1)}


def leading_term(n=sp.Symbol("P", integer=True, positive=True)):
    """eta^2 (H_B g_A - H_A g_B) as a MatAdd of (scalar) * H_X * g_Y products; the validation
    (validate/_execution_manifold/commutator.py) evaluates each product as a Hessian-vector product."""
    s = bracket_symbols(n)
    return eta ** 2 * s["H_B"] * s["g_A"] - eta ** 2 * s["H_A"] * s["g_B"]


def bracket_products(expression=None) -> list:
    """[(coefficient, hessian name, gradient name), ...] of a sum of scalar * H_X * g_Y products (default:
    the leading term). The coefficient is a SymPy expression in eta."""
    expression = leading_term() if expression is None else expression
    if not isinstance(expression, sp.MatrixExpr):
        raise ValueError(f"expression={shown(expression)}: must be a matrix expression, a sum of scalar * H_X * g_Y")
    products = []
    for term in sp.Add.make_args(sp.expand(expression)):
        coefficient, matrices = term.as_coeff_mmul()
        factors = [f for f in matrices.args if isinstance(f, sp.MatrixSymbol)]
        scalars = [f for f in matrices.args if not isinstance(f, sp.MatrixSymbol)]
        if len(factors) != 2:
            raise ValueError(f"expected a product H_X * g_Y, got {term}")
        products.append((coefficient * sp.Mul(*scalars), factors[0].name, factors[1].name))
    return products


# ----------------------------------------------------------------------------------------------------------
# Normalized defect and random-subspace baselines (Xu 2026, section 3.3.2; the block-matched one is ours)
# ----------------------------------------------------------------------------------------------------------

delta_norm, grad_a_norm, grad_b_norm = sp.symbols("delta_norm grad_a_norm grad_b_norm", nonnegative=True)
K, P = sp.symbols("K P", positive=True)  # not integer=True: SymPy would fold exp(loggamma) into overflowing gammas

# D = ||delta|| / (||eta g_A|| ||eta g_B||) (Xu 2026, section 3.3.2); by the leading term it is independent of
# eta to first order: ||H_B g_A - H_A g_B|| / (||g_A|| ||g_B||).
normalized_defect = delta_norm / ((eta * grad_a_norm) * (eta * grad_b_norm))

# Energy fraction of a fixed vector in a uniformly random K-dim subspace of R^P: rho^2 ~ Beta(K/2, (P-K)/2).
random_subspace_energy_mean = K / P
# Its norm fraction E[rho] = E[sqrt(Beta(K/2, (P-K)/2))]; -> sqrt(K/P) as P grows (the paper's baseline).
# written with log-gamma so that it evaluates at P ~ 10^6 (the gammas themselves overflow)
random_subspace_norm_mean = sp.exp(sp.loggamma((K + 1) / 2) + sp.loggamma(P / 2) - sp.loggamma(K / 2)
                                   - sp.loggamma((P + 1) / 2))
random_subspace_norm_paper = sp.sqrt(K / P)


def block_matched_energy_mean(n_blocks: int):
    """E[rho^2] = sum_b (K_b / n_b) w_b for K_b random orthonormal directions inside each block of n_b
    coordinates, w_b = ||delta_b||^2 / ||delta||^2: the paper's baseline restricted to the blocks its
    execution basis lives in, so that parameters without gradient do not dilute it.
    Returns (expression, K_b, n_b, w_b); n_blocks an integer >= 1."""
    n_blocks = count("n_blocks", n_blocks, 1)
    K_b = sp.symbols(f"K_b0:{n_blocks}", positive=True)
    n_b = sp.symbols(f"n_b0:{n_blocks}", positive=True)
    w_b = sp.symbols(f"w_b0:{n_blocks}", nonnegative=True)
    return sum(k / n * w for k, n, w in zip(K_b, n_b, w_b)), K_b, n_b, w_b


# perpendicular fractions of delta outside span(B), as functions of rho = ||B B^T delta|| / ||delta||
rho = sp.Symbol("rho", nonnegative=True)
perp_norm_frac = sp.sqrt(1 - rho ** 2)       # ||(I - B B^T) delta|| / ||delta||
perp_energy_frac = 1 - rho ** 2              # ||(I - B B^T) delta||^2 / ||delta||^2
perp_complement_frac = 1 - rho               # what the paper's code plots as ">92%"


# ----------------------------------------------------------------------------------------------------------

def _show(title: str, matrix: sp.Matrix) -> None:
    print(f"  {title}:")
    for entry in matrix:
        print(f"    {entry}")


def _print_expansion(args=None) -> None:
    print("General expansion of delta = theta_AB - theta_BA:")
    print(f"  leading (eta^2):  {leading_term()}")
    print("  next (eta^3):     -(eta^3/2) (T_B[g_A, g_A] - T_A[g_B, g_B])")
    print(f"  normalized defect D = {normalized_defect}")
    print(f"  random baseline: E[rho^2] = {random_subspace_energy_mean}, E[rho] = {random_subspace_norm_mean}"
          f"  (paper: {random_subspace_norm_paper})")
    print()


def _print_checks(name: str) -> None:
    loss_a, loss_b, theta = LOSSES[name](2)
    print(f"{name} losses on R^2:  L_A = {loss_a}")
    checks = verify_expansion(loss_a, loss_b, theta)
    for key, residual in checks.items():
        if key in ("after_leading", "remainder"):
            power = lowest_eta_power(residual)
            label = "the eta^2 term" if key == "after_leading" else "the eta^2 and eta^3 terms"
            print(f"  delta minus {label}: {'zero (exact)' if power is None else f'O(eta^{power})'}")
        else:
            print(f"  {key} residual is zero: {all(e == 0 for e in residual)}")


def _print_exact(args=None) -> None:
    loss_a, loss_b, theta = quadratic_losses(2)
    _show("quadratic exact delta (n = 2), first component", commutator_exact(loss_a, loss_b, theta)[:1, :])


LOSSES = {"quadratic": quadratic_losses, "quartic": quartic_losses}
# name -> (what it prints, printer), in printing order
SECTIONS = {
    "expansion": ("the general expansion, the normalized defect and the random baseline", _print_expansion),
    "quadratic": ("the expansion checked on two quadratic losses on R^2", lambda args: _print_checks("quadratic")),
    "quartic": ("the expansion checked on two quartic losses on R^2", lambda args: _print_checks("quartic")),
    "exact": ("the exact commutator of the quadratic losses", _print_exact),
}


def main(argv=None) -> None:
    args = section_parser("commutator", __doc__, SECTIONS).parse_args(argv)
    print(__doc__.split("\n\n")[0])
    print()
    print_sections(SECTIONS, args)


if __name__ == "__main__":
    main()
