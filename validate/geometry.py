"""The public face of the execution-manifold measurements (Xu 2026, arXiv 2602.10496).

    from validate.geometry import effective_dimension, sgd_commutator

    effective_dimension(X, q=0.9)     # X: (n_snapshots, D) -> the smallest k whose top-k principal components of
                                      # the mean-centred rows hold >= q of the variance (the paper's r90 at q = 0.9,
                                      # section 3.3.1)
    sgd_commutator(model, loss_fn, batch_a, batch_b, lr)
                                      # theta_AB - theta_BA of two plain SGD steps taken in both orders, one flat
                                      # tensor in the order of model.parameters(); the model is left as it was

The implementations live in validate/_execution_manifold/ (geometry.py: spectra, null models, orientation,
routing, each with a null of its own statistic; commutator.py: SGD commutators). This module only re-exports
them, so the names other code relies on do not move when the code behind them does.
"""
from validate._execution_manifold.commutator import sgd_commutator
from validate._execution_manifold.geometry import (
    NULL_KINDS, ROUTING_NULLS, NullComparison, OverlapComparison, RoutingCoordinate, SaturationFit,
    attention_entropy, capped_rank_at_fraction, collapse_index, dct_sign_flip_surrogates, derived_seed,
    effective_dimension, entropy_effective_rank, fit_saturation, increment_dimension, increment_gram,
    mean_pairwise_overlap, null_calibration, null_increment_gram, orientation_comparison, participation_ratio,
    pc1_fraction_of_spectrum, pc_coordinates, pc_coordinates_of_increment_gram, prefix_dimension_curve,
    principal_directions, random_mean_pairwise_overlaps, random_subspace_overlaps, rank_at_fraction,
    routing_coordinate, saturation_curve, spearman, spectrum_from_increment_gram, subspace_overlap, target_mass,
    top_k_mass, trajectory_statistics, variance_spectrum, window_dimension_curve)

__all__ = [
    "NULL_KINDS", "ROUTING_NULLS", "NullComparison", "OverlapComparison", "RoutingCoordinate", "SaturationFit",
    "attention_entropy", "capped_rank_at_fraction", "collapse_index", "dct_sign_flip_surrogates", "derived_seed",
    "effective_dimension", "entropy_effective_rank", "fit_saturation", "increment_dimension", "increment_gram",
    "mean_pairwise_overlap", "null_calibration", "null_increment_gram", "orientation_comparison",
    "participation_ratio", "pc1_fraction_of_spectrum", "pc_coordinates", "pc_coordinates_of_increment_gram",
    "prefix_dimension_curve", "principal_directions", "random_mean_pairwise_overlaps", "random_subspace_overlaps",
    "rank_at_fraction", "routing_coordinate", "saturation_curve", "sgd_commutator", "spearman",
    "spectrum_from_increment_gram", "subspace_overlap", "target_mass", "top_k_mass", "trajectory_statistics",
    "variance_spectrum", "window_dimension_curve",
]
