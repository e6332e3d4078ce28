"""Speed of the random-walk null model (N1) of validate.geometry, the null that calibrates Xu (2026)'s r90.

Claim: a null draw from the Wishart (Bartlett) Gram matrix costs O(n^3) whatever the block size D, while the
direct way (draw n-1 isotropic increments in R^D, rescale to the observed norms, form their Gram matrix) costs
O(n^2 D). Both then take the same (n x n) spectrum, and tests/test_geometry.py checks that they give the same
distribution. Baseline: the direct draw, measured in the same run.
"""
from __future__ import annotations

import time

import numpy as np

from validate._execution_manifold import geometry as geo


def _direct_null_gram(gram, ambient_dim, rng):
    norms = np.sqrt(np.diag(gram))
    increments = rng.standard_normal((len(norms), ambient_dim))
    increments *= (norms / np.linalg.norm(increments, axis=1))[:, None]
    return increments @ increments.T


def _time_per_draw(draw, n_draws) -> float:
    start = time.perf_counter()
    for _ in range(n_draws):
        geo.trajectory_statistics(draw())
    return (time.perf_counter() - start) / n_draws


def run(quick: bool = False) -> list[dict]:
    rows = []
    n_snapshots = 41  # the released code's 20,000 steps / 500 + 1
    # one attention block of the paper's model (128 x 128) and all 20 of them jointly
    for ambient_dim in ((16_384,) if quick else (16_384, 327_680)):
        rng = np.random.default_rng(0)
        observed = geo.increment_gram(np.cumsum(rng.standard_normal((n_snapshots, 64)), axis=0))
        n_draws = 5 if quick or ambient_dim > 100_000 else 20
        direct = _time_per_draw(lambda: _direct_null_gram(observed, ambient_dim, rng), n_draws)
        bartlett = _time_per_draw(lambda: geo.null_increment_gram(observed, "random_walk", ambient_dim, rng),
                                  4 * n_draws)
        rows.append({"name": f"random-walk null draw, D={ambient_dim}, n={n_snapshots}",
                     "baseline": "explicit Gaussian increments in R^D", "ratio": direct / bartlett,
                     "detail": f"direct {direct * 1e3:.2f} ms, Bartlett {bartlett * 1e3:.2f} ms per draw "
                               f"(incl. the shared spectrum)"})
    for row in rows:
        print(f"{row['name']}: {row['ratio']:.1f}x faster than {row['baseline']} ({row['detail']})")
    return rows


if __name__ == "__main__":  # the flags of `python -m benchmarks`, for this benchmark alone
    import sys

    from benchmarks.__main__ import main as run_benchmarks
    sys.exit(run_benchmarks(only="execution_manifold"))
