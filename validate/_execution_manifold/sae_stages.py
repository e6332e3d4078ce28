"""Part two's sparse autoencoders at the checkpoints of its training run (Xu 2026, section 3.3.3; the SAEs,
probes and ablation edits are validate._execution_manifold.sae).

    sae_stage(model, task, config, seed)     at one checkpoint: routing capture, execution isolation, the
                                             corrected ablations and the released code's splice

`config` is part two's configuration (validate._execution_manifold.part_two.PartTwoConfig).
"""
from __future__ import annotations

import numpy as np
import torch

from validate._execution_manifold import sae as saes
from validate._execution_manifold.modular import TaskConfig, sample_batch


def sae_stage(model, task: TaskConfig, config, seed: int) -> dict:
    """SAEs at one checkpoint: routing capture at the marker/value positions, execution isolation and
    ablations at the readout position of layer `layer_for_sae`, and the paper code's splice."""
    layer = config.layer_for_sae
    out = {"layer": layer}
    sae_config = dict(d_sae=config.sae_d, k=config.sae_k, l1=config.sae_l1, steps=config.sae_steps, seed=seed)
    readout = saes.collect_residuals(model, task, layer, "readout", config.sae_examples, seed=seed)
    targets = saes.collect_residuals(model, task, layer, "targets", config.sae_examples // 4, seed=seed + 1)
    chance = 1.0 / task.modulus
    out["chance"] = chance
    out["dense_probe_y"] = saes.linear_probe_accuracy(readout.vectors, readout.variables["y"], seed=seed)
    for kind in saes.SAE_KINDS:
        stats = {}
        sae = saes.train_sae(readout.vectors, saes.SAEConfig(kind=kind, **sae_config))
        Z = sae.encode(readout.vectors).detach()
        stats["fvu"] = saes.fraction_of_variance_unexplained(sae, readout.vectors)
        stats["dead_fraction"] = saes.dead_latent_fraction(sae, readout.vectors)
        stats["l0"] = saes.mean_active_latents(sae, readout.vectors)
        scores = saes.latent_scores(Z, readout.variables, readout.categorical)
        stats["routing_readout"] = saes.routing_capture(scores, saes.ROUTING_VARIABLES["readout"])
        single = saes.single_latent_probe_accuracy(Z, readout.variables["y"], seed=seed)
        stats["single_latent_probe_y"] = float(single.max())
        stats["all_latent_probe_y"] = saes.linear_probe_accuracy(Z, readout.variables["y"], seed=seed)
        # targets-site SAE for routing capture (m, positions, token identities)
        target_sae = saes.train_sae(targets.vectors, saes.SAEConfig(kind=kind, **sae_config))
        target_scores = saes.latent_scores(target_sae.encode(targets.vectors).detach(), targets.variables,
                                           targets.categorical)
        stats["routing_targets"] = saes.routing_capture(target_scores, saes.ROUTING_VARIABLES["targets"])
        stats["targets_fvu"] = saes.fraction_of_variance_unexplained(target_sae, targets.vectors)
        if kind == "topk":
            stats["ablation"] = ablations(model, task, config, sae, Z, scores, readout, seed)
        out[kind] = stats
    out["paper_code"] = paper_code_splice(model, task, config, seed)
    return out


def ablations(model, task, config, sae, Z, scores, readout, seed) -> dict:
    """Delta accuracy for ablating, at (layer_for_sae, T-1) with the SAE error term kept: the top-n
    routing-correlated latents, the top-n y-correlated latents, n random live latents, and the top-n PCA
    directions of the activations (the dense subspace). Evaluated on held-out batches of every m."""
    layer, position = config.layer_for_sae, task.seq_len - 1
    generator = torch.Generator().manual_seed(31_337 * (seed + 1))
    batches = [sample_batch(task, m, generator, n_examples=512, shared_positions=False) for m in task.markers]
    base = saes.accuracy_with_edit(model, batches, layer, position, lambda x: x)
    routing = np.max(np.stack([scores[v] for v in saes.ROUTING_VARIABLES["readout"]]), axis=0)
    alive = np.nonzero((Z > 0).any(dim=0).numpy())[0]
    rng = np.random.default_rng(seed)
    out = {"base_accuracy": base, "sizes": list(config.ablation_sizes)}
    for label, ranking in (("routing", np.argsort(-routing)), ("y", np.argsort(-scores["y"]))):
        out[label] = [base - saes.accuracy_with_edit(model, batches, layer, position,
                                                     saes.latent_ablation_edit(sae, ranking[:n].tolist()))
                      for n in config.ablation_sizes]
    out["random"] = [float(np.mean([base - saes.accuracy_with_edit(
        model, batches, layer, position,
        saes.latent_ablation_edit(sae, rng.choice(alive, min(n, alive.size), replace=False).tolist()))
        for _ in range(config.random_ablation_draws)])) for n in config.ablation_sizes]
    out["pca"] = []
    for n in config.ablation_sizes:
        directions, mean = saes.principal_axes(readout.vectors, min(n, readout.vectors.shape[1]))
        out["pca"].append(base - saes.accuracy_with_edit(model, batches, layer, position,
                                                         saes.pca_ablation_edit(directions, mean)))
    # a site the readout never reads: the last block's output at position T-2 (regression test of the code bug)
    out["unread_site"] = base - saes.accuracy_with_edit(model, batches, len(model.blocks) - 1, position - 1,
                                                        lambda x: torch.zeros_like(x))
    # binomial standard error of an accuracy difference on these batches: the noise floor of every Delta acc
    n_eval = sum(len(b.labels) for b in batches)
    out["standard_error"] = float(np.sqrt(2 * base * (1 - base) / n_eval)) if 0 < base < 1 else 1.0 / n_eval
    return out


def paper_code_splice(model, task, config, seed) -> dict:
    """The released code's SAE experiment: TopK SAE on post-final-LN residuals at value positions with m = 4
    (the largest m trained), six top-variance latents zeroed, head read at T-1."""
    m = max(task.markers)
    generator = torch.Generator().manual_seed(4_241 * (seed + 1))
    vectors = []
    captured = {}
    handle = model.ln_final.register_forward_hook(lambda module, inputs, output: captured.__setitem__("h", output))
    try:
        for _ in range(max(1, config.sae_examples // (task.batch_size * m))):
            batch = sample_batch(task, m, generator)
            with torch.no_grad():
                model(batch.tokens)
            rows = torch.arange(len(batch.labels))[:, None]
            vectors.append(captured["h"][rows, batch.marker_positions + 1].reshape(-1, captured["h"].shape[-1]))
    finally:
        handle.remove()
    X = torch.cat(vectors).float()
    sae = saes.train_sae(X, saes.SAEConfig(kind="topk", d_sae=config.sae_d, k=config.sae_k,
                                           steps=config.sae_steps, seed=seed))
    latents = saes.top_variance_latents(sae, X, 12)[:6]
    batch = sample_batch(task, m, generator)  # the code: one batch of 128, positions shared
    before, after = saes.paper_code_ablation(model, batch, sae, latents)
    reaches_readout = bool((batch.marker_positions[:, -1] + 1 == task.seq_len - 1).any())
    return {"accuracy_before": before, "accuracy_after": after, "delta": before - after,
            "edit_reaches_readout": reaches_readout, "fvu": saes.fraction_of_variance_unexplained(sae, X)}

