"""Geometry of training trajectories: dimension, null models, orientation, routing (Xu 2026).

Xu (2026, arXiv 2602.10496, section 3.3.1) measures the "execution manifold" of a weight block as
r90 = min{k : sum_{j<=k} lambda_j / sum lambda_j >= 0.9}, the eigenvalues lambda of the covariance of the
flattened snapshots w(t_i). By itself that number says little: an isotropic random walk with the same number
of snapshots already has r90 = 6 (Antognini & Sohl-Dickstein 2018, PC variance fractions ~ 6/(pi^2 k^2)).
This module computes the paper's figure and null-calibrated variants (nulls with the same number of snapshots,
against which a low dimension means something), plus the attention concentration of the paper's "bubbling"
and a routing coordinate with its saturation fit, which the paper names but does not define. Every p-value here
compares a statistic with draws of the same statistic under a null that keeps what the data share by construction:
the step norms (random-walk null), the number of seeds (orientation), the smoothness of the series (routing).

Everything is computed from Gram matrices of increments. For a trajectory X (n snapshots x D coordinates)
with increments Delta_i = X_{i+1} - X_i, the mean-centred snapshot Gram matrix is C L G L^T C, where
G = Delta Delta^T, L is the (n x n-1) cumulative-sum matrix and C the centring matrix. Its spectrum divided by
n is the PCA variance spectrum. Prefixes and windows are sub-blocks of G, the joint trajectory of several
blocks has the sum of their Gs, and the null models act on G alone (shuffle: a permutation of G; sign flips:
s s^T * G; the random walk: a Wishart draw), so a null draw costs an (n x n) eigen-decomposition whatever D is.

The public face `validate.geometry` re-exports these functions beside `sgd_commutator`.
"""
from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass

import numpy as np

from validate._common import checks

NULL_KINDS = ("random_walk", "shuffled_increments", "sign_flipped_increments")
_FRACTION_SLACK = 1e-12  # float round-off in cumulative variance fractions (q = 1.0 must still be reachable)
ROUTING_NULLS = ("dct_sign_flips", "block_permutation")


def derived_seed(run_seed: int, *keys) -> int:
    """The seed of one independent random stream of a run: numpy's SeedSequence(run_seed) spawned under `keys`
    (integers >= 0, or names, which stand for their CRC-32), so that each block's null (keys: the block's index)
    or each layer's routing null ("routing", layer) draws its own numbers, reproducibly. Shares over blocks then
    count independent null draws, not one draw read many times. An integer in [0, 2^63)."""
    run_seed = checks.integer("run_seed", run_seed, minimum=0)
    spawn_key = []
    for key in keys:
        if isinstance(key, str):
            spawn_key.append(zlib.crc32(key.encode()))
        else:
            spawn_key.append(checks.integer("keys", key, minimum=0))
    state = np.random.SeedSequence(run_seed, spawn_key=tuple(spawn_key)).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


# ----------------------------------------------------------------------------------------------------------
# Input checks
# ----------------------------------------------------------------------------------------------------------

# Every public function checks its inputs first (ValueError naming the input); the measures that are ratios of
# variances (r_q, PR, PC1 fraction, increment r_q, the nulls' statistics) work on a copy rescaled by a power of two,
# so they do not depend on the scale of X: X * 1e-200 and X * 1e200 give what X gives.

def _as_trajectory(X, name: str = "X", min_rows: int = 2) -> np.ndarray:
    X = checks.real_array(name, X)
    if X.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array (n_snapshots, D), got shape {X.shape}")
    if X.shape[0] < min_rows:
        raise ValueError(f"{name} must have at least {min_rows} rows (snapshots), got {X.shape[0]}")
    if X.shape[1] < 1:
        raise ValueError(f"{name} must have at least one column (coordinate), got shape {X.shape}")
    return X


def _as_gram(gram, name: str = "gram_of_increments") -> np.ndarray:
    """A symmetric positive semi-definite (n-1, n-1) Gram matrix of increments, n >= 2 snapshots."""
    G = checks.real_array(name, gram)
    if G.ndim != 2 or G.shape[0] != G.shape[1] or G.shape[0] < 1:
        raise ValueError(f"{name} must be a square (n-1, n-1) array with n >= 2 snapshots, got shape {G.shape}")
    scale = checks.binary_scale(G)
    if np.max(np.abs(G - G.T)) > 1e-8 * scale or np.min(np.diag(G)) < -1e-8 * scale:
        raise ValueError(f"{name} must be a Gram matrix (symmetric, non-negative diagonal)")
    return G


def _unit_spectrum(spectrum, name: str = "spectrum") -> np.ndarray:
    """A variance spectrum (1-D, non-empty, finite, >= 0 up to round-off), rescaled so its largest entry is in
    [0.5, 1)."""
    spectrum = checks.real_array(name, spectrum)
    if spectrum.ndim != 1 or spectrum.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {spectrum.shape}")
    spectrum = spectrum / checks.binary_scale(spectrum)
    if spectrum.min() < -1e-9:
        raise ValueError(f"{name} has a negative entry ({spectrum.min():g} of its largest): variances are >= 0")
    return np.clip(spectrum, 0.0, None)


def _unit_centred(X: np.ndarray) -> tuple[np.ndarray, float]:
    """The mean-centred rows of a checked X, divided by a power of two; and that factor."""
    outer = checks.binary_scale(X)
    scaled = X / outer
    centred = scaled - scaled.mean(axis=0)
    inner = checks.binary_scale(centred)
    return centred / inner, outer * inner


def _unit_increments(X: np.ndarray) -> tuple[np.ndarray, float]:
    """The increments of a checked X, divided by a power of two; and that factor."""
    outer = checks.binary_scale(X)
    increments = np.diff(X / outer, axis=0)
    inner = checks.binary_scale(increments)
    return increments / inner, outer * inner


def _rescaled(values: np.ndarray, scale: float, power: int, name: str) -> np.ndarray:
    """values * scale**power back in the caller's units; ValueError where that overflows float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        for _ in range(power):
            values = values * scale
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name} is too large: the result overflows float64 (the dimension measures do not "
                         "depend on the scale; rescale the input for this one)")
    return values


# ----------------------------------------------------------------------------------------------------------
# Spectra and dimension measures (Xu 2026, section 3.3.1)
# ----------------------------------------------------------------------------------------------------------

def variance_spectrum(X) -> np.ndarray:
    """PCA variance spectrum lambda_1 >= lambda_2 >= ... of the mean-centred rows of X (n, D).

    lambda_j = s_j^2 / n with s the singular values of the centred X (Xu 2026 eq. for Sigma, section 3.3.1).
    Returns all n values (the last is 0 up to round-off, since centring removes one dimension), in X's units
    squared: values below ~1e-308 underflow to 0, and ValueError where they overflow (|X| ~ 1e154 and beyond).
    """
    spectrum, scale = _scale_free_spectrum(X)
    return _rescaled(spectrum, scale, 2, "X")


def _scale_free_spectrum(X) -> tuple[np.ndarray, float]:
    """variance_spectrum(X) / scale^2 and that scale (a power of two): the ratio measures read the first."""
    X = _as_trajectory(X)
    centred, scale = _unit_centred(X)
    return _spectrum_from_gram(centred @ centred.T, n_snapshots=X.shape[0]), scale


def _spectrum_from_gram(gram: np.ndarray, n_snapshots: int) -> np.ndarray:
    eigenvalues = np.linalg.eigvalsh(gram)[::-1] / n_snapshots
    return np.clip(eigenvalues, 0.0, None)


def rank_at_fraction(spectrum, q: float = 0.9) -> int:
    """Smallest k with sum_{j<=k} spectrum_j / sum spectrum >= q (0 for a zero spectrum); r_q of the paper."""
    q = checks.fraction("q", q)
    spectrum = np.sort(_unit_spectrum(spectrum))[::-1]
    total = spectrum.sum()
    if total <= 0.0:
        return 0
    fractions = np.cumsum(spectrum) / total
    return int(np.argmax(fractions >= q - _FRACTION_SLACK) + 1)


def effective_dimension(X, q: float = 0.9) -> int:
    """r_q of Xu (2026, section 3.3.1) on the full spectrum: the smallest k whose top-k principal components
    of the mean-centred rows of X (n_snapshots, D) hold >= q of the variance. 0 when X does not move (all rows
    equal, an all-zero X among them). A ratio of variances: X * c gives the same value for every c != 0 (the
    spectrum is computed on a copy rescaled by a power of two, so neither 1e-200 nor 1e200 under- or overflows)."""
    q = checks.fraction("q", q)
    return rank_at_fraction(_scale_free_spectrum(X)[0], q)


def participation_ratio_of_spectrum(spectrum) -> float:
    spectrum = _unit_spectrum(spectrum)
    squares = float(np.sum(spectrum ** 2))
    return float(spectrum.sum() ** 2 / squares) if squares > 0 else 0.0


def participation_ratio(X) -> float:
    """PR = (sum lambda)^2 / sum lambda^2 of the variance spectrum: a dimension without r90's threshold. 0 when X
    does not move; independent of X's scale."""
    return participation_ratio_of_spectrum(_scale_free_spectrum(X)[0])


def entropy_effective_rank(X) -> float:
    """The paper code's `effective_rank`: exp of the Shannon entropy of p_j = s_j / sum s, on the singular
    values s (not s^2), as in bubble-modadd `analysis_alignment.py`. Kept to reproduce the code; it is large
    (~23 for a 41-snapshot random walk) and not what the paper's figures show. 0 when X does not move;
    independent of X's scale."""
    spectrum, _ = _scale_free_spectrum(X)
    singular_values = np.sqrt(spectrum * spectrum.size)
    total = singular_values.sum()
    if total <= 0:
        return 0.0
    p = singular_values[singular_values > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def capped_rank_at_fraction(spectrum, q: float = 0.9, n_components: int = 8) -> int:
    """The paper code's r90: `searchsorted(cumsum(ratio[:8]), q) + 1` on the first 8 explained-variance
    ratios (sklearn PCA with 8 components), hence capped at n_components + 1 (analysis_alignment.py); 0 for a
    zero spectrum."""
    q = checks.fraction("q", q)
    n_components = checks.integer("n_components", n_components, minimum=1)
    spectrum = np.sort(_unit_spectrum(spectrum))[::-1]
    total = spectrum.sum()
    if total <= 0:
        return 0
    cumulative = np.cumsum(spectrum[:n_components] / total)
    return int(np.searchsorted(cumulative, q) + 1)


def pc1_fraction_of_spectrum(spectrum) -> float:
    """Largest entry / sum of a variance spectrum; 0 for a zero spectrum."""
    spectrum = _unit_spectrum(spectrum)
    total = spectrum.sum()
    return float(spectrum.max() / total) if total > 0 else 0.0


# ----------------------------------------------------------------------------------------------------------
# Increment Gram matrices: one object from which every curve and null is computed
# ----------------------------------------------------------------------------------------------------------

def increment_gram(X) -> np.ndarray:
    """G = Delta Delta^T for the increments Delta_i = X_{i+1} - X_i of a trajectory X (n, D); (n-1, n-1), in X's
    units squared (ValueError where that overflows float64)."""
    X = _as_trajectory(X)
    increments, scale = _unit_increments(X)
    return _rescaled(increments @ increments.T, scale, 2, "X")


def _cumulative_sum_matrix(n_snapshots: int) -> np.ndarray:
    """L (n x n-1) with L[i, j] = 1 for j < i: snapshot i = snapshot 0 + sum_{j<i} increment j."""
    return np.tril(np.ones((n_snapshots, n_snapshots - 1)), k=-1)


def spectrum_from_increment_gram(gram_of_increments) -> np.ndarray:
    """PCA variance spectrum of the trajectory whose increments have Gram matrix G (see module docstring), in G's
    units (ValueError where that overflows float64)."""
    G = _as_gram(gram_of_increments)
    scale = checks.binary_scale(G)
    return _rescaled(_gram_spectrum(G / scale), scale, 1, "gram_of_increments")


def _unit_gram(gram_of_increments) -> np.ndarray:
    """A checked Gram matrix divided by a power of two: what the ratio measures read."""
    G = _as_gram(gram_of_increments)
    return G / checks.binary_scale(G)


def _gram_spectrum(G: np.ndarray) -> np.ndarray:
    n_snapshots = G.shape[0] + 1
    L = _cumulative_sum_matrix(n_snapshots)
    centred_L = L - L.mean(axis=0)
    return _spectrum_from_gram(centred_L @ G @ centred_L.T, n_snapshots)


def pc_coordinates_of_increment_gram(gram_of_increments, k: int) -> np.ndarray:
    """pc_coordinates(X, k) of the trajectory X whose increments have Gram matrix G, from G alone (n, k), each
    column up to its sign (a principal direction's sign is arbitrary): the centred snapshot Gram C L G L^T C is
    U diag(n lambda) U^T and the coordinates are U sqrt(n lambda). 1 <= k <= n - 1."""
    G = _as_gram(gram_of_increments)
    n_snapshots = G.shape[0] + 1
    k = checks.integer("k", k, 1, n_snapshots - 1)
    scale = checks.binary_scale(G)
    L = _cumulative_sum_matrix(n_snapshots)
    centred_L = L - L.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred_L @ (G / scale) @ centred_L.T)
    order = np.argsort(eigenvalues)[::-1][:k]
    coordinates = eigenvectors[:, order] * np.sqrt(np.clip(eigenvalues[order], 0.0, None))
    return _rescaled(coordinates, np.sqrt(scale), 1, "gram_of_increments")


def increment_direction_spectrum(gram_of_increments) -> np.ndarray:
    """Spectrum of the second-moment matrix of the unit increments Delta_i / ||Delta_i|| (not centred: it
    measures the span of the directions the trajectory moves in). An isotropic walk in high dimension has
    nearly orthogonal increments (r_q ~ q (n-1)); a trajectory confined to a k-dim subspace has r_q <= k.
    Zero increments are dropped."""
    G = _unit_gram(gram_of_increments)
    norms = np.sqrt(np.clip(np.diag(G), 0.0, None))
    moving = norms > 0
    if not moving.any():
        return np.zeros(G.shape[0])
    unit = G[np.ix_(moving, moving)] / np.outer(norms[moving], norms[moving])
    return np.clip(np.linalg.eigvalsh(unit)[::-1], 0.0, None)


def increment_dimension(X, q: float = 0.9) -> int:
    """r_q of the unit increments of X: about 0.9 (n - 1) for a random walk (its increments are nearly
    orthogonal) and <= k for a trajectory confined to k dimensions, free of the Lissajous artefact that gives
    a random walk a small r90 (Antognini & Sohl-Dickstein 2018). 0 when X does not move; independent of X's
    scale."""
    q = checks.fraction("q", q)
    increments, _ = _unit_increments(_as_trajectory(X))
    return rank_at_fraction(increment_direction_spectrum(increments @ increments.T), q)


def prefix_dimension_curve(gram_of_increments, q: float = 0.9, min_snapshots: int = 3) -> np.ndarray:
    """r_q of snapshots {0..i} for i = min_snapshots-1 .. n-1 (length n - min_snapshots + 1)."""
    q = checks.fraction("q", q)
    G = _unit_gram(gram_of_increments)
    n_snapshots = G.shape[0] + 1
    min_snapshots = checks.integer("min_snapshots", min_snapshots, 2, n_snapshots)
    return np.array([rank_at_fraction(_gram_spectrum(G[:i - 1, :i - 1]), q)
                     for i in range(min_snapshots, n_snapshots + 1)])


def window_dimension_curve(gram_of_increments, window: int, q: float = 0.9) -> np.ndarray:
    """r_q of the sliding windows of `window` consecutive snapshots; entry i covers snapshots i..i+window-1."""
    q = checks.fraction("q", q)
    G = _unit_gram(gram_of_increments)
    n_snapshots = G.shape[0] + 1
    window = checks.integer("window (snapshots)", window, 2, n_snapshots)
    return np.array([rank_at_fraction(_gram_spectrum(G[i:i + window - 1, i:i + window - 1]), q)
                     for i in range(n_snapshots - window + 1)])


def collapse_index(curve, final_value: float, slack: float = 1.0) -> int:
    """First index t after which curve stays <= final_value + slack: the collapse step of the paper's
    "within the first 20-30% of training steps" (Xu 2026, Results), which the released code never computes.
    An index into curve, so in [0, len(curve) - 1]: the last entry is <= final_value + slack whenever
    final_value is that entry, as in part one."""
    curve = checks.real_array("curve", curve)
    if curve.ndim != 1 or curve.size == 0:
        raise ValueError(f"curve must be a non-empty 1-D array, got shape {curve.shape}")
    final_value = checks.real("final_value", final_value)
    slack = checks.real("slack", slack, minimum=0.0)
    if curve[-1] > final_value + slack:
        raise ValueError(f"curve ends at {curve[-1]:g}, above final_value + slack = {final_value + slack:g}: it never "
                         "settles, so no collapse index exists")
    above = np.nonzero(curve > final_value + slack)[0]
    return 0 if above.size == 0 else int(above[-1] + 1)


# ----------------------------------------------------------------------------------------------------------
# Null models with the same number of snapshots (N1 random walk, N2 shuffled, N3 sign-flipped increments)
# ----------------------------------------------------------------------------------------------------------

def _isotropic_cosines(n_vectors: int, ambient_dim: int, rng: np.random.Generator) -> np.ndarray:
    """Cosine matrix of n i.i.d. isotropic Gaussian vectors in R^ambient_dim, without drawing them.

    Their Gram matrix is Wishart(ambient_dim, I_n); the Bartlett decomposition W = A A^T (A lower triangular,
    A_ii^2 ~ chi^2(ambient_dim - i), A_ij ~ N(0, 1) below the diagonal) samples it exactly in O(n^2).
    """
    if ambient_dim < n_vectors:  # Bartlett needs dof >= n; small cases draw the vectors themselves
        vectors = rng.standard_normal((n_vectors, ambient_dim))
        W = vectors @ vectors.T
    else:
        A = np.tril(rng.standard_normal((n_vectors, n_vectors)), k=-1)
        A[np.diag_indices(n_vectors)] = np.sqrt(rng.chisquare(ambient_dim - np.arange(n_vectors)))
        W = A @ A.T
    scale = np.sqrt(np.diag(W))
    return W / np.outer(scale, scale)


def null_increment_gram(gram_of_increments, kind: str, ambient_dim: int,
                        rng: np.random.Generator) -> np.ndarray:
    """One draw of a null trajectory's increment Gram matrix, with the same number of snapshots.

    random_walk (N1): isotropic increments in R^ambient_dim with norms equal to the observed ||Delta_i||.
    shuffled_increments (N2): the observed increments in a random time order (keeps the increment set,
        removes temporal correlation; unlike shuffling snapshots, this changes the covariance).
    sign_flipped_increments (N3): each observed increment times an independent random +-1.
    rng: a numpy Generator, or an integer seed >= 0.
    """
    G = _as_gram(gram_of_increments)
    if kind not in NULL_KINDS:
        raise ValueError(f"null kind must be one of {NULL_KINDS}, got {kind!r}")
    ambient_dim = checks.integer("ambient_dim", ambient_dim, minimum=1)
    rng = _generator(rng)
    return _null_draw(G, kind, ambient_dim, rng)


def _generator(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    try:
        return np.random.default_rng(checks.integer("rng", rng, minimum=0))
    except ValueError:
        raise ValueError(f"rng must be a numpy Generator or an integer seed >= 0, got {rng!r}") from None


def _null_draw(G: np.ndarray, kind: str, ambient_dim: int, rng: np.random.Generator) -> np.ndarray:
    n_increments = G.shape[0]
    if kind == "random_walk":
        norms = np.sqrt(np.clip(np.diag(G), 0.0, None))
        return np.outer(norms, norms) * _isotropic_cosines(n_increments, int(ambient_dim), rng)
    if kind == "shuffled_increments":
        order = rng.permutation(n_increments)
        return G[np.ix_(order, order)]
    if kind == "sign_flipped_increments":
        signs = rng.choice([-1.0, 1.0], size=n_increments)
        return np.outer(signs, signs) * G
    raise AssertionError(kind)  # null_increment_gram checked it


@dataclass(frozen=True)
class NullComparison:
    """An observed statistic against its null distribution: z-score and one-sided empirical p-value that
    the observation is this low (p_low = (1 + #{null <= obs}) / (1 + n_draws))."""
    observed: float
    null_mean: float
    null_sd: float
    z: float
    p_low: float

    @classmethod
    def of(cls, observed: float, null_values) -> "NullComparison":
        """observed (a finite number) against null_values (a non-empty 1-D array of finite numbers)."""
        observed = checks.real("observed", observed)
        null_values = checks.real_array("null_values", null_values)
        if null_values.ndim != 1 or null_values.size == 0:
            raise ValueError(f"null_values must be a non-empty 1-D array, got shape {null_values.shape}")
        mean, sd = float(null_values.mean()), float(null_values.std(ddof=1)) if null_values.size > 1 else 0.0
        if sd > 0:
            z = (observed - mean) / sd
        else:  # a discrete statistic can have a degenerate null; a z-score is then 0 or +-inf
            z = 0.0 if observed == mean else float(np.sign(observed - mean) * np.inf)
        p_low = (1.0 + np.sum(null_values <= observed)) / (1.0 + null_values.size)
        return cls(float(observed), mean, sd, float(z), float(p_low))

    def as_dict(self) -> dict:
        return {"observed": self.observed, "null_mean": self.null_mean, "null_sd": self.null_sd,
                "z": self.z, "p_low": self.p_low}


def trajectory_statistics(gram_of_increments, q: float = 0.9) -> dict:
    """r_q, participation ratio, PC1 fraction and increment r_q of the trajectory with this increment Gram
    (ratios of variances: independent of G's scale; all 0 when nothing moves)."""
    q = checks.fraction("q", q)
    return _statistics(_unit_gram(gram_of_increments), q)


def _statistics(gram_of_increments: np.ndarray, q: float) -> dict:
    spectrum = _gram_spectrum(gram_of_increments)
    return {"r_q": float(rank_at_fraction(spectrum, q)),
            "participation_ratio": participation_ratio_of_spectrum(spectrum),
            "pc1_fraction": pc1_fraction_of_spectrum(spectrum),
            "increment_r_q": float(rank_at_fraction(increment_direction_spectrum(gram_of_increments), q))}


def null_calibration(gram_of_increments, ambient_dim: int, q: float = 0.9, n_draws: int = 200,
                     seed: int = 0, kinds=NULL_KINDS) -> dict:
    """Observed r_q, PR, PC1 fraction and increment r_q against each null kind.

    Returns {kind: {statistic: NullComparison}}. A "low-dimensional manifold" claim needs r_q significantly
    below the random_walk and shuffled_increments nulls, not just a small r_q.
    """
    q = checks.fraction("q", q)
    G = _unit_gram(gram_of_increments)
    ambient_dim = checks.integer("ambient_dim", ambient_dim, minimum=1)
    n_draws = checks.integer("n_draws", n_draws, minimum=2)
    rng = np.random.default_rng(checks.integer("seed", seed, minimum=0))
    kinds = tuple(kinds) if not isinstance(kinds, str) else (kinds,)
    if not kinds or any(kind not in NULL_KINDS for kind in kinds):
        raise ValueError(f"kinds must be a non-empty selection of {NULL_KINDS}, got {kinds!r}")
    observed = _statistics(G, q)
    result = {}
    for kind in kinds:
        draws = [_statistics(_null_draw(G, kind, ambient_dim, rng), q) for _ in range(n_draws)]
        result[kind] = {name: NullComparison.of(observed[name], [d[name] for d in draws]) for name in observed}
    return result


# ----------------------------------------------------------------------------------------------------------
# Orientation across seeds (Xu 2026: the dimension is stable across seeds "while the orientation varies")
# ----------------------------------------------------------------------------------------------------------

def principal_directions(X, k: int) -> np.ndarray:
    """Top-k principal directions (D, k), orthonormal columns, of the mean-centred rows of X; 1 <= k <=
    min(n_snapshots - 1, D). Where fewer than k directions carry variance (X moves in fewer dimensions, or not at
    all) the rest are an orthonormal completion: any one is a principal direction of variance 0."""
    X = _as_trajectory(X)
    k = checks.integer("k", k, 1, min(X.shape[0] - 1, X.shape[1]))
    centred, _ = _unit_centred(X)
    eigenvalues, eigenvectors = np.linalg.eigh(centred @ centred.T)
    order = np.argsort(eigenvalues)[::-1][:k]
    # the Gram route resolves eigenvalues down to about n eps lambda_max; below that a direction is round-off
    floor = X.shape[0] * np.finfo(np.float64).eps * max(float(eigenvalues.max()), 0.0)
    carried = [i for i in order if eigenvalues[i] > floor]
    directions = centred.T @ eigenvectors[:, carried] / np.sqrt(eigenvalues[carried])
    if len(carried) < k or np.max(np.abs(directions.T @ directions - np.eye(len(carried))), initial=0.0) > 1e-8:
        directions = _orthonormal_completion(directions, k)
    return directions


def _orthonormal_completion(directions: np.ndarray, k: int) -> np.ndarray:
    """k orthonormal columns whose span starts with that of `directions` (QR, column signs kept)."""
    dimension, have = directions.shape
    filler = np.random.default_rng(0).standard_normal((dimension, k - have))
    Q, R = np.linalg.qr(np.hstack([directions, filler]))
    signs = np.sign(np.diag(R))
    return Q * np.where(signs == 0, 1.0, signs)


def pc_coordinates(X, k: int) -> np.ndarray:
    """Coordinates z_k(t_i) = <w(t_i) - w_bar, v_k> of the snapshots on the top-k principal directions, in X's
    units (ValueError where that overflows float64)."""
    directions = principal_directions(X, k)
    centred, scale = _unit_centred(_as_trajectory(X))
    return _rescaled(centred @ directions, scale, 1, "X")


def subspace_overlap(U, V) -> float:
    """O = ||U^T V||_F^2 / K for orthonormal bases U, V (D, K): 1 for equal subspaces, K/D in expectation
    for independent random ones. U and V must have orthonormal columns (to 1e-3: float32 copies pass)."""
    U, V = checks.real_array("U", U), checks.real_array("V", V)
    if U.shape != V.shape or U.ndim != 2 or not 1 <= U.shape[1] <= U.shape[0]:
        raise ValueError(f"U and V must be (D, K) arrays of equal shape with 1 <= K <= D, got {U.shape} and {V.shape}")
    for name, basis in (("U", U), ("V", V)):
        if np.max(np.abs(basis.T @ basis - np.eye(basis.shape[1]))) > 1e-3:
            raise ValueError(f"{name} must have orthonormal columns")
    return float(np.sum((U.T @ V) ** 2) / U.shape[1])


def random_subspace_overlaps(ambient_dim: int, k: int, n_draws: int, seed: int = 0) -> np.ndarray:
    """Null distribution of subspace_overlap for two independent uniformly random k-dim subspaces of R^D.

    By rotation invariance one subspace can be fixed to the first k axes; the overlap is then the squared
    norm of the first k rows of a random orthonormal (D, k) basis, divided by k (drawn via QR of a Gaussian).
    """
    ambient_dim = checks.integer("ambient_dim", ambient_dim, minimum=1)
    k = checks.integer("k", k, 1, ambient_dim)
    n_draws = checks.integer("n_draws", n_draws, minimum=1)
    rng = np.random.default_rng(checks.integer("seed", seed, minimum=0))
    overlaps = np.empty(n_draws)
    for i in range(n_draws):
        basis, _ = np.linalg.qr(rng.standard_normal((ambient_dim, k)))
        overlaps[i] = np.sum(basis[:k] ** 2) / k
    return overlaps


def mean_pairwise_overlap(bases) -> float:
    """The mean of subspace_overlap(U_s, U_s') over all pairs s < s' of a sequence of >= 2 orthonormal bases
    (D, K) of equal shape: the statistic of "the orientation varies with the seed" (Xu 2026, section 3.3.1),
    whose null distribution is random_mean_pairwise_overlaps."""
    bases = list(bases)
    if len(bases) < 2:
        raise ValueError(f"bases must hold at least 2 bases (D, K), got {len(bases)}")
    overlaps = [subspace_overlap(bases[i], bases[j]) for i in range(len(bases)) for j in range(i + 1, len(bases))]
    return float(np.mean(overlaps))


def random_mean_pairwise_overlaps(ambient_dim: int, k: int, n_subspaces: int, n_draws: int,
                                  seed: int = 0) -> np.ndarray:
    """Null distribution of mean_pairwise_overlap for n_subspaces independent uniformly random k-dim subspaces
    of R^D: the mean over all pairs, drawn jointly (the pairs share subspaces, so the mean is not a single
    pair's overlap, nor a mean of independent ones). Its expectation is k / D.

    Exact and O((n_subspaces k)^3) per draw whatever D is: with G = [G_1 ... G_S] a D x Sk Gaussian matrix, the
    bases are Q_s = G_s R_s^{-1} (G_s = Q_s R_s, its QR), so Q_s^T Q_t = R_s^{-T} W_st R_t^{-1} depends on G only
    through W = G^T G ~ Wishart(D, I_Sk), which the Bartlett decomposition samples directly (D >= Sk; smaller D
    draws G itself).
    """
    ambient_dim = checks.integer("ambient_dim", ambient_dim, minimum=1)
    k = checks.integer("k", k, 1, ambient_dim)
    n_subspaces = checks.integer("n_subspaces", n_subspaces, minimum=2)
    n_draws = checks.integer("n_draws", n_draws, minimum=1)
    rng = np.random.default_rng(checks.integer("seed", seed, minimum=0))
    size = n_subspaces * k
    if ambient_dim >= size:
        A = np.tril(rng.standard_normal((n_draws, size, size)), k=-1)
        A[:, np.arange(size), np.arange(size)] = np.sqrt(rng.chisquare(ambient_dim - np.arange(size),
                                                                        size=(n_draws, size)))
        W = A @ A.transpose(0, 2, 1)
    else:
        G = rng.standard_normal((n_draws, ambient_dim, size))
        W = G.transpose(0, 2, 1) @ G
    blocks = [slice(s * k, (s + 1) * k) for s in range(n_subspaces)]
    cholesky = [np.linalg.cholesky(W[:, b, b]) for b in blocks]  # W_ss = C_s C_s^T, C_s = R_s^T
    total = np.zeros(n_draws)
    for s in range(n_subspaces):
        for t in range(s + 1, n_subspaces):
            left = np.linalg.solve(cholesky[s], W[:, blocks[s], blocks[t]])                      # C_s^-1 W_st
            cross = np.linalg.solve(cholesky[t], left.transpose(0, 2, 1)).transpose(0, 2, 1)   # ... C_t^-T
            total += np.sum(cross ** 2, axis=(1, 2)) / k
    return total / (n_subspaces * (n_subspaces - 1) / 2)


@dataclass(frozen=True)
class OverlapComparison:
    """The mean pairwise overlap of the seeds' top-K subspaces (observed) against as many independent random
    subspaces: expectation K / D, the null's mean, and p_high = (1 + #{null >= observed}) / (1 + n_draws), the
    probability of an overlap this high among random orientations."""
    observed: float
    expectation: float
    null_mean: float
    p_high: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def orientation_comparison(bases, n_draws: int = 2000, seed: int = 0) -> OverlapComparison:
    """mean_pairwise_overlap of >= 2 orthonormal bases (D, K), one per seed, against the null of the same
    statistic: the mean over the same number of pairs of random subspaces (random_mean_pairwise_overlaps), not
    a single pair's overlap (whose spread is sqrt(#pairs) times wider, so that comparison flags almost nothing)."""
    bases = list(bases)
    observed = mean_pairwise_overlap(bases)
    dimension, k = np.shape(bases[0])
    null = random_mean_pairwise_overlaps(dimension, k, len(bases), n_draws, seed)
    p_high = (1.0 + np.sum(null >= observed)) / (1.0 + null.size)
    return OverlapComparison(observed, k / dimension, float(null.mean()), float(p_high))


# ----------------------------------------------------------------------------------------------------------
# Attention concentration (Xu 2026's H(A) = -sum_j A_j log A_j); A has keys on the last axis
# ----------------------------------------------------------------------------------------------------------

def _as_attention(A) -> np.ndarray:
    """Attention weights: finite, >= 0, at least one axis (keys, the last) with at least one key."""
    A = checks.real_array("A", A)
    if A.ndim < 1 or A.shape[-1] < 1:
        raise ValueError(f"A must have a last axis of keys with at least one entry, got shape {A.shape}")
    if A.size and A.min() < 0:
        raise ValueError(f"A must hold attention weights >= 0, got {A.min():g}")
    return A


def attention_entropy(A, eps: float = 1e-9) -> np.ndarray:
    """H = -sum_j A_j log(A_j + eps) over keys (last axis), as the paper code's `bubble_metrics`; eps >= 0
    (0 log 0 counts as 0, also with eps = 0)."""
    A = _as_attention(A)
    eps = checks.real("eps", eps, minimum=0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(A > 0, A * np.log(A + eps), 0.0), axis=-1)


def top_k_mass(A, k: int) -> np.ndarray:
    """Sum of the k largest attention weights over keys (last axis)."""
    A = _as_attention(A)
    k = checks.integer("k", k, 1, A.shape[-1])
    return np.sum(np.sort(A, axis=-1)[..., -k:], axis=-1)


def target_mass(A, target_mask) -> np.ndarray:
    """Attention mass on the ground-truth routing targets (marker and value positions), keys on the last
    axis; target_mask broadcasts against A."""
    A = _as_attention(A)
    mask = checks.real_array("target_mask", target_mask)
    try:
        np.broadcast_shapes(A.shape, mask.shape)
    except ValueError:
        raise ValueError(f"target_mask of shape {mask.shape} does not broadcast against A of shape {A.shape}") from None
    return np.sum(A * mask, axis=-1)


# ----------------------------------------------------------------------------------------------------------
# Routing coordinate and saturation (our definitions: the paper names routing coordinates, defines none)
# ----------------------------------------------------------------------------------------------------------

def _ranks(values) -> np.ndarray:
    """Average ranks along axis 0 (ties share their mean rank), as Spearman's rho needs."""
    from scipy.stats import rankdata
    return rankdata(np.asarray(values, dtype=np.float64), axis=0)


def _pearson_columns(columns: np.ndarray, series: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of `columns` (n, c) with each column of `series` (n, s): (c, s)."""
    a = columns - columns.mean(axis=0)
    b = series - series.mean(axis=0)
    norm_a = np.sqrt(np.sum(a ** 2, axis=0))
    norm_b = np.sqrt(np.sum(b ** 2, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a.T @ b) / np.outer(norm_a, norm_b)
    return np.nan_to_num(r)


def spearman(a, b) -> float:
    """Spearman rank correlation of two equal-length series (length >= 2); 0 when either is constant (no order
    to correlate)."""
    a, b = checks.real_array("a", a), checks.real_array("b", b)
    if a.shape != b.shape or a.ndim != 1 or a.size < 2:
        raise ValueError(f"spearman needs two 1-D series of equal length >= 2, got {a.shape} and {b.shape}")
    return float(_pearson_columns(_ranks(a)[:, None], _ranks(b)[:, None])[0, 0])


def block_permutation(n: int, block_length: int, rng: np.random.Generator) -> np.ndarray:
    """A random order of n time indices that shuffles contiguous blocks (keeps short-range autocorrelation)."""
    starts = np.arange(0, n, block_length)
    return np.concatenate([np.arange(s, min(s + block_length, n)) for s in rng.permutation(starts)])


def dct_sign_flip_surrogates(series, n_surrogates: int, rng) -> np.ndarray:
    """(n, n_surrogates) surrogates of a series (n,): its mean plus its orthonormal DCT-II modes with the
    amplitudes kept and each mode's sign drawn at random (+-1 with probability 1/2, independently).

    They keep the power of every mode, hence the series' smoothness and autocorrelation, and its end-point
    behaviour (the DCT-II basis has no periodic wrap-around, unlike Fourier phase randomization, which turns a
    trend into a jump). For a series whose law is unchanged by these sign flips they are exact draws given the
    amplitudes: a Gaussian random walk is one (the covariance of a mean-centred walk is diagonal in the DCT-II
    basis, eigenvalues 1 / (4 sin^2(pi k / 2n))), and stationary smooth processes nearly are (DCT-II nearly
    diagonalizes their covariance). rng: a numpy Generator or an integer seed >= 0."""
    from scipy.fft import dct, idct
    series = checks.real_array("series", series)
    if series.ndim != 1 or series.size < 2:
        raise ValueError(f"series must be a 1-D array of length >= 2, got shape {series.shape}")
    n_surrogates = checks.integer("n_surrogates", n_surrogates, minimum=1)
    rng = _generator(rng)
    scale = checks.binary_scale(series)
    unit = series / scale
    mean = unit.mean()
    modes = dct(unit - mean, norm="ortho")
    signs = rng.choice([-1.0, 1.0], size=(series.size, n_surrogates))
    return (mean + idct(modes[:, None] * signs, axis=0, norm="ortho")) * scale


@dataclass(frozen=True)
class RoutingCoordinate:
    """The trajectory coordinate that best tracks the attention entropy.

    index: column of the candidate matrix chosen; rho: its Spearman correlation with the entropy;
    p_value: the probability, under the null, of a max_c |rho_c| at least this high (the maximum over
    candidates is recomputed for every null draw, so the search over candidates is accounted for); time_rho:
    Spearman of the entropy with the snapshot index itself, the "clock" control: a coordinate that only tracks
    time scores |rho| ~ |time_rho|.
    """
    index: int
    rho: float
    p_value: float
    time_rho: float
    coordinate: np.ndarray


def routing_coordinate(candidates, entropy, n_permutations: int = 2000, block_length: int | None = None,
                       seed: int = 0, null: str = "dct_sign_flips") -> RoutingCoordinate:
    """argmax over candidate coordinates (n_snapshots, c) of |Spearman(candidate, entropy)|, with the p-value of
    that maximum under a null of `n_permutations` draws. A constant candidate or entropy has rho 0 (as spearman);
    all-zero rhos give index 0 and p_value 1.

    null "dct_sign_flips" (the default): the entropy's rank series replaced by dct_sign_flip_surrogates of it
    (then ranked again), the candidates kept. Both series are smooth: 41 snapshots of a training run have a
    handful of independent modes, and two smooth curves correlate strongly by chance (a random walk's second
    principal coordinate is a U, which matches any fall-and-rebound of the entropy: Antognini & Sohl-Dickstein
    2018). The surrogates keep the power of every DCT mode of the ranks (Spearman's rho sees only ranks: a sharp
    fall of H is a gentle one of its ranks), so the null curves are as smooth as the entropy's ranks. Why it is
    valid, from either side: the flips draw from the law of the entropy's ranks given their mode amplitudes
    whenever that law is unchanged by the flips, as it is (nearly: ranks are close to an affine function of a
    smooth series) for random-walk-like and stationary smooth entropies; and when the candidates are principal
    coordinates of an isotropic random walk, which are nearly the DCT modes themselves, the flips leave the
    statistic nearly unchanged, so p stays away from 0 whatever the entropy's shape. With ~12 such candidates
    and 41 snapshots, p < 0.05 in 0 of 100 trials for a fall-then-rebound entropy and 5 of 300 for a random-walk
    one (median p 0.57 and 0.46; block permutation: 97 and 66 of 100). The price: a candidate that is itself one
    smooth mode cannot be told from a coincidence of shapes; a candidate whose own fluctuations the entropy
    follows (0.3 of its s.d.) is found with p < 0.05 in 200 of 200 trials.

    null "block_permutation": the entropy ranks permuted in blocks of `block_length` snapshots (default 4).
    Kept to reproduce the earlier p-values; it does not keep the long-range smoothness and accepts unrelated
    smooth curves (a fall-and-rebound entropy against random-walk principal coordinates gives p < 0.05 in almost
    every trial). block_length applies to this null only.
    """
    candidates = checks.real_array("candidates", candidates)
    entropy = checks.real_array("entropy", entropy)
    if candidates.ndim != 2 or entropy.ndim != 1 or candidates.shape[0] != entropy.shape[0] \
            or candidates.shape[1] < 1:
        raise ValueError(f"candidates must be (n, c >= 1) and entropy (n,), got {candidates.shape}, {entropy.shape}")
    if candidates.shape[0] < 4:
        raise ValueError(f"need at least 4 snapshots for a rank correlation, got {candidates.shape[0]}")
    n_permutations = checks.integer("n_permutations", n_permutations, minimum=1)
    if null not in ROUTING_NULLS:
        raise ValueError(f"null={null!r}: must be one of {ROUTING_NULLS}")
    if block_length is not None:
        block_length = checks.integer("block_length", block_length, minimum=1)
        if null != "block_permutation":
            warnings.warn(f"block_length={block_length} is ignored: it applies to null='block_permutation' only",
                          stacklevel=2)
    seed = checks.integer("seed", seed, minimum=0)
    candidate_ranks, entropy_ranks = _ranks(candidates), _ranks(entropy)
    rhos = _pearson_columns(candidate_ranks, entropy_ranks[:, None])[:, 0]
    best = int(np.argmax(np.abs(rhos)))
    rng = np.random.default_rng(seed)
    if null == "dct_sign_flips":
        null_series = _ranks(dct_sign_flip_surrogates(entropy_ranks, n_permutations, rng))
    else:
        length = 4 if block_length is None else block_length
        null_series = np.stack([entropy_ranks[block_permutation(len(entropy), length, rng)]
                                for _ in range(n_permutations)], axis=1)
    null_max = np.max(np.abs(_pearson_columns(candidate_ranks, null_series)), axis=0)
    p_value = (1.0 + np.sum(null_max >= abs(rhos[best]) - 1e-12)) / (1.0 + n_permutations)
    time_rho = spearman(np.arange(len(entropy), dtype=np.float64), entropy)
    return RoutingCoordinate(best, float(rhos[best]), float(p_value), time_rho, candidates[:, best].copy())


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def saturation_curve(r, h_min, h_max, r0, tau):
    """H(r) = H_min + (H_max - H_min) sigma(-(r - r0) / tau): entropy saturating along the coordinate r; tau != 0
    (the sign orients r), every number finite."""
    r = checks.real_array("r", r)
    h_min, h_max, r0 = checks.real("h_min", h_min), checks.real("h_max", h_max), checks.real("r0", r0)
    tau = checks.real("tau", tau)
    if tau == 0.0:
        raise ValueError("tau must be nonzero (a step of zero width has no slope to fit)")
    return _saturation(r, h_min, h_max, r0, tau)


def _saturation(r, h_min, h_max, r0, tau):
    return h_min + (h_max - h_min) * _sigmoid(-(r - r0) / tau)


@dataclass(frozen=True)
class SaturationFit:
    """Least-squares fit of saturation_curve. r_squared: goodness of fit; drop_fraction F = (H(0) - H(T)) /
    (H(0) - H_min), NaN where H(0) = H_min (the series starts on its lower plateau: no drop to measure);
    late_slope_ratio S = |dH/dr| at the last snapshot / max |dH/dr| (S -> 0 is saturation);
    rebound = H(T) - min H (the paper code's entropy rises again after its minimum)."""
    h_min: float
    h_max: float
    r0: float
    tau: float
    r_squared: float
    drop_fraction: float
    late_slope_ratio: float
    rebound: float

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def fit_saturation(r, entropy, h_bounds=None) -> SaturationFit:
    """Fit H = H_min + (H_max - H_min) sigma(-(r - r0)/tau) over the snapshots.

    Both plateaus are kept inside h_bounds (for an attention entropy (0, ln T); default: the data range
    widened by its spread), so that an exponential-looking decay cannot fit a plateau far above any reachable
    entropy; and |tau| >= range(r) / (n - 1), so that the fit cannot turn into a step sharper than the
    snapshots resolve (a step has zero slope everywhere and would read as perfect saturation).
    Both series must vary (ValueError otherwise: a constant has no saturation to fit); r's scale does not matter.
    """
    from scipy.optimize import least_squares
    r, entropy = checks.real_array("r", r), checks.real_array("entropy", entropy)
    if r.shape != entropy.shape or r.ndim != 1 or r.size < 5:
        raise ValueError(f"r and entropy must be 1-D series of equal length >= 5, got {r.shape}, {entropy.shape}")
    for name, series in (("r", r), ("entropy", entropy)):
        if np.ptp(series) == 0:
            raise ValueError(f"{name} is constant: there is no saturation to fit")
    r_scale = checks.binary_scale(r)  # fitted on r / 2^e (exact), then r0 and tau scaled back
    r = r / r_scale
    spread = float(np.ptp(r))
    if h_bounds is None:
        h_bounds = (entropy.min() - np.ptp(entropy), entropy.max() + np.ptp(entropy))
    try:
        low, high = (checks.real("h_bounds", value) for value in h_bounds)
    except (TypeError, ValueError):
        raise ValueError(f"h_bounds must be two finite numbers (low, high), got {h_bounds!r}") from None
    if not (low < high and low <= entropy.min() + 1e-9 and entropy.max() <= high + 1e-9):
        raise ValueError(f"h_bounds must be an interval containing the entropy values, got {h_bounds}")
    tau_floor = spread / (r.size - 1)

    def residuals(params):
        return _saturation(r, *params) - entropy

    best = None
    # the orientation of r is arbitrary (a PC's sign), so fit both signs of tau from a few centres
    for sign in (1.0, -1.0):
        tau_range = (tau_floor, 10 * spread) if sign > 0 else (-10 * spread, -tau_floor)
        lower = [low, low, r.min() - spread, tau_range[0]]
        upper = [high, high, r.max() + spread, tau_range[1]]
        for r0_start in np.quantile(r, [0.25, 0.5, 0.75]):
            start = np.clip([entropy.min(), entropy.max(), r0_start, sign * max(spread / 8, 1.01 * tau_floor)],
                            lower, upper)
            fit = least_squares(residuals, start, bounds=(lower, upper),
                                x_scale=[1.0, 1.0, spread, spread / 8], max_nfev=2000)
            if best is None or fit.cost < best.cost:
                best = fit
    h_min, h_max, r0, tau = best.x
    if h_min > h_max:  # the same curve with the roles of the plateaus exchanged; report H_min < H_max
        h_min, h_max, tau = h_max, h_min, -tau
    total = float(np.sum((entropy - entropy.mean()) ** 2))
    r_squared = 1.0 - 2.0 * best.cost / total if total > 0 else 0.0
    sigma_last = _sigmoid(-(r[-1] - r0) / tau)
    late_slope_ratio = float(4.0 * sigma_last * (1.0 - sigma_last))  # slope / peak slope of a logistic
    denominator = entropy[0] - h_min
    drop_fraction = float((entropy[0] - entropy[-1]) / denominator) if abs(denominator) > 0 else float("nan")
    return SaturationFit(float(h_min), float(h_max), float(r0 * r_scale), float(tau * r_scale), float(r_squared),
                         drop_fraction, late_slope_ratio, float(entropy[-1] - entropy.min()))

