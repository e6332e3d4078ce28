"""Bad and edge inputs of the public API of theory/ and sim/.

BAD: (function call, bad input, fragment of the message): every call raises a ValueError of one line that names
the input, before any compute. EDGE tests: inputs at the ends of what is allowed (NumPy and SymPy scalars, the
corners of sim's ranges, tiny and huge norms) give finite numbers, and the same numbers as their plain or
rescaled equivalents, or as a 60-digit evaluation of theory's expressions.
"""
import functools
import itertools
import json
import math

import mpmath
import numpy as np
import pytest
import sympy as sp

from sim import scan_snap as ss
from sim import signal_prop as S
from theory import _cli
from theory import commutator as C
from theory import scan_snap as th
from theory import signal_prop as T
from theory.signal_prop import BlockParams

NAN, INF = float("nan"), float("inf")
x = sp.Symbol("x", real=True)


@functools.lru_cache(maxsize=None)
def syn_small_table():
    return ss.ClassTable.from_classes(th.syn_small())


@functools.lru_cache(maxsize=None)
def small_table():
    """12 tokens, 2 classes, 2 queries: quick to integrate."""
    return ss.ClassTable.from_classes(th.dataset2_classes(2, 1, num_common=2, num_unique_per_next=3))


def reduced():
    return ss.reduced_params(1.0, 1.0, 34, 2)


def class_table(probabilities, query_rows, queries, next_tokens):
    return ss.ClassTable(*(np.array(v) for v in (probabilities, query_rows, queries, next_tokens)))


h = BlockParams()
CHAOTIC = BlockParams(alpha_A=0.1, alpha_M=0.999, sigma_w=16.0, activation="erf")   # lambda_g ~ 2.36 per block

# (id, call, fragment of the ValueError's message), grouped by module
BAD = {
    "theory._cli": [
        ("real str", lambda: _cli.real_number("a", "1"), "a='1': must be a finite real number"),
        ("real nan", lambda: _cli.real_number("a", NAN), "a=nan"),
        ("real inf", lambda: _cli.real_number("a", INF), "a=inf"),
        ("real -inf", lambda: _cli.real_number("a", -INF), "a=-inf"),
        ("real bool", lambda: _cli.real_number("a", True), "a=True"),
        ("real np.bool_", lambda: _cli.real_number("a", np.bool_(False)), "a=np.False_"),
        ("real None", lambda: _cli.real_number("a", None), "a=None"),
        ("real complex", lambda: _cli.real_number("a", 1j), "a=1j"),
        ("real symbol", lambda: _cli.real_number("a", x), "a=x"),
        ("real list", lambda: _cli.real_number("a", [1.0]), "a=[1.0]"),
        ("real 1-d array", lambda: _cli.real_number("a", np.array([1.0])), "a=array([1.])"),
        ("real huge int", lambda: _cli.real_number("a", 10**400), "must be a finite real number"),
        ("real below", lambda: _cli.real_number("a", -1.0, 0.0), ">= 0"),
        ("real open low", lambda: _cli.real_number("a", 0.0, 0.0, open_low=True), "> 0"),
        ("real above", lambda: _cli.real_number("a", 2.0, 0.0, 1.0), "in [0, 1]"),
        ("real np.float32 nan", lambda: _cli.real_number("a", np.float32("nan")), "a=np.float32(nan)"),
        ("count float", lambda: _cli.count("n", 2.0), "n=2.0: must be an integer >= 0"),
        ("count bool", lambda: _cli.count("n", True), "n=True"),
        ("count np.bool_", lambda: _cli.count("n", np.bool_(True)), "n=np.True_"),
        ("count str", lambda: _cli.count("n", "2"), "n='2'"),
        ("count None", lambda: _cli.count("n", None), "n=None"),
        ("count negative", lambda: _cli.count("n", -1), ">= 0"),
        ("count below", lambda: _cli.count("n", 1, 2), ">= 2"),
        ("count above", lambda: _cli.count("n", 5, 0, 4), "in [0, 4]"),
        ("count np.float64", lambda: _cli.count("n", np.float64(2.0)), "n=np.float64(2.0)"),
        ("count sympy Rational", lambda: _cli.count("n", sp.Rational(1, 2)), "n=1/2"),
        ("choice other", lambda: _cli.choice("c", "x", ("a", "b")), "c='x': allowed values are ('a', 'b')"),
        ("choice None", lambda: _cli.choice("c", None, ("a",)), "c=None"),
        ("choice list", lambda: _cli.choice("c", ["a"], ("a",)), "c=['a']"),
        ("choice int", lambda: _cli.choice("c", 0, ("a",)), "c=0"),
    ],
    "theory.signal_prop": [
        ("BlockParams alpha_A nan", lambda: BlockParams(alpha_A=NAN), "alpha_A=nan"),
        ("BlockParams alpha_M -inf", lambda: BlockParams(alpha_M=-INF), "alpha_M=-inf"),
        ("BlockParams sigma_A inf", lambda: BlockParams(sigma_A=INF), "sigma_A=inf"),
        ("BlockParams sigma_V negative", lambda: BlockParams(sigma_V=-1.0),
         "sigma_V=-1.0: must be a finite real number >= 0"),
        ("BlockParams sigma_w str", lambda: BlockParams(sigma_w="2"), "sigma_w='2'"),
        ("BlockParams sigma_2 None", lambda: BlockParams(sigma_2=None), "sigma_2=None"),
        ("BlockParams sigma_2 bool", lambda: BlockParams(sigma_2=True), "sigma_2=True"),
        ("BlockParams sigma_w complex", lambda: BlockParams(sigma_w=1j), "sigma_w=1j"),
        ("BlockParams sigma_w np nan", lambda: BlockParams(sigma_w=np.float32("nan")), "sigma_w=np.float32(nan)"),
        ("BlockParams alpha_A > 1 normalized", lambda: BlockParams(alpha_A=1.5), "alpha_A=1.5: must lie in [0, 1]"),
        ("BlockParams n_tokens 1", lambda: BlockParams(n_tokens=1), "n_tokens=1: must be an integer >= 2"),
        ("BlockParams n_tokens float", lambda: BlockParams(n_tokens=8.0), "n_tokens=8.0"),
        ("BlockParams n_tokens bool", lambda: BlockParams(n_tokens=True), "n_tokens=True"),
        ("BlockParams n_tokens np.bool_", lambda: BlockParams(n_tokens=np.bool_(True)), "n_tokens=np.True_"),
        ("BlockParams n_tokens str", lambda: BlockParams(n_tokens="8"), "n_tokens='8'"),
        ("BlockParams activation name", lambda: BlockParams(activation="gelu"), "activation='gelu'"),
        ("BlockParams activation None", lambda: BlockParams(activation=None), "activation=None"),
        ("BlockParams activation 2-var Lambda", lambda: BlockParams(activation=sp.Lambda((x, sp.Symbol("y")), x)),
         "one-variable sympy.Lambda"),
        ("BlockParams activation free symbol", lambda: BlockParams(activation=sp.Lambda(x, sp.Symbol("a") * x)),
         "not on ['a']"),
        ("BlockParams residual", lambda: BlockParams(residual="pre"), "residual='pre'"),
        ("BlockParams residual list", lambda: BlockParams(residual=["plain"]), "residual=['plain']"),
        ("replace bad", lambda: BlockParams().replace(sigma_w=-2.0), "sigma_w=-2.0"),
        ("mlp_kernel name", lambda: T.mlp_kernel("sigmoid"), "activation='sigmoid'"),
        ("mlp_kernel None", lambda: T.mlp_kernel(None), "activation=None"),
        ("mlp_kernel list", lambda: T.mlp_kernel(["tanh"]), "activation=['tanh']"),
        ("mlp_kernel 2-var Lambda", lambda: T.mlp_kernel(sp.Lambda((x, sp.Symbol("y")), x)), "one-variable"),
        ("mlp_slope_at_collapse str", lambda: T.mlp_slope_at_collapse("tanh"), "kernel='tanh'"),
        ("mlp_substitutions None", lambda: T.mlp_substitutions(None, 0.5), "kernel=None"),
        ("collapse_is_fixed_point str", lambda: T.collapse_is_fixed_point("erf"), "kernel='erf'"),
        ("collapse_substitutions dict", lambda: T.collapse_substitutions({}), "params={}"),
        ("collapse_substitutions q nan", lambda: T.collapse_substitutions(h, NAN), "q_value=nan"),
        ("collapse_substitutions q 0", lambda: T.collapse_substitutions(h, 0.0), "q_value=0.0"),
        ("collapse_substitutions q sympy -1", lambda: T.collapse_substitutions(h, sp.Integer(-1)), "q_value=-1"),
        ("attention_moment_integral n 0", lambda: T.attention_moment_integral(0), "n_value=0"),
        ("attention_moment_integral n float", lambda: T.attention_moment_integral(2.5), "n_value=2.5"),
        ("attention_moment_integral moment", lambda: T.attention_moment_integral(2, x), "moment=x"),
        ("residual_coefficient", lambda: T.residual_coefficient(0.5, "pre"), "residual='pre'"),
        ("block_map attention", lambda: T.block_map("exact"), "attention='exact'"),
        ("simplex_fixed_point_equations", lambda: T.simplex_fixed_point_equations("x"), "attention='x'"),
        ("BlockParams placement", lambda: BlockParams(placement="middle"), "placement='middle'"),
        ("BlockParams placement None", lambda: BlockParams(placement=None), "placement=None"),
        ("BlockParams sigma_b negative", lambda: BlockParams(sigma_b=-0.5), "sigma_b=-0.5"),
        ("BlockParams sigma_b nan", lambda: BlockParams(sigma_b=NAN), "sigma_b=nan"),
        ("block_map placement", lambda: T.block_map(placement="mid"), "placement='mid'"),
        ("collapse_multipliers placement", lambda: T.collapse_multipliers("x"), "placement='x'"),
        ("sum_rule placement", lambda: T.sum_rule("both"), "placement='both'"),
        ("finite_depth_exponents placement", lambda: T.finite_depth_exponents(None), "placement=None"),
        ("unrolled depth 0", lambda: T.finite_depth_exponents("post").unrolled(0), "depth=0"),
        ("poincare_gap degree", lambda: T.poincare_gap(0), "degree=0"),
        ("mlp_branch activation", lambda: T.mlp_branch("gelu"), "activation='gelu'"),
        ("mlp_branch_substitutions branch", lambda: T.mlp_branch_substitutions(None, 1, 0.5), "branch=None"),
    ],
    "sim.signal_prop": [
        ("propagate h dict", lambda: S.propagate({"alpha_A": 0.5}, 3), "must be a theory.signal_prop.BlockParams"),
        ("propagate depth -1", lambda: S.propagate(h, -1), "depth=-1: must be an integer >= 0"),
        ("propagate depth float", lambda: S.propagate(h, 2.0), "depth=2.0"),
        ("propagate depth bool", lambda: S.propagate(h, True), "depth=True"),
        ("propagate q0 0", lambda: S.propagate(h, 3, q0=0.0),
         "q0=0.0: must be a finite real number in [1e-100, 1e+100]"),
        ("propagate q0 tiny", lambda: S.propagate(h, 3, q0=1e-320), "q0=1e-320"),
        ("propagate q0 huge", lambda: S.propagate(h, 3, q0=1e300), "q0=1e+300"),
        ("propagate q0 inf", lambda: S.propagate(h, 3, q0=INF), "q0=inf"),
        ("propagate q0 str", lambda: S.propagate(h, 3, q0="1"), "q0='1'"),
        ("propagate rho0 nan", lambda: S.propagate(h, 3, rho0=NAN), "rho0=nan"),
        ("propagate rho0 above 1", lambda: S.propagate(h, 3, rho0=1.5),
         "rho0=1.5: must be a finite real number in [0, 1]"),
        ("propagate rho0 bool", lambda: S.propagate(h, 3, rho0=True), "rho0=True"),
        ("propagate attention", lambda: S.propagate(h, 3, attention="exact"), "attention='exact'"),
        ("propagate n_samples 0", lambda: S.propagate(h, 3, n_samples=0), "n_samples=0"),
        ("propagate n_samples float", lambda: S.propagate(h, 3, n_samples=1.5), "n_samples=1.5"),
        ("propagate seed -1", lambda: S.propagate(h, 3, seed=-1), "seed=-1"),
        ("propagate seed str", lambda: S.propagate(h, 3, seed="a"), "seed='a'"),
        ("propagate sigma_V huge", lambda: S.propagate(h.replace(sigma_V=1e200), 3),
         "h.sigma_V=1e+200: sim evaluates 0 or values in [1e-15, 1e+15]"),
        ("propagate sigma_w tiny", lambda: S.propagate(h.replace(sigma_w=1e-300), 3), "h.sigma_w=1e-300"),
        ("propagate tanh sigma_w 20", lambda: S.propagate(h.replace(sigma_w=20.0), 3),
         "h.sigma_w=20.0: sim evaluates 0 or values in [1e-15, 16]"),
        ("propagate large_n sigma_A", lambda: S.propagate(h.replace(sigma_A=40.0), 3, attention="large_n"),
         "sigma_A <= 14"),
        ("propagate dead attention", lambda: S.propagate(h.replace(alpha_A=1.0, sigma_V=0.0), 3), "LN(0) is undefined"),
        ("propagate dead MLP", lambda: S.propagate(h.replace(alpha_M=1.0, sigma_2=0.0), 3),
         "alpha_M=1 and an MLP output of zero"),
        ("propagate Jacobian overflow", lambda: S.propagate(CHAOTIC, 2000, rho0=0.99, attention="large_n"),
         "depth=2000: the norm q"),
        ("exponents h None", lambda: S.exponents(None), "h=None"),
        ("exponents q inf", lambda: S.exponents(h, q=INF), "q=inf"),
        ("exponents q nan", lambda: S.exponents(h, q=NAN), "q=nan"),
        ("exponents q 0", lambda: S.exponents(h, q=0.0), "q=0.0"),
        ("exponents q tiny", lambda: S.exponents(h, q=1e-300), "q=1e-300"),
        ("exponents q str", lambda: S.exponents(h, q="1"), "q='1'"),
        ("exponents relu sigma_w huge", lambda: S.exponents(h.replace(activation="relu", sigma_w=1e200)),
         "h.sigma_w=1e+200"),
        ("exponents Lambda sigma_w 1e6",
         lambda: S.exponents(h.replace(activation=sp.Lambda(x, sp.sin(x)), sigma_w=1e6)),
         "kernel quadrature"),
        ("exponents dead MLP", lambda: S.exponents(h.replace(alpha_M=1.0, sigma_w=0.0)), "LN(0) is undefined"),
        ("exponent_grid base", lambda: S.exponent_grid(None, "alpha", [0.5], "sigma_w", [1.0]), "base=None"),
        ("exponent_grid x_field", lambda: S.exponent_grid(h, "width", [0.5], "sigma_w", [1.0]), "x_field='width'"),
        ("exponent_grid same fields", lambda: S.exponent_grid(h, "alpha", [0.5], "alpha_M", [0.5]), "different fields"),
        ("exponent_grid empty", lambda: S.exponent_grid(h, "alpha", [], "sigma_w", [1.0]),
         "x_values: must be a non-empty 1-D"),
        ("exponent_grid 2-D", lambda: S.exponent_grid(h, "alpha", [[0.5]], "sigma_w", [1.0]), "x_values"),
        ("exponent_grid scalar", lambda: S.exponent_grid(h, "alpha", 0.5, "sigma_w", [1.0]), "x_values"),
        ("exponent_grid str", lambda: S.exponent_grid(h, "alpha", ["a"], "sigma_w", [1.0]), "x_values"),
        ("exponent_grid ragged", lambda: S.exponent_grid(h, "alpha", [0.5, [0.5]], "sigma_w", [1.0]), "x_values"),
        ("exponent_grid bool", lambda: S.exponent_grid(h, "alpha", [True], "sigma_w", [1.0]), "x_values"),
        ("exponent_grid nan", lambda: S.exponent_grid(h, "alpha", [0.5], "sigma_w", [1.0, NAN]),
         "y_values: must be a non-empty 1-D sequence of finite real numbers, got nan"),
        ("exponent_grid extreme sigma_w", lambda: S.exponent_grid(h, "alpha", [0.5], "sigma_w", [1.0, 1e300]),
         "y_values: sigma_w=1e+300"),
        ("exponent_grid tiny sigma_w", lambda: S.exponent_grid(h, "alpha", [0.5], "sigma_w", [1e-300]),
         "y_values: sigma_w=1e-300"),
        ("exponent_grid alpha > 1", lambda: S.exponent_grid(h, "alpha", [0.5, 1.2], "sigma_w", [1.0]),
         "x_values: alpha_A=1.2"),
        ("exponent_grid dead point", lambda: S.exponent_grid(h, "alpha_A", [1.0], "sigma_V", [0.0, 1.0]),
         "a grid point: alpha_A=1 and sigma_V=0"),
        ("exponent_grid q inf", lambda: S.exponent_grid(h, "alpha", [0.5], "sigma_w", [1.0], q=INF), "q=inf"),
        ("edge_of_chaos base", lambda: S.edge_of_chaos("h"), "base='h'"),
        ("edge_of_chaos field", lambda: S.edge_of_chaos(h, "width"), "field='width'"),
        ("edge_of_chaos bracket nan", lambda: S.edge_of_chaos(h, "sigma_w", (NAN, 2.0)), "bracket[0]=nan"),
        ("edge_of_chaos bracket reversed", lambda: S.edge_of_chaos(h, "sigma_w", (2.0, 1.0)), "needs low < high"),
        ("edge_of_chaos bracket one", lambda: S.edge_of_chaos(h, "sigma_w", (1.0,)), "must be a pair"),
        ("edge_of_chaos bracket str", lambda: S.edge_of_chaos(h, "sigma_w", "12"), "must be a pair"),
        ("edge_of_chaos bracket beyond quadrature", lambda: S.edge_of_chaos(h, "sigma_w", (1.0, 40.0)),
         "bracket: sigma_w=40.0"),
        ("edge_of_chaos relu", lambda: S.edge_of_chaos(h.replace(activation="relu"), "sigma_w"), "no edge of chaos"),
        ("critical_point free", lambda: S.critical_point(h, free=("alpha", "alpha")), "free=('alpha', 'alpha')"),
        ("critical_point free str", lambda: S.critical_point(h, free="ab"), "free='ab'"),
        ("critical_point bounds nan", lambda: S.critical_point(h, bounds=((NAN, 1.0), (1.0, 2.0))), "bounds[0][0]=nan"),
        ("critical_point bounds shape", lambda: S.critical_point(h, bounds=(0.1, 0.9)),
         "bounds[0]=0.1: must be a pair"),
        ("critical_point tol", lambda: S.critical_point(h, tol=-1.0), "tol=-1.0"),
        ("critical_point gradient", lambda: S.critical_point(h, depth=16, gradient="isotropic"), "gradient='isotropic'"),
        ("critical_point depth", lambda: S.critical_point(h, depth=0), "depth=0"),
        ("critical_point q0 alone", lambda: S.critical_point(h, q0=2.0), "q0=2.0: the input norm"),
        ("exponents depth 0", lambda: S.exponents(h, depth=0), "depth=0: must be an integer in [1, 100000]"),
        ("exponents depth float", lambda: S.exponents(h, depth=16.0), "depth=16.0"),
        ("exponents depth huge", lambda: S.exponents(h, depth=10**9), "depth=1000000000"),
        ("exponents q with depth", lambda: S.exponents(h, q=1.0, depth=4), "q=1.0: the finite-depth exponents"),
        ("exponents q0 without depth", lambda: S.exponents(h, q0=1.0), "q0=1.0: the input norm"),
        ("exponents q0 nan", lambda: S.exponents(h, depth=4, q0=NAN), "q0=nan"),
        ("exponents q0 huge", lambda: S.exponents(h, depth=4, q0=1e300), "q0=1e+300"),
        ("exponents norm leaves float64", lambda: S.exponents(h.replace(alpha_A=0.999999, alpha_M=0.999999,
                                                                        sigma_V=0.0, sigma_2=0.0), depth=40, q0=1e-100),
         "depth=40: the collapsed norm"),
        ("exponents bias beyond quadrature", lambda: S.exponents(h.replace(sigma_w=10.0, sigma_b=14.0)),
         "sqrt(sigma_w^2 + sigma_b^2) = 17.2"),
        ("exponent_grid depth", lambda: S.exponent_grid(h, "alpha", [0.5], "sigma_w", [1.0], depth=-2), "depth=-2"),
        ("exponent_grid q0 str", lambda: S.exponent_grid(h, "alpha", [0.5], "sigma_w", [1.0], depth=2, q0="1"),
         "q0='1'"),
        ("exponent_grid bias beyond quadrature", lambda: S.exponent_grid(h, "sigma_b", [1.0, 15.0], "sigma_w", [8.0]),
         "a grid point: sigma_w=8.0, sigma_b=15.0"),
        ("propagate post large_n q0", lambda: S.propagate(h.replace(placement="post"), 2, q0=20.0, attention="large_n"),
         "q0=20.0: with placement='post'"),
        ("simplex_fixed_point h", lambda: S.simplex_fixed_point({}), "h={}"),
        ("simplex_fixed_point rho_start", lambda: S.simplex_fixed_point(h, rho_start=2.0), "rho_start=2.0"),
        ("simplex_fixed_point plain", lambda: S.simplex_fixed_point(h.replace(residual="plain")),
         "residual='plain' has no fixed point"),
        ("attention_moments n 0", lambda: S.attention_moments(0, 0.5, 1.0), "n_tokens=0"),
        ("attention_moments n float", lambda: S.attention_moments(4.0, 0.5, 1.0), "n_tokens=4.0"),
        ("attention_moments rho nan", lambda: S.attention_moments(4, NAN, 1.0), "rho=nan"),
        ("attention_moments rho negative", lambda: S.attention_moments(4, -0.1, 1.0), "rho=-0.1"),
        ("attention_moments sigma_A inf", lambda: S.attention_moments(4, 0.5, INF), "sigma_A=inf"),
        ("attention_moments large_n sigma_A", lambda: S.attention_moments(4, 0.0, 30.0, method="large_n"),
         "sigma_A=30.0: must be a finite real number in [0, 14]"),
        ("attention_moments method", lambda: S.attention_moments(4, 0.5, 1.0, method="exact"), "method='exact'"),
        # arrays this machine cannot hold: 3 x n_samples x n_tokens float64 common random numbers (36 TiB at
        # n_tokens = 10^8), a trajectory of (depth + 1) x 4 float64 (29 TiB at depth = 10^12)
        ("propagate n_tokens beyond memory", lambda: S.propagate(BlockParams(n_tokens=10 ** 8), 2, 1.0, 0.5),
         "h.n_tokens=100000000, n_samples=16384: the common random numbers"),
        ("propagate n_samples beyond memory", lambda: S.propagate(h, 2, n_samples=10 ** 12),
         "n_samples=1000000000000"),
        ("propagate depth beyond memory", lambda: S.propagate(h, 10 ** 12, attention="large_n"),
         "depth=1000000000000: the trajectory"),
        ("attention_moments n beyond memory", lambda: S.attention_moments(10 ** 8, 0.5, 1.0),
         "n_tokens=100000000, n_samples=16384"),
        ("attention_moments seed", lambda: S.attention_moments(4, 0.5, 1.0, seed=-2), "seed=-2"),
        ("attention_moments_quadrature variance", lambda: S.attention_moments_quadrature(8, 0.0, 10.0),
         "sigma_A^2 (1 - rho) <= 9"),
        ("attention_moments_quadrature nodes", lambda: S.attention_moments_quadrature(8, 0.0, 1.0, nodes=4), "nodes=4"),
        ("gaussian_quadrature panels", lambda: S.gaussian_quadrature(0), "panels=0"),
        ("gaussian_quadrature half_width", lambda: S.gaussian_quadrature(10, half_width=-1.0), "half_width=-1.0"),
        ("compiled_kernel name", lambda: S.compiled_kernel("sigmoid"), "activation='sigmoid'"),
        ("compiled_kernel list", lambda: S.compiled_kernel(["tanh"]), "activation=['tanh']"),
        ("compile_expression args", lambda: S.compile_expression(T.rho**2, ()), "also depends on ['rho']"),
        ("compile_expression expr", lambda: S.compile_expression("rho", (T.rho,)), "expr='rho'"),
    ],
    "theory.scan_snap": [
        ("SequenceClasses n_vocab 1", lambda: th.SequenceClasses(1, (0,), (0,), ((1,),)), "n_vocab=1"),
        ("SequenceClasses n_vocab float", lambda: th.SequenceClasses(3.0, (0,), (1,), ((1, 0, 0),)), "n_vocab=3.0"),
        ("SequenceClasses n_vocab bool", lambda: th.SequenceClasses(True, (0,), (1,), ((1, 0),)), "n_vocab=True"),
        ("SequenceClasses queries None", lambda: th.SequenceClasses(3, None, (1,), ((1, 0, 0),)),
         "queries=None: must be a sequence"),
        ("SequenceClasses queries str", lambda: th.SequenceClasses(3, "0", (1,), ((1, 0, 0),)), "queries='0'"),
        ("SequenceClasses lengths", lambda: th.SequenceClasses(3, (0, 1), (1,), ((1, 0, 0),)), "need equal lengths"),
        ("SequenceClasses empty", lambda: th.SequenceClasses(3, (), (), ()), "need equal lengths >= 1"),
        ("SequenceClasses token float", lambda: th.SequenceClasses(3, (0.5,), (1,), ((1, 0, 0),)), "queries[0]=0.5"),
        ("SequenceClasses token bool", lambda: th.SequenceClasses(3, (True,), (1,), ((1, 0, 0),)), "queries[0]=True"),
        ("SequenceClasses token range", lambda: th.SequenceClasses(3, (0,), (3,), ((1, 0, 0),)),
         "next_tokens[0]=3: must be an integer in [0, 2]"),
        ("SequenceClasses next not distinct", lambda: th.SequenceClasses(3, (0, 0), (1, 1), ((1, 0, 0),) * 2),
         "must be distinct"),
        ("SequenceClasses probability nan", lambda: th.SequenceClasses(3, (0,), (1,), ((NAN, 0, 0),)),
         "probabilities[0][0]=nan"),
        ("SequenceClasses probability inf", lambda: th.SequenceClasses(3, (0,), (1,), ((INF, 0, 0),)),
         "probabilities[0][0]=inf"),
        ("SequenceClasses probability negative", lambda: th.SequenceClasses(3, (0,), (1,), ((2, -1, 0),)),
         "probabilities[0][1]=-1"),
        ("SequenceClasses probability symbol", lambda: th.SequenceClasses(3, (0,), (1,), ((x, 0, 0),)),
         "probabilities[0][0]=x"),
        ("SequenceClasses probability str", lambda: th.SequenceClasses(3, (0,), (1,), (("1", 0, 0),)),
         "probabilities[0][0]='1'"),
        ("SequenceClasses row short", lambda: th.SequenceClasses(3, (0,), (1,), ((1, 0),)),
         "need 3 non-negative entries, got 2"),
        ("SequenceClasses row sum", lambda: th.SequenceClasses(3, (0,), (1,), ((sp.Rational(1, 2), 0, 0),)),
         "must sum to 1"),
        ("SequenceClasses row scalar", lambda: th.SequenceClasses(3, (0,), (1,), (1,)), "probabilities[0]=1"),
        ("dataset2 num_last 0", lambda: th.dataset2_classes(0, 1), "num_last=0"),
        ("dataset2 num_last bool", lambda: th.dataset2_classes(True, 1), "num_last=True"),
        ("dataset2 num_next float", lambda: th.dataset2_classes(2, 1.0), "num_next_per_last=1.0"),
        ("dataset2 num_common negative", lambda: th.dataset2_classes(2, 1, num_common=-1), "num_common=-1"),
        ("dataset2 unique_per_next 0", lambda: th.dataset2_classes(2, 1, num_unique_per_next=0),
         "num_unique_per_next=0"),
        ("dataset2 unique_min negative", lambda: th.dataset2_classes(2, 1, unique_min=-1), "unique_min=-1"),
        ("dataset2 unique_max nan", lambda: th.dataset2_classes(2, 1, unique_max=NAN), "unique_max=nan"),
        ("dataset2 common_weight inf", lambda: th.dataset2_classes(2, 1, common_weight=INF), "common_weight=inf"),
        ("dataset2 common_weight str", lambda: th.dataset2_classes(2, 1, common_weight="1"), "common_weight='1'"),
        ("dataset2 no weight", lambda: th.dataset2_classes(2, 1, num_common=0, unique_min=0, unique_max=0),
         "every class needs a positive total weight"),
        ("syn_medium 0", lambda: th.syn_medium(0), "num_last=0"),
        ("predicted_snap_times K 0", lambda: th.predicted_snap_times(0, 34, 1.0), "K_value=0"),
        ("predicted_snap_times K float", lambda: th.predicted_snap_times(2.5, 34, 1.0), "K_value=2.5"),
        ("predicted_snap_times M 1", lambda: th.predicted_snap_times(2, 1, 1.0), "M_value=1: must be an integer >= 2"),
        ("predicted_snap_times eta 0", lambda: th.predicted_snap_times(2, 34, 0.0),
         "eta_Y_value=0.0: must be a finite real number > 0"),
        ("predicted_snap_times eta nan", lambda: th.predicted_snap_times(2, 34, NAN), "eta_Y_value=nan"),
        ("predicted_snap_times eta tiny", lambda: th.predicted_snap_times(2, 34, 1e-308), "exceeds float64's range"),
        ("predicted_snap_times str", lambda: th.predicted_snap_times("2", 34, 1.0), "K_value='2'"),
        ("long_sequence_attention lengths", lambda: th.long_sequence_attention([0.5, 0.5], [0.0]), "need one length"),
        ("long_sequence_attention zeros", lambda: th.long_sequence_attention([0, 0], [0, 0]), "all zero"),
        ("verify_lemma1 0", lambda: th.verify_lemma1(0), "n_vocab=0"),
        ("lemma1_gradients_numeric nan", lambda: th.lemma1_gradients_numeric([[NAN, 0], [0, 0]], [0, 0], [0.5, 0.5], 0),
         "Y_values[0][0]=nan"),
        ("lemma1_gradients_numeric token", lambda: th.lemma1_gradients_numeric([[0, 0], [0, 0]], [0, 0], [0.5, 0.5], 5),
         "next_token=5"),
        ("lemma1_gradients_numeric shape", lambda: th.lemma1_gradients_numeric([[0, 0]], [0, 0], [0.5, 0.5], 0),
         "need an M x M matrix"),
        ("time_of_decoder_scale negative", lambda: th.time_of_decoder_scale(-1), "scale=-1"),
    ],
    "theory.commutator": [
        ("parameter_symbols 0", lambda: C.parameter_symbols(0), "n=0: must be an integer >= 1"),
        ("parameter_symbols -1", lambda: C.parameter_symbols(-1), "n=-1"),
        ("parameter_symbols float", lambda: C.parameter_symbols(2.5), "n=2.5"),
        ("parameter_symbols bool", lambda: C.parameter_symbols(True), "n=True"),
        ("quadratic_losses 0", lambda: C.quadratic_losses(0), "n=0"),
        ("quartic_losses str", lambda: C.quartic_losses("2"), "n='2'"),
        ("commutator_series order float", lambda: C.commutator_series(*C.quadratic_losses(1), order=2.5), "order=2.5"),
        ("commutator_series order negative", lambda: C.commutator_series(*C.quadratic_losses(1), order=-1), "order=-1"),
        ("block_matched 0", lambda: C.block_matched_energy_mean(0), "n_blocks=0"),
        ("block_matched float", lambda: C.block_matched_energy_mean(2.5), "n_blocks=2.5"),
        ("bracket_symbols 0", lambda: C.bracket_symbols(0), "n=0"),
        ("leading_term float", lambda: C.leading_term(2.5), "n=2.5"),
        ("bracket_products number", lambda: C.bracket_products(5), "expression=5"),
        ("bracket_products scalar", lambda: C.bracket_products(x), "must be a matrix expression"),
        ("gradient str", lambda: C.gradient("x", [x]), "loss='x'"),
        ("gradient number", lambda: C.gradient(3, [x]), "loss=3"),
        ("gradient matrix", lambda: C.gradient(sp.Matrix([x]), [x]), "loss=Matrix"),
        ("gradient empty theta", lambda: C.gradient(x**2, []), "theta=[]"),
        ("gradient theta not symbols", lambda: C.gradient(x**2, [x + 1]), "theta=[x + 1]"),
        ("gradient theta repeated", lambda: C.gradient(x**2, [x, x]), "distinct SymPy symbols"),
        ("gradient theta symbol", lambda: C.gradient(x**2, x), "theta=x"),
        ("hessian theta str", lambda: C.hessian(x**2, "x"), "theta='x'"),
        ("sgd_step point", lambda: C.sgd_step(x**2, [x], [1.0]), "point=[1.0]"),
        ("sgd_step point shape", lambda: C.sgd_step(x**2, [x], sp.Matrix([1, 2])), "1 x 1 sympy.Matrix"),
        ("commutator_exact loss_b", lambda: C.commutator_exact(x**2, None, [x]), "loss_b=None"),
        ("lie_bracket_term theta", lambda: C.lie_bracket_term(x**2, x**3, []), "theta=[]"),
        ("next_order_term loss_a", lambda: C.next_order_term("x", x**3, [x]), "loss_a='x'"),
        ("verify_expansion theta", lambda: C.verify_expansion(x**2, x**3, [1]), "theta=[1]"),
        ("lowest_eta_power list", lambda: C.lowest_eta_power([C.eta]), "vector=[eta]"),
        ("lowest_eta_power non-polynomial", lambda: C.lowest_eta_power(sp.Matrix([sp.exp(C.eta)])),
         "polynomials in eta"),
    ],
    "sim.scan_snap": [
        ("ClassTable.from_classes dict", lambda: ss.ClassTable.from_classes({}), "classes={}"),
        ("ClassTable rows", lambda: class_table(np.ones((2, 3)), [0, 0], [0], [1, 2]), "whose rows sum to 1"),
        ("ClassTable probabilities nan", lambda: class_table([[NAN, 1.0]], [0], [0], [1]),
         "probabilities: every value must be finite >= 0, got nan"),
        ("ClassTable 1-D probabilities", lambda: class_table([0.5, 0.5], [0], [0], [1]),
         "probabilities: must be an array of real numbers with 2 dimensions"),
        ("ClassTable query_rows range", lambda: class_table([[0.5, 0.5]], [1], [0], [1]),
         "query_rows=array([1]): must be a 1-D array of 1 integers in [0, 1)"),
        ("ClassTable next_tokens float", lambda: class_table([[0.5, 0.5]], [0], [0], [1.0]),
         "next_tokens=array([1.])"),
        ("ClassTable queries repeated", lambda: class_table([[0.5, 0.5]] * 2, [0, 1], [0, 0], [0, 1]),
         "must be distinct tokens"),
        ("attention_from_logits table", lambda: ss.attention_from_logits({}, np.zeros((2, 34))), "table={}"),
        ("attention_from_logits shape", lambda: ss.attention_from_logits(syn_small_table(), np.zeros((3, 5))),
         "Z_rows: need shape (..., n_queries, M) = (..., 2, 34), got (3, 5)"),
        ("attention_from_logits nan", lambda: ss.attention_from_logits(syn_small_table(), np.full((2, 34), NAN)),
         "Z_rows: every value must be finite, got nan"),
        ("attention_from_logits inf", lambda: ss.attention_from_logits(syn_small_table(), np.full((2, 34), INF)),
         "got inf"),
        ("attention_from_logits str", lambda: ss.attention_from_logits(syn_small_table(), "a"),
         "Z_rows: must be an array of real numbers"),
        ("backprop_norms Y shape", lambda: ss.backprop_norms(syn_small_table(), np.zeros((3, 3)), np.zeros((2, 34))),
         "Y: need shape (..., 34, 34)"),
        ("backprop_norms leading shapes",
         lambda: ss.backprop_norms(syn_small_table(), np.zeros((2, 34, 34)), np.zeros((3, 2, 34))),
         "leading shape of Z_rows (3,)"),
        ("backprop_norms Y nan",
         lambda: ss.backprop_norms(syn_small_table(), np.full((34, 34), NAN), np.zeros((2, 34))),
         "got nan"),
        ("backprop_norms Y huge", lambda: ss.backprop_norms(syn_small_table(), np.eye(34) * 1e308, np.zeros((2, 34))),
         "got 1e+308"),
        ("speed_coefficient M 1", lambda: ss.speed_coefficient([1.0], 1, 2, 1.0),
         "M=1: must be a finite real number in (1, 1e+150]"),
        ("speed_coefficient M huge", lambda: ss.speed_coefficient([1.0], 1e300, 2, 1.0), "M=1e+300"),
        ("speed_coefficient K 0", lambda: ss.speed_coefficient([1.0], 34, 0, 1.0), "K=0"),
        ("speed_coefficient eta negative", lambda: ss.speed_coefficient([1.0], 34, 2, -1.0), "eta_Y=-1.0"),
        ("speed_coefficient t negative", lambda: ss.speed_coefficient([-1.0], 34, 2, 1.0),
         "t: every value must be finite >= 0, got -1.0"),
        ("speed_coefficient t inf", lambda: ss.speed_coefficient([INF], 34, 2, 1.0), "got inf"),
        ("speed_coefficient t huge", lambda: ss.speed_coefficient([1e300], 34, 2, 1.0), "M eta_Y t / K = 1.7e+301"),
        ("decoder_scale t str", lambda: ss.decoder_scale("a", 34, 1.0), "t: must be an array of real numbers"),
        ("decoder_scale eta nan", lambda: ss.decoder_scale([1.0], 34, NAN), "eta_Y=nan"),
        ("reduced_closed_form C0 0", lambda: ss.reduced_closed_form([1.0], 1.0, 1.0, 34, 2, 0.0), "C0=0.0"),
        ("reduced_closed_form eta_Z inf", lambda: ss.reduced_closed_form([1.0], 1.0, INF, 34, 2), "eta_Z=inf"),
        ("reduced_closed_form eta_Z huge", lambda: ss.reduced_closed_form([1e10], 1.0, 1e300, 34, 2),
         "eta_Z=1e+300: must be a finite real number in [1e-30, 1e+30]"),
        ("reduced_closed_form eta_Y tiny", lambda: ss.reduced_closed_form([1e10], 1e-300, 1.0, 34, 2), "eta_Y=1e-300"),
        ("reduced_params nan", lambda: ss.reduced_params(NAN, 1.0, 34, 2),
         "eta_Y: every value must be finite, got nan"),
        ("reduced_params bool", lambda: ss.reduced_params(True, 1.0, 34, 2), "eta_Y: must be an array of real numbers"),
        ("reduced_params shapes", lambda: ss.reduced_params([1, 2], [1, 2, 3], 34, 2), "do not broadcast"),
        ("reduced_params empty", lambda: ss.reduced_params([], 1.0, 34, 2), "need at least one setting"),
        ("reduced_params M 1", lambda: ss.reduced_params(1.0, 1.0, 1.0, 2), "M > 1"),
        ("reduced_params C0 negative", lambda: ss.reduced_params(1.0, 1.0, 34, 2, -1.0), "C0=-1.0"),
        ("integrate system", lambda: ss.integrate("x", [0, 1], np.zeros(4), reduced()), "system='x'"),
        ("integrate t_eval nan", lambda: ss.integrate("reduced", [0, NAN], np.zeros(4), reduced()),
         "t_eval: every value must be finite"),
        ("integrate t_eval decreasing", lambda: ss.integrate("reduced", [1, 0], np.zeros(4), reduced()),
         "strictly increasing"),
        ("integrate t_eval one", lambda: ss.integrate("reduced", [0], np.zeros(4), reduced()), "at least 2 times"),
        ("integrate t_eval 2-D", lambda: ss.integrate("reduced", [[0, 1]], np.zeros(4), reduced()),
         "t_eval: must be an array of real numbers with 1 dimension"),
        ("integrate y0 nan", lambda: ss.integrate("reduced", [0, 1], np.full(4, NAN), reduced()),
         "y0: every value must be finite"),
        ("integrate y0 width", lambda: ss.integrate("reduced", [0, 1], np.zeros(3), reduced()),
         "has 4 state components, got 3"),
        ("integrate y0 3-D", lambda: ss.integrate("reduced", [0, 1], np.zeros((1, 1, 4)), reduced()), "got 3-D"),
        ("integrate batch sizes", lambda: ss.integrate("reduced", [0, 1], np.zeros((2, 4)), reduced()),
         "batch sizes differ"),
        ("integrate empty batch", lambda: ss.integrate("reduced", [0, 1], np.zeros((0, 4)), np.zeros((0, 5))),
         "need at least one setting"),
        ("integrate params width", lambda: ss.integrate("reduced", [0, 1], np.zeros(4), np.ones((1, 3))),
         "needs 5 values per setting"),
        ("integrate params nan", lambda: ss.integrate("reduced", [0, 1], np.zeros(4), np.full((1, 5), NAN)),
         "params: every value must be finite"),
        ("integrate yz_flow layout", lambda: ss.integrate("yz_flow", [0, 1], np.zeros(12 * 12 + 24), np.ones((1, 10))),
         "with integers M >= 2"),
        ("integrate yz_flow query row",   # query_row[0] = 7 of 2 query rows
         lambda: ss.integrate("yz_flow", [0, 1], np.zeros(12 * 12 + 24),
                              ss.yz_flow_params(small_table(), 1.0, 1.0) + np.eye(1, 5 + 4 + 24, 5) * 7),
         "query_row (columns 5..6) must be integers in [0, 2)"),
        ("integrate lemma4 P",           # P doubled
         lambda: ss.integrate("lemma4", [0, 1], np.zeros(1 + 24),
                              ss.lemma4_params(small_table(), 1.0, 1.0) * np.r_[np.ones(7), 2 * np.ones(24)]),
         "must be >= 0 and sum to 1"),
        ("integrate rtol nan", lambda: ss.integrate("reduced", [0, 1], np.zeros(4), reduced(), rtol=NAN), "rtol=nan"),
        ("integrate atol 0", lambda: ss.integrate("reduced", [0, 1], np.zeros(4), reduced(), atol=0.0), "atol=0.0"),
        ("integrate max_steps 0", lambda: ss.integrate("reduced", [0, 1], np.zeros(4), reduced(), max_steps=0),
         "max_steps=0"),
        ("integrate dense str", lambda: ss.integrate("reduced", [0, 1], np.zeros(4), reduced(), dense="yes"),
         "dense='yes'"),
        ("integrate_reduced params", lambda: ss.integrate_reduced(np.ones(5), [0, 1]), "M > 1"),
        ("yz_flow_params nan", lambda: ss.yz_flow_params(syn_small_table(), NAN, 1.0),
         "eta_Y: every value must be finite >= 1e-30, <= 1e+30, got nan"),
        ("yz_flow_params zero", lambda: ss.yz_flow_params(syn_small_table(), 1.0, 0.0),
         "eta_Z: every value must be finite >= 1e-30, <= 1e+30, got 0.0"),
        ("yz_flow_params shapes", lambda: ss.yz_flow_params(syn_small_table(), [1, 2], [1, 2, 3]), "do not broadcast"),
        ("yz_flow_params empty", lambda: ss.yz_flow_params(syn_small_table(), [], 1.0), "need at least one setting"),
        ("lemma4_params table", lambda: ss.lemma4_params(None, 1.0, 1.0), "table=None"),
        ("integrate_yz_flow Y0 shape", lambda: ss.integrate_yz_flow(small_table(), 1.0, 1.0, [0, 1], Y0=np.zeros(3)),
         "Y0: need shape (12, 12) or (1, 12, 12), got (3,)"),
        ("integrate_yz_flow Y0 nan",
         lambda: ss.integrate_yz_flow(small_table(), 1.0, 1.0, [0, 1], Y0=np.full((12, 12), NAN)),
         "got nan"),
        ("integrate_yz_flow Z0 inf",
         lambda: ss.integrate_yz_flow(small_table(), 1.0, 1.0, [0, 1], Z0=np.full((2, 12), INF)),
         "Z0: every value must be finite, got inf"),
        ("integrate_lemma4 t_eval nan", lambda: ss.integrate_lemma4(small_table(), 1.0, 1.0, [0, NAN]), "t_eval"),
        ("system_id", lambda: ss.system_id(0), "system=0"),
        ("generate_formulas_module path", lambda: ss.generate_formulas_module("/nonexistent/dir/f.py"),
         "path='/nonexistent/dir/f.py'"),
    ],
}
BAD_CASES = [pytest.param(call, fragment, id=f"{module}: {name}") for module, rows in BAD.items()
             for name, call, fragment in rows]


def test_every_module_has_thirty_bad_inputs():
    assert all(len(rows) >= 30 for rows in BAD.values()), {m: len(r) for m, r in BAD.items()}


@pytest.mark.parametrize("call, fragment", BAD_CASES)
def test_bad_input_raises_one_line_value_error(call, fragment):
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert fragment in message, message
    assert "\n" not in message


def test_solver_failure_says_which_setting_and_why():
    """A setting the adaptive solver cannot finish is a RuntimeError naming the setting and the reasons, not NaN
    in the solution (validate's scan_snap retries the settings of a failed batch one by one on it): eta_Z = 1e30
    makes the reduced system too stiff for any step (reduced_closed_form has its solution), and 50 steps are
    too few for the ordinary one."""
    params = ss.reduced_params([1.0, 1.0], [1.0, 1e30], 34, 2)
    with pytest.raises(RuntimeError, match=r"setting 1 stopped early \(status 2: .* diverges or is too stiff"):
        ss.integrate("reduced", [0.0, 10.0], np.zeros((2, 4)), params)
    with pytest.raises(RuntimeError, match=r"setting 0 stopped early \(status 1: .* max_steps=20 is too few"):
        ss.integrate("reduced", [0.0, 10.0], np.zeros((2, 4)), params, max_steps=20)


# ----------------------------------------------------------------------------------------------------------
# Edge inputs: NumPy and SymPy scalars give what Python numbers give
# ----------------------------------------------------------------------------------------------------------
def test_block_params_take_numpy_and_sympy_scalars_as_python_numbers():
    numpy = BlockParams(alpha_A=np.float32(0.5), sigma_V=np.int64(2), sigma_w=sp.Float(2.0), n_tokens=np.int64(8),
                        sigma_2=np.array(1.0), activation=np.str_("erf"), residual=np.str_("plain"))
    plain = BlockParams(alpha_A=0.5, sigma_V=2, sigma_w=2.0, n_tokens=8, sigma_2=1.0, activation="erf",
                        residual="plain")
    assert numpy == plain and hash(numpy) == hash(plain)
    fields = {f: getattr(numpy, f) for f in T.FIELDS}
    assert json.dumps(fields) == json.dumps({f: getattr(plain, f) for f in T.FIELDS})
    assert type(numpy.sigma_V) is int and type(numpy.n_tokens) is int and type(numpy.alpha_A) is float
    assert type(numpy.activation) is str and type(numpy.residual) is str


def test_sim_signal_prop_takes_numpy_scalars():
    base = BlockParams(n_tokens=8)
    traj = S.propagate(base, np.int64(3), q0=np.float32(0.5), rho0=np.float64(0.25), n_samples=np.int64(256),
                       seed=np.int64(1))
    same = S.propagate(base, 3, q0=0.5, rho0=0.25, n_samples=256, seed=1)
    for a, b in zip((traj.q, traj.rho, traj.jacobian), (same.q, same.rho, same.jacobian)):
        np.testing.assert_array_equal(a, b)
    assert S.exponents(base, q=np.float32(2.0)) == S.exponents(base, q=2.0)
    grid = S.exponent_grid(base, "alpha", np.array([0.25, 0.5], np.float32), "sigma_w", [np.int64(1), sp.Float(2.0)])
    expected = S.exponent_grid(base, "alpha", [0.25, 0.5], "sigma_w", [1.0, 2.0])
    np.testing.assert_array_equal(grid[0], expected[0])
    np.testing.assert_array_equal(S.attention_moments(np.int64(4), np.float32(0.5), np.int64(1), n_samples=64),
                                  S.attention_moments(4, 0.5, 1.0, n_samples=64))


def test_theory_scan_snap_takes_numpy_scalars_and_lists():
    assert th.dataset2_classes(np.int64(2), np.int64(1)) == th.syn_small()
    listed = th.SequenceClasses(np.int64(3), [np.int64(0)], np.array([1]), [np.array([0.5, 0.25, 0.25])])
    tupled = th.SequenceClasses(3, (0,), (1,), ((0.5, 0.25, 0.25),))
    assert listed == tupled and hash(listed) == hash(tupled)
    assert th.predicted_snap_times(np.int64(2), np.int64(34), np.float32(0.5)) == th.predicted_snap_times(2, 34, 0.5)
    assert C.parameter_symbols(np.int64(2)) == C.parameter_symbols(2)
    assert C.block_matched_energy_mean(np.int64(2)) == C.block_matched_energy_mean(2)
    assert th.time_of_decoder_scale(np.int64(1)) == th.time_of_decoder_scale(1)


def test_sim_scan_snap_takes_numpy_scalars_and_any_time_shape():
    t = np.array([[0.0, 1.0], [10.0, 1e6]])
    np.testing.assert_array_equal(ss.decoder_scale(t, np.int64(34), np.float32(0.5)),
                                  ss.decoder_scale(t.ravel(), 34, 0.5).reshape(2, 2))
    np.testing.assert_array_equal(ss.speed_coefficient(t, np.int64(34), np.int64(2), np.float32(0.5)),
                                  ss.speed_coefficient(t.ravel(), 34, 2, 0.5))
    np.testing.assert_array_equal(ss.reduced_params(np.float32(0.5), 1, np.int64(34), 2),
                                  ss.reduced_params(0.5, 1.0, 34.0, 2.0))


# ----------------------------------------------------------------------------------------------------------
# Edge inputs: the corners of sim's ranges give finite, right numbers
# ----------------------------------------------------------------------------------------------------------
_EXPRESSIONS_AT_Q = (T.angle_multiplier, T.gradient_multiplier)
_AT_Q = sp.lambdify(S._EXPONENT_ARGS, _EXPRESSIONS_AT_Q, modules="mpmath")
_AT_Q_STAR = sp.lambdify(S._EXPONENT_ARGS, tuple(e.subs(T.q, T.q_star_collapse_stable) for e in _EXPRESSIONS_AT_Q),
                         modules="mpmath")


def _exponents_at_60_digits(params: BlockParams, q):
    """log of theory's multipliers at 60 digits, with sim's kernel values (what sim adds is checked elsewhere)."""
    mpmath.mp.dps = 60
    kernel = S.compiled_kernel(params.activation)
    args = [mpmath.mpf(v) for v in (kernel.diagonal(params.sigma_w, params.sigma_2),
                                    kernel.slope(params.sigma_w, params.sigma_2)) + S._params_vector(params)]
    identity = params.alpha_A == params.alpha_M == 0
    if q is None and params.residual == "normalized" and not identity:
        q_star = T.q_star_collapse_stable.subs(dict(zip((T.mlp_q,) + S.PARAM_SYMBOLS, [args[0]] + args[2:])))
        if q_star != 0:
            return [mpmath.log(m) if m > 0 else -math.inf for m in _AT_Q_STAR(mpmath.mpf(1), *args)]
    return [mpmath.log(m) if m > 0 else -math.inf for m in _AT_Q(mpmath.mpf(1.0 if q is None else q), *args)]


def _corner_params():
    """Every field at 0, the ends of FIELD_RANGE and 1 (sigma_w of tanh up to QUADRATURE_SIGMA_W_MAX), both
    residuals and all three activations: 2 x 3 x 4^5 BlockParams, of which a fixed random 300 are checked."""
    low, high = S.FIELD_RANGE
    rows = []
    for activation, residual in itertools.product(T.ACTIVATIONS, T.RESIDUALS):
        alphas = (0.0, low, 0.5, 1.0) if residual == "normalized" else (0.0, low, 1.0, high)
        sigmas = (0.0, low, 1.0, high)
        sigma_ws = (0.0, low, 1.0, S.QUADRATURE_SIGMA_W_MAX) if activation == "tanh" else sigmas
        for a_A, a_M, s_V, s_w, s_2 in itertools.product(alphas, alphas, sigmas, sigma_ws, sigmas):
            rows.append(dict(alpha_A=a_A, alpha_M=a_M, sigma_V=s_V, sigma_w=s_w, sigma_2=s_2, activation=activation,
                             residual=residual))
    rng = np.random.default_rng(0)
    return [rows[i] for i in rng.choice(len(rows), 300, replace=False)]


@pytest.mark.parametrize("q", [None, S.Q_RANGE[0], 1.0, S.Q_RANGE[1]])
def test_exponents_at_the_corners_of_the_ranges_equal_theory_at_60_digits(q):
    """Inside sim's ranges every exponent is finite, or -inf exactly where theory's multiplier is exactly 0,
    or the input zeroes the residual stream (a ValueError); the finite ones agree with a 60-digit evaluation
    (measured worst relative error: 3e-16)."""
    checked = 0
    for fields in _corner_params():
        params = BlockParams(**fields)
        try:
            got = S.exponents(params, q)
        except ValueError as error:
            assert "LN(0) is undefined" in str(error)
            continue
        for value, exact in zip((got.angle, got.gradient), _exponents_at_60_digits(params, q)):
            if exact == -math.inf:
                assert value == -math.inf, (params, q, got)
            else:
                assert math.isfinite(value) and abs(value - float(exact)) <= 1e-13 * max(1.0, abs(float(exact))), \
                    (params, q, got, exact)
        checked += 1
    assert checked > 150


_POST_AT_Q = sp.lambdify(S._EXPONENT_ARGS, (T.angle_multiplier_post, T.gradient_multiplier_post), modules="mpmath")
_STEPS_60 = {placement: sp.lambdify(S._EXPONENT_ARGS, tuple(getattr(T.finite_depth_exponents(placement), f) for f in (
    "norm_step", "common_gain", "differential_gain")), modules="mpmath") for placement in T.PLACEMENTS}


def _placement_corner_params(count):
    """Post-LN and biased blocks at the corners of sim's ranges (sigma_b of tanh kept where the pre-activation
    std stays within QUADRATURE_SIGMA_W_MAX): a fixed random `count` of them."""
    low, high = S.FIELD_RANGE
    rows = []
    for activation, residual, placement in itertools.product(T.ACTIVATIONS, T.RESIDUALS, T.PLACEMENTS):
        alphas = (0.0, low, 0.5, 1.0) if residual == "normalized" else (0.0, low, 1.0, high)
        sigmas = (0.0, low, 1.0, high)
        sigma_ws = (0.0, low, 1.0, S.QUADRATURE_SIGMA_W_MAX) if activation == "tanh" else sigmas
        sigma_bs = (0.0, low, 1.0) if activation == "tanh" else sigmas
        for a_A, a_M, s_V, s_w, s_2, s_b in itertools.product(alphas, alphas, sigmas, sigma_ws, sigmas, sigma_bs):
            if activation == "tanh" and math.hypot(s_w, s_b) > S.QUADRATURE_SIGMA_W_MAX:
                continue
            rows.append(dict(alpha_A=a_A, alpha_M=a_M, sigma_V=s_V, sigma_w=s_w, sigma_2=s_2, sigma_b=s_b,
                             activation=activation, residual=residual, placement=placement))
    rng = np.random.default_rng(1)
    return [rows[i] for i in rng.choice(len(rows), count, replace=False)]


def _log_60(m):
    return mpmath.log(m) if m > 0 else -math.inf


@pytest.mark.parametrize("depth, q0", [(None, None), (16, S.Q_RANGE[0]), (16, 1.0), (3, S.Q_RANGE[1])])
def test_post_ln_and_bias_corners_equal_theory_at_60_digits(depth, q0):
    """As above for placement="post" and sigma_b at the corners, asymptotic and finite-depth: every exponent is
    finite or -inf exactly where theory's value is, or a ValueError says the stream is zeroed or the norm leaves
    float64; the finite ones agree with theory's expressions (the collapsed-norm recursion for depth) at 60 digits
    with sim's kernel values (measured worst relative error 1.3e-14)."""
    checked = 0
    for fields in _placement_corner_params(120):
        params = BlockParams(**fields)
        try:
            got = S.exponents(params, depth=depth, q0=q0)
        except ValueError as error:
            assert "LN(0) is undefined" in str(error) or "the collapsed norm" in str(error), error
            continue
        mpmath.mp.dps = 60
        q_m, chi = S._collapse_values(params.activation)(params.sigma_w, params.sigma_2, params.sigma_b)
        args = [mpmath.mpf(v) for v in (q_m, chi) + S._params_vector(params)]
        if depth is None:
            if params.placement == "pre":
                exact = _exponents_at_60_digits_with(params, args)
            else:
                exact = [_log_60(m) for m in _POST_AT_Q(mpmath.mpf(1), *args)]
            exact.append(exact[1])
        else:
            q, common, differential = mpmath.mpf(q0), mpmath.mpf(0), mpmath.mpf(0)
            for _ in range(depth):
                q, g_c, g_d = _STEPS_60[params.placement](q, *args)
                common, differential = common + _log_60(g_c), differential + _log_60(g_d)
            frobenius = _log_60(mpmath.exp(common) / params.n_tokens
                                + (1 - mpmath.mpf(1) / params.n_tokens) * mpmath.exp(differential)) / depth
            exact = [(differential + mpmath.log(q0 / q)) / depth, common / depth, frobenius]
        for value, expected in zip((got.angle, got.gradient, got.gradient_frobenius), exact):
            if expected == -math.inf:
                assert value == -math.inf, (params, got)
            else:
                assert math.isfinite(value) and abs(value - float(expected)) <= 1e-12 * max(1.0, abs(float(expected))), \
                    (params, got, exact)
        checked += 1
    assert checked > 60


def _exponents_at_60_digits_with(params, args):
    """The pre-LN multipliers at q* (normalized) or 1, as _exponents_at_60_digits, from given 60-digit args."""
    identity = params.alpha_A == params.alpha_M == 0
    if params.residual == "normalized" and not identity:
        q_star = T.q_star_collapse_stable.subs(dict(zip((T.mlp_q,) + S.PARAM_SYMBOLS, [args[0]] + args[2:])))
        if q_star != 0:
            return [_log_60(m) for m in _AT_Q_STAR(mpmath.mpf(1), *args)]
    return [_log_60(m) for m in _AT_Q(mpmath.mpf(1), *args)]


@pytest.mark.parametrize("activation, residual", [("tanh", "normalized"), ("relu", "plain"), ("erf", "normalized")])
def test_grid_at_the_corners_equals_exponents_and_has_no_nan(activation, residual):
    low, high = S.FIELD_RANGE
    base = BlockParams(activation=activation, residual=residual, sigma_V=0.0 if residual == "plain" else 1.0)
    alphas = [0.0, low, 0.5, 1.0 - 1e-16] if residual == "normalized" else [0.0, low, 1.0, high]
    sigma_ws = [0.0, low, 1.0, S.QUADRATURE_SIGMA_W_MAX if activation == "tanh" else high]
    for q in (None, S.Q_RANGE[0], S.Q_RANGE[1]):
        angle, gradient = S.exponent_grid(base, "alpha", alphas, "sigma_w", sigma_ws, q=q)
        assert not np.isnan(angle).any() and not np.isnan(gradient).any() and (angle < np.inf).all()
        for (i, s_w), (j, alpha) in itertools.product(enumerate(sigma_ws), enumerate(alphas)):
            e = S.exponents(base.replace(alpha_A=alpha, alpha_M=alpha, sigma_w=s_w), q)
            assert (angle[i, j], gradient[i, j]) == pytest.approx((e.angle, e.gradient), rel=1e-12, abs=1e-14)


def test_exponents_of_degenerate_blocks():
    """The identity block (normalized, both alphas 0) has both exponents 0 at any q; a block whose branches
    both output zero has q* = 0 and its multipliers at any q; alpha_A = 1 collapses in one block (-inf)."""
    identity = S.exponents(BlockParams(alpha_A=0.0, alpha_M=0.0))
    assert (identity.angle, identity.gradient, identity.q) == (0.0, 0.0, 1.0)
    dead = BlockParams(alpha_A=0.0, alpha_M=0.3, sigma_2=0.0, activation="erf")
    e = S.exponents(dead)
    assert e.q == 0.0 and e.angle == 0.0 and e.gradient == pytest.approx(math.log(1 - 0.3**2), rel=1e-14)
    at_q = S.exponents(dead, q=1e-100)
    assert (at_q.angle, at_q.gradient) == (e.angle, e.gradient)
    assert S.exponents(BlockParams(alpha_A=1.0)).angle == -math.inf
    cos = BlockParams(alpha_M=1.0, sigma_w=0.0, activation=sp.Lambda(x, sp.cos(x)))   # phi(0) != 0, chi_M = 0
    assert S.exponents(cos).angle == -math.inf and S.exponents(cos).gradient == -math.inf


def test_normalized_exponents_keep_their_digits_when_alpha_M_is_one():
    """q* without cancellation: alpha_M = 1 and alpha_A sigma_V >> q_M used to give q* = 0 (and exponents
    off by 68); now q* = q_M as theory says."""
    params = BlockParams(alpha_A=0.5, alpha_M=1.0, sigma_V=1e15, sigma_w=1.0, activation="erf")
    e = S.exponents(params)
    assert e.q == pytest.approx(S.compiled_kernel("erf").diagonal(1.0, 1.0), rel=1e-15)
    exact = _exponents_at_60_digits(params, None)
    assert (e.angle, e.gradient) == pytest.approx([float(v) for v in exact], rel=1e-13)


def test_tiny_q0_is_the_rescaled_trajectory():
    """q0 -> c q0 with sigma_V, sigma_2 -> sqrt(c) sigma_V, sqrt(c) sigma_2 leaves rho and the Jacobian as
    they are (LN makes the branches scale-free): q0 = 1e-20 gives the q0 = 1 trajectory, q scaled by c."""
    c = 1e-20
    unit = BlockParams(sigma_V=1.3, sigma_2=0.7, sigma_w=2.0, n_tokens=8)
    small = unit.replace(sigma_V=1.3 * c**0.5, sigma_2=0.7 * c**0.5)
    a = S.propagate(unit, 6, q0=1.0, rho0=0.3, n_samples=512)
    b = S.propagate(small, 6, q0=c, rho0=0.3, n_samples=512)
    np.testing.assert_allclose(b.rho, a.rho, rtol=1e-12)
    np.testing.assert_allclose(b.jacobian, a.jacobian, rtol=1e-12)
    np.testing.assert_allclose(b.q / c, a.q, rtol=1e-12)


def test_propagate_at_the_ends_of_q0_and_the_fields_is_finite():
    low, high = S.FIELD_RANGE
    for fields in ({}, dict(sigma_V=high, sigma_2=high, residual="plain", alpha_A=high, alpha_M=high),
                   dict(sigma_V=low, sigma_2=low, sigma_w=low), dict(alpha_A=low, alpha_M=1.0, activation="relu")):
        for q0 in S.Q_RANGE:
            traj = S.propagate(BlockParams(n_tokens=8, **fields), 3, q0=q0, n_samples=64)
            assert all(np.isfinite(v).all() for v in (traj.q, traj.p, traj.rho, traj.jacobian)), (fields, q0)


def test_propagate_names_the_deepest_computable_depth():
    with pytest.raises(ValueError, match=r"block 301; depths up to 300 are computable"):
        S.propagate(CHAOTIC, 2000, rho0=0.99, attention="large_n")
    assert np.isfinite(S.propagate(CHAOTIC, 300, rho0=0.99, attention="large_n").jacobian).all()


def test_many_tokens_are_refused_only_where_arrays_of_them_are_drawn():
    """n_tokens enters the exponents as a number (no array grows with it), so 10^8 tokens compute; the finite-n
    attention moments draw arrays of n_tokens per sample, and propagate refuses them (BAD), with large_n too."""
    many = BlockParams(n_tokens=10 ** 8)
    asymptotic, finite_depth = S.exponents(many), S.exponents(many, depth=16, q0=1.0)
    assert all(math.isfinite(v) for v in (asymptotic.angle, asymptotic.gradient, finite_depth.angle,
                                          finite_depth.gradient, finite_depth.gradient_frobenius))
    assert np.isfinite(S.propagate(many, 3, attention="large_n").rho).all()


def test_erf_kernel_derivative_keeps_its_digits_at_collapse():
    """The factored radicand: at rho = 1 the derivative is the slope 4 s2^2 sw^2 / (pi sqrt(4 sw^2 + 1)) for any
    sigma_w in range (the expanded radicand left nothing at sigma_w = 1e8: a division by zero)."""
    kernel = S.compiled_kernel("erf")
    for sigma_w in (0.5, 1e4, 1e8, S.FIELD_RANGE[1]):
        assert kernel.derivative(1.0, sigma_w, 1.0) == pytest.approx(kernel.slope(sigma_w, 1.0), rel=1e-14)


def test_scan_snap_edges_are_finite_and_right():
    table = syn_small_table()
    # logits at the ends of float64: the attention still sums to one (shift by the max)
    Z = np.zeros((2, 34))
    Z[:, ::2], Z[:, 1::2] = -1e308, 1e308
    np.testing.assert_allclose(ss.attention_from_logits(table, Z).sum(-1), 1.0, rtol=1e-15)
    # ||g|| of a decoder at 1e200 and at 1e-200: the squares would overflow or underflow, the norm does not
    rng = np.random.default_rng(0)
    Y0 = rng.standard_normal((34, 34))
    for scale in (1e200, 1e-200):
        Y = Y0 * scale
        got = ss.backprop_norms(table, Y, np.zeros((2, 34)))
        c = ss.attention_from_logits(table, np.zeros((2, 34)))
        for k in range(2):
            f = c[k] / np.linalg.norm(c[k])
            logits = Y.T @ f
            alpha = np.exp(logits - logits.max())
            alpha /= alpha.sum()
            g = Y @ (np.eye(34)[table.next_tokens[k]] - alpha)
            assert got[k] == pytest.approx(math.hypot(*g), rel=1e-12)
    # rates and times at the ends of their ranges: Gamma and B finite and as theory's closed forms at 60 digits
    low, high = ss.RATE_RANGE
    for eta_Y, eta_Z, K, C0 in ((low, high, 2.0, low), (high, low, high, high), (1.0, high, 2.0, 1.0)):
        t = np.array([0.0, 1e-3, 1.0, 1e3]) * K / eta_Y
        cf = ss.reduced_closed_form(t, eta_Y, eta_Z, 34, K, C0)
        assert all(np.isfinite(v).all() for v in cf.values())
        mpmath.mp.dps = 60
        for h_value, B in zip(cf["h"], cf["B"]):
            gamma = mpmath.mpf(eta_Z) / eta_Y * K * 33**2 * mpmath.mpf(h_value) ** 2 / 2
            # absolute accuracy: log(C0 + 4 Gamma) - log(C0) cancels as Gamma / C0 -> 0 (module docstring)
            assert B == pytest.approx(float(mpmath.log(1 + 4 * gamma / C0) / 4), rel=1e-12, abs=1e-15)
    assert np.isfinite(ss.speed_coefficient([0.0, 1e-300, 1e290], 1e6, 2, 1.0)).all()
    assert np.isfinite(ss.decoder_scale([1e170], ss.M_MAX, ss.RATE_RANGE[0])).all()
