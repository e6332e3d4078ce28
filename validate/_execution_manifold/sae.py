"""Sparse autoencoders on the residual stream: routing capture, execution isolation and a corrected causal
ablation (Xu 2026, section 3.3.3; the released code's experiment_full.py and helpers.TopKSAE).

The paper text describes a ReLU + L1 SAE; its code trains a TopK SAE (k = 16, d_sae = 256) on the post-final-
LayerNorm residual at value-token positions with m = 4 only, zeroes the six top-variance latents there and
reads the head at position T-1, a position those edits reach only when a value sits at T-1; the splice also
replaces the whole vector by the SAE reconstruction, confounding ablation with reconstruction error. Here:

  SparseAutoencoder          "topk" (TopK then ReLU, unit-norm decoder) or "relu_l1" (ReLU + L1)
  fraction_of_variance_unexplained, dead_latent_fraction
  collect_residuals          residual stream after block `layer`, at the readout position or at the marker
                             and value positions, with mixed m and the task variables of every vector
  latent_scores, routing_capture          |Pearson| (numeric) or correlation ratio eta (categorical)
  single_latent_probe_accuracy, linear_probe_accuracy      execution isolation for the answer y
  ablate_at_site             error-term-preserving latent ablation x' = x - sum_{j in S} z_j d_j at a layer and
                             position the readout uses, then the rest of the forward pass
  paper_code_ablation        the released code's splice, for the paper-faithful figure
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from validate._common import checks
from validate._execution_manifold.modular import TaskConfig, sample_batch

SAE_KINDS = ("topk", "relu_l1")


# ----------------------------------------------------------------------------------------------------------
# The autoencoders
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SAEConfig:
    """kind "topk": z = ReLU(TopK_k(pre)), loss MSE (Gao et al. 2024; the code's TopK without its missing
    ReLU); "relu_l1": z = ReLU(pre), loss MSE + l1 * sum |z| (the paper text). Inputs are centred and scaled to
    unit mean-square per coordinate, so l1 is comparable across layers; decoder columns have unit norm."""
    kind: str = "topk"
    d_sae: int = 256
    k: int = 16
    l1: float = 0.02
    lr: float = 1e-3
    steps: int = 2000
    batch_size: int = 512
    seed: int = 0

    def __post_init__(self):
        if self.kind not in SAE_KINDS:
            raise ValueError(f"kind must be one of {SAE_KINDS}, got {self.kind!r}")
        checks.field(self, "d_sae", checks.integer, 1)
        checks.field(self, "k", checks.integer, 1, self.d_sae, why=" (k <= d_sae)")
        checks.field(self, "l1", checks.real, 0.0)
        checks.field(self, "lr", checks.real, 0.0, above=True)
        checks.field(self, "steps", checks.integer, 1)
        checks.field(self, "batch_size", checks.integer, 1)
        checks.field(self, "seed", checks.integer, 0, checks.SEED_LIMIT - 1)


class SparseAutoencoder(nn.Module):
    def __init__(self, d_in: int, config: SAEConfig, center: torch.Tensor, scale: float):
        super().__init__()
        self.config = config
        generator = torch.Generator().manual_seed(config.seed)
        decoder = torch.randn(d_in, config.d_sae, generator=generator)
        decoder = decoder / decoder.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(decoder)
        self.W_enc = nn.Parameter(decoder.T.clone())  # encoder initialised as the decoder's transpose
        self.b_enc = nn.Parameter(torch.zeros(config.d_sae))
        self.b_dec = nn.Parameter(torch.zeros(d_in))
        self.register_buffer("center", center.detach().clone().float())
        self.register_buffer("scale", torch.tensor(float(scale)))

    def pre_activations(self, x):
        return ((x - self.center) / self.scale - self.b_dec) @ self.W_enc.T + self.b_enc

    def encode(self, x):
        pre = self.pre_activations(x)
        if self.config.kind == "topk":
            values, indices = pre.topk(self.config.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, indices, F.relu(values))
        return F.relu(pre)

    def decode(self, z):
        return self.center + self.scale * (z @ self.W_dec.T + self.b_dec)

    def latent_contribution(self, z, latents):
        """sum_{j in latents} z_j * (scale * W_dec[:, j]): what the chosen latents add to the reconstruction."""
        return self.scale * (z[..., latents] @ self.W_dec[:, latents].T)

    def forward(self, x):
        z = self.encode(x)
        return self.decode(z), z


def train_sae(activations: torch.Tensor, config: SAEConfig = SAEConfig()) -> SparseAutoencoder:
    """Adam on minibatches of the (N, d_in) activations; decoder columns renormalized after every step."""
    X = activations.detach().float()
    center = X.mean(dim=0)
    scale = float(((X - center) ** 2).mean().sqrt())
    sae = SparseAutoencoder(X.shape[1], config, center, scale if scale > 0 else 1.0)
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
    generator = torch.Generator().manual_seed(config.seed + 1)
    normalized = (X - center) / sae.scale
    for _ in range(config.steps):
        batch = normalized[torch.randint(len(X), (min(config.batch_size, len(X)),), generator=generator)]
        pre = (batch - sae.b_dec) @ sae.W_enc.T + sae.b_enc
        if config.kind == "topk":
            values, indices = pre.topk(config.k, dim=-1)
            z = torch.zeros_like(pre).scatter(-1, indices, F.relu(values))
        else:
            z = F.relu(pre)
        reconstruction = z @ sae.W_dec.T + sae.b_dec
        loss = ((reconstruction - batch) ** 2).sum(dim=-1).mean()
        if config.kind == "relu_l1":
            loss = loss + config.l1 * z.abs().sum(dim=-1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            sae.W_dec /= sae.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)
    return sae


def fraction_of_variance_unexplained(sae: SparseAutoencoder, X: torch.Tensor) -> float:
    """FVU = sum ||x - x_hat||^2 / sum ||x - mean x||^2."""
    with torch.no_grad():
        reconstruction, _ = sae(X)
        return float(((X - reconstruction) ** 2).sum() / ((X - X.mean(dim=0)) ** 2).sum())


def dead_latent_fraction(sae: SparseAutoencoder, X: torch.Tensor) -> float:
    """Share of latents never active on X."""
    with torch.no_grad():
        return float((sae.encode(X) > 0).sum(dim=0).eq(0).float().mean())


def mean_active_latents(sae: SparseAutoencoder, X: torch.Tensor) -> float:
    with torch.no_grad():
        return float((sae.encode(X) > 0).sum(dim=1).float().mean())


# ----------------------------------------------------------------------------------------------------------
# Residual-stream activations with their task variables
# ----------------------------------------------------------------------------------------------------------

SITES = ("readout", "targets")


@dataclass
class Activations:
    """vectors (N, d); variables {name: (N,) array}; categorical: names of the categorical variables."""
    vectors: torch.Tensor
    variables: dict
    categorical: tuple
    layer: int
    site: str


def residual_after_block(model, tokens, layer: int) -> torch.Tensor:
    """The residual stream x after block `layer` (before the final LayerNorm), (B, T, d)."""
    captured = {}

    def keep(module, inputs, output):  # returns None: the forward pass is not changed
        captured["x"] = output[0]

    handle = model.blocks[layer].register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        handle.remove()
    return captured["x"]


def collect_residuals(model, task: TaskConfig, layer: int, site: str = "readout", n_examples: int = 4096,
                      seed: int = 0, markers=None) -> Activations:
    """Residual vectors after block `layer` with mixed m, so that m varies (the code's m = 4 only cannot show
    a latent tracking m).

    site "readout": position T-1, one vector per sequence; variables m, y (the answer), the last value, the
    distance from the readout to the last marker, the readout token. site "targets": every marker and value
    position; variables m, position, is_value, marker index, token, y, partial sum up to that marker."""
    if site not in SITES:
        raise ValueError(f"site must be one of {SITES}, got {site!r}")
    if not 0 <= layer < len(model.blocks):
        raise ValueError(f"layer must be in [0, {len(model.blocks) - 1}], got {layer}")
    markers = tuple(task.markers if markers is None else markers)
    generator = torch.Generator().manual_seed(7_919 * (seed + 1))
    device = next(model.parameters()).device
    per_m = max(1, n_examples // len(markers))
    vectors, rows = [], []
    for m in markers:
        batch = sample_batch(task, m, generator, n_examples=per_m, shared_positions=False)
        x = residual_after_block(model, batch.tokens.to(device), layer).float().cpu()
        values = batch.tokens.gather(1, batch.marker_positions + 1)
        if site == "readout":
            vectors.append(x[:, -1])
            rows.append({"m": np.full(per_m, m), "y": batch.labels.numpy(),
                         "last_value": values[:, -1].numpy(),
                         "readout_distance": (task.seq_len - 1 - batch.marker_positions[:, -1]).numpy(),
                         "readout_token": batch.tokens[:, -1].numpy()})
        else:
            partial = torch.cumsum(values, dim=1) % task.modulus
            for i in range(m):
                for offset, is_value in ((0, 0), (1, 1)):
                    position = batch.marker_positions[:, i] + offset
                    vectors.append(x[torch.arange(per_m), position])
                    rows.append({"m": np.full(per_m, m), "position": position.numpy(),
                                 "is_value": np.full(per_m, is_value), "marker_index": np.full(per_m, i),
                                 "token": batch.tokens[torch.arange(per_m), position].numpy(),
                                 "y": batch.labels.numpy(), "partial_sum": partial[:, i].numpy()})
    variables = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
    # positions are categories too (a latent may fire at one position only, which no linear score sees)
    categorical = (("y", "last_value", "readout_token", "readout_distance") if site == "readout"
                   else ("token", "y", "partial_sum", "position"))
    return Activations(torch.cat(vectors), variables, categorical, layer, site)


ROUTING_VARIABLES = {"readout": ("m", "readout_distance"),
                     "targets": ("m", "position", "is_value", "marker_index")}
# token identity (about 250 categories) is scored too, but its correlation ratio is biased upward by
# ~sqrt(categories / N) on finite data, so it does not count towards n_routing_latents
EXECUTION_VARIABLE = "y"


# ----------------------------------------------------------------------------------------------------------
# Routing capture and execution isolation (correlational: the paper's "3-5 of several hundred" latents)
# ----------------------------------------------------------------------------------------------------------

def correlation_ratio(values: np.ndarray, categories: np.ndarray) -> np.ndarray:
    """eta = sqrt(between-category variance / total variance) of each column of values (N, c): 1 when the
    category determines the value, ~0 when it says nothing."""
    values = np.asarray(values, dtype=np.float64)
    total = ((values - values.mean(axis=0)) ** 2).sum(axis=0)
    between = np.zeros(values.shape[1])
    for c in np.unique(categories):
        members = values[categories == c]
        between += len(members) * (members.mean(axis=0) - values.mean(axis=0)) ** 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(np.sqrt(between / total))


def absolute_pearson(values: np.ndarray, variable: np.ndarray) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    a = a - a.mean(axis=0)
    b = np.asarray(variable, dtype=np.float64)
    b = b - b.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.nan_to_num(np.abs(a.T @ b) / (np.sqrt((a ** 2).sum(axis=0)) * np.sqrt((b ** 2).sum())))


def latent_scores(latents, variables: dict, categorical=()) -> dict:
    """{variable: (d_sae,) score}: |Pearson| for numeric variables, correlation ratio for categorical ones."""
    Z = latents.detach().cpu().numpy() if torch.is_tensor(latents) else np.asarray(latents)
    return {name: (correlation_ratio(Z, v) if name in categorical else absolute_pearson(Z, v))
            for name, v in variables.items()}


def routing_capture(scores: dict, routing_variables, threshold: float = 0.5) -> dict:
    """routing_capture(v) = max_j score_j(v); n_routing_latents = #{j : score >= threshold for some v}."""
    capture = {v: float(scores[v].max()) for v in routing_variables if v in scores}
    stacked = np.stack([scores[v] for v in routing_variables if v in scores])
    return {"capture": capture, "n_routing_latents": int(np.sum(stacked.max(axis=0) >= threshold)),
            "best_latent": {v: int(scores[v].argmax()) for v in routing_variables if v in scores}}


def _split(n: int, seed: int, train_fraction: float = 0.7):
    order = np.random.default_rng(seed).permutation(n)
    cut = int(train_fraction * n)
    return order[:cut], order[cut:]


def single_latent_probe_accuracy(latents, labels, n_bins: int = 16, seed: int = 0) -> np.ndarray:
    """Held-out accuracy, per latent, of the best classifier of a single scalar: quantile bins of the latent
    (its zero value one bin of its own), each predicting its majority training label."""
    Z = latents.detach().cpu().numpy() if torch.is_tensor(latents) else np.asarray(latents)
    labels = np.asarray(labels)
    train, test = _split(len(labels), seed)
    n_classes = int(labels.max()) + 1
    majority = np.bincount(labels[train], minlength=n_classes).argmax()
    accuracy = np.empty(Z.shape[1])
    for j in range(Z.shape[1]):
        edges = np.unique(np.quantile(Z[train, j], np.linspace(0, 1, n_bins + 1)[1:-1]))
        bins_train, bins_test = np.searchsorted(edges, Z[train, j]), np.searchsorted(edges, Z[test, j])
        table = np.zeros((len(edges) + 1, n_classes))
        np.add.at(table, (bins_train, labels[train]), 1)
        prediction = np.where(table.sum(axis=1) > 0, table.argmax(axis=1), majority)
        accuracy[j] = float(np.mean(prediction[bins_test] == labels[test]))
    return accuracy


def linear_probe_accuracy(features, labels, seed: int = 0, steps: int = 200, weight_decay: float = 1e-4) -> float:
    """Held-out accuracy of a multinomial logistic regression on standardized features (full-batch L-BFGS)."""
    X = features.detach().float().cpu() if torch.is_tensor(features) else torch.tensor(features, dtype=torch.float32)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    train, test = (torch.as_tensor(i) for i in _split(len(y), seed))
    mean, std = X[train].mean(dim=0), X[train].std(dim=0).clamp_min(1e-6)
    X = (X - mean) / std
    n_classes = int(y.max()) + 1
    torch.manual_seed(seed)
    linear = nn.Linear(X.shape[1], n_classes)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(X[train]), y[train]) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((linear(X[test]).argmax(dim=1) == y[test]).float().mean())


# ----------------------------------------------------------------------------------------------------------
# Causal ablations
# ----------------------------------------------------------------------------------------------------------

def logits_with_edit(model, tokens, layer: int, position: int, edit) -> torch.Tensor:
    """Logits when the residual after block `layer` at `position` is replaced by edit(x_site) and the forward
    pass continues through the later blocks, the final LayerNorm and the head."""
    def hook(module, inputs, output):
        x, attention = output
        x = x.clone()
        x[:, position] = edit(x[:, position])
        return x, attention

    handle = model.blocks[layer].register_forward_hook(hook)
    try:
        with torch.no_grad():
            return model(tokens).logits
    finally:
        handle.remove()


def latent_ablation_edit(sae: SparseAutoencoder, latents):
    """x' = x - sum_{j in latents} z_j(x) d_j: removes only the chosen latents' contributions and keeps the
    SAE's reconstruction error (SAELens' use_error_term), so ablation is not confounded with reconstruction."""
    latents = list(latents)

    def edit(x):
        if not latents:
            return x
        return x - sae.latent_contribution(sae.encode(x), latents)
    return edit


def pca_ablation_edit(directions: torch.Tensor, mean: torch.Tensor):
    """x' = x - U U^T (x - mean): projects out the top principal directions U (d, r) of the activations."""
    def edit(x):
        return x - ((x - mean) @ directions) @ directions.T
    return edit


def principal_axes(X: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    mean = X.mean(dim=0)
    _, _, V = torch.linalg.svd(X - mean, full_matrices=False)
    return V[:r].T.contiguous(), mean


def accuracy_with_edit(model, batches, layer: int, position: int, edit) -> float:
    correct = total = 0
    for batch in batches:
        logits = logits_with_edit(model, batch.tokens, layer, position, edit)
        correct += int((logits.argmax(dim=-1) == batch.labels).sum())
        total += len(batch.labels)
    return correct / total


def paper_code_ablation(model, batch, sae: SparseAutoencoder, latents) -> tuple[float, float]:
    """The released code's `eval_with_token_sae_ablation`: the post-final-LayerNorm residual at every value
    position is replaced by the SAE reconstruction with `latents` zeroed, then the head reads position T-1.
    Returns (accuracy before, accuracy after)."""
    captured = {}

    def keep(module, inputs, output):
        captured["h"] = output

    handle = model.ln_final.register_forward_hook(keep)
    try:
        with torch.no_grad():
            logits = model(batch.tokens).logits
    finally:
        handle.remove()
    h = captured["h"].clone()
    rows = torch.arange(len(batch.labels))[:, None]
    positions = batch.marker_positions + 1
    with torch.no_grad():
        z = sae.encode(h[rows, positions])
        z[..., list(latents)] = 0.0
        h[rows, positions] = sae.decode(z)
        ablated = model.head(h[:, -1])
    before = float((logits.argmax(-1) == batch.labels).float().mean())
    after = float((ablated.argmax(-1) == batch.labels).float().mean())
    return before, after


def top_variance_latents(sae: SparseAutoencoder, X: torch.Tensor, n: int) -> list[int]:
    """The code's `top_variance_latents`: latents ranked by the variance of their pre-activations."""
    with torch.no_grad():
        return sae.pre_activations(X).var(dim=0).argsort(descending=True)[:n].tolist()


# ----------------------------------------------------------------------------------------------------------
# Planted synthetic data: sparse routing features and a dense answer code, for the unit tests
# ----------------------------------------------------------------------------------------------------------

@dataclass
class PlantedData:
    vectors: torch.Tensor
    sparse_directions: torch.Tensor  # (n_sparse, d) unit vectors
    sparse_active: np.ndarray        # (N, n_sparse) bool
    dense_basis: torch.Tensor        # (3, d) orthonormal
    labels: np.ndarray               # y in {0..C-1}, carried only by the dense code


def planted_data(n: int = 8192, d: int = 64, n_sparse: int = 12, modulus: int = 8, p_active: float = 0.08,
                 noise: float = 0.05, seed: int = 0) -> PlantedData:
    """x = sum_i a_i s_i f_i (sparse "routing" features, each on with probability p_active, amplitude
    a_i ~ U(1, 2)) + R (r cos(2 pi y / C), r sin(2 pi y / C), h) (a dense 3-D rotation code of the answer y,
    radius r ~ U(1, 1.5), height h ~ N(0, 0.5^2), in a random 3-D frame R) + isotropic noise."""
    generator = torch.Generator().manual_seed(seed)
    directions = torch.randn(n_sparse + 3, d, generator=generator)
    Q, _ = torch.linalg.qr(directions.T)
    sparse = torch.randn(n_sparse, d, generator=generator)
    sparse = sparse / sparse.norm(dim=1, keepdim=True)
    dense_basis = Q[:, :3].T.contiguous()
    active = torch.rand(n, n_sparse, generator=generator) < p_active
    amplitude = 1.0 + torch.rand(n, n_sparse, generator=generator)
    labels = torch.randint(modulus, (n,), generator=generator)
    angle = 2 * np.pi * labels.float() / modulus
    radius = 1.0 + 0.5 * torch.rand(n, generator=generator)
    height = 0.5 * torch.randn(n, generator=generator)
    code = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle), height], dim=1)
    x = (active * amplitude) @ sparse + code @ dense_basis + noise * torch.randn(n, d, generator=generator)
    return PlantedData(x, sparse, active.numpy(), dense_basis, labels.numpy())


def max_cosine_to(directions: torch.Tensor, dictionary: torch.Tensor) -> np.ndarray:
    """For each planted direction (rows), the largest |cos| with any dictionary column (d, d_sae)."""
    unit = dictionary / dictionary.norm(dim=0, keepdim=True)
    return (directions @ unit).abs().max(dim=1).values.detach().numpy()
