"""SGD commutators of a real network and their alignment with the execution subspace (Xu 2026, section 3.3.2;
the released code's bubble_exp_comm_v2.py).

    sgd_commutator(model, loss_fn, batch_a, batch_b, lr)   theta_AB - theta_BA, one flat tensor in the order of
                                                            model.parameters(); model untouched
    hvp_commutator(...)                                     the leading term eta^2 (H_B g_A - H_A g_B) of
                                                            theory.commutator, by Hessian-vector products
    ExecutionBasis                                          top-K_b trajectory PCs per weight block, embedded in
                                                            the flat parameter vector (accumulated/final/window)
    alignment(...)                                          rho_exec, the paper's whole-vector random baseline,
                                                            the support- and block-matched baselines, ratios,
                                                            the three perpendicular fractions

Formulas (the leading term, D, the baselines' expectations, the perpendicular fractions) come from
theory.commutator; this module only evaluates them.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import sympy as sp
import torch

from theory import commutator as theory
from validate._common import checks
from validate._execution_manifold.geometry import effective_dimension

BASIS_KINDS = ("accumulated", "final", "window")
SINGULAR_FLOOR = 1e-10  # the code's `build_trajectory_pca_basis` skips directions below this singular value

# compiled once from theory (never retyped): D, E[rho] of a random subspace, the perpendicular fractions
_defect = sp.lambdify((theory.delta_norm, theory.grad_a_norm, theory.grad_b_norm, theory.eta),
                      theory.normalized_defect, modules="math")
_random_norm_mean = sp.lambdify((theory.K, theory.P), theory.random_subspace_norm_mean,
                                modules="math")
_random_norm_paper = sp.lambdify((theory.K, theory.P), theory.random_subspace_norm_paper, modules="math")
_random_energy_mean = sp.lambdify((theory.K, theory.P), theory.random_subspace_energy_mean, modules="math")
_perp = {name: sp.lambdify(theory.rho, getattr(theory, name), modules="math")
         for name in ("perp_norm_frac", "perp_energy_frac", "perp_complement_frac")}


def ratio(a: float, b: float) -> float:
    """a / b, NaN where b is 0 or either is not finite: a ratio undefined there (an empty basis of a run that
    never moved, a zero commutator, a stored NaN) reads as NaN instead of stopping with ZeroDivisionError."""
    return a / b if b != 0 and math.isfinite(a) and math.isfinite(b) else math.nan


# ----------------------------------------------------------------------------------------------------------
# The commutator by two plain SGD paths (finite difference in eta)
# ----------------------------------------------------------------------------------------------------------

@dataclass
class CommutatorSample:
    """delta = theta_AB - theta_BA and the gradients at theta (flat, model.parameters() order)."""
    delta: torch.Tensor
    grad_a: torch.Tensor
    grad_b: torch.Tensor
    lr: float

    @property
    def defect(self) -> float:
        return normalized_defect(self.delta, self.grad_a, self.grad_b, self.lr)

    @property
    def gradient_cosine(self) -> float:
        denominator = float(self.grad_a.norm() * self.grad_b.norm())
        return float(self.grad_a @ self.grad_b) / denominator if denominator > 0 else float("nan")


def normalized_defect(delta, grad_a, grad_b, lr, floor: float = 1e-12) -> float:
    """D = ||delta|| / (||lr g_A|| ||lr g_B||) (Xu 2026, section 3.3.2); NaN where ||g_A|| ||g_B|| < floor,
    since there D measures round-off, not curvature (the late spikes of 100-175 in the paper's defect plot)."""
    norm_a, norm_b = float(grad_a.norm()), float(grad_b.norm())
    if norm_a * norm_b < floor:
        return float("nan")
    return float(_defect(float(delta.norm()), norm_a, norm_b, float(lr)))


class NonFiniteCommutator(ValueError):
    """The two SGD paths left the finite numbers: a NaN or inf loss or gradient, or a step too large for the
    parameters' precision. A ValueError, so that the public sgd_commutator raises what every bad input raises."""


def _flat_gradient(model, loss_fn, batch, parameters, where: str = "at the model's parameters") -> torch.Tensor:
    """The gradient of loss_fn(model, batch), flat in the order of `parameters`; zero for parameters that do
    not require gradients or that the loss does not use. `where` says where the model is, for the errors."""
    loss = loss_fn(model, batch)
    if not torch.is_tensor(loss) or loss.numel() != 1:
        raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}"
                         + (f" of shape {tuple(loss.shape)}" if torch.is_tensor(loss) else ""))
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteCommutator(f"loss_fn returned {float(loss.detach())} {where}: a commutator needs a finite "
                                  "loss")
    trainable = [p for p in parameters if p.requires_grad]
    found = iter(torch.autograd.grad(loss, trainable, allow_unused=True) if trainable and loss.requires_grad
                 else [None] * len(trainable))
    grads = [next(found) if p.requires_grad else None for p in parameters]
    flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for p, g in zip(parameters, grads)])
    if not torch.isfinite(flat).all():
        raise NonFiniteCommutator(f"the gradient of loss_fn is not finite {where}")
    return flat


def _add_flat_(parameters, flat: torch.Tensor, scale: float) -> None:
    for p in parameters:
        if p.is_floating_point() and abs(scale) > torch.finfo(p.dtype).max:
            raise NonFiniteCommutator(f"lr = {abs(scale):g} exceeds the largest {p.dtype} number: the SGD step "
                                      "cannot be represented")
    offset = 0
    with torch.no_grad():
        for p in parameters:
            n = p.numel()
            p.add_(flat[offset:offset + n].view_as(p), alpha=scale)
            offset += n


def _rng_state() -> tuple:
    """The CPU RNG state and, where CUDA is present, every CUDA device's: what dropout draws its masks from."""
    return torch.get_rng_state(), (torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)


def _set_rng_state(state: tuple) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


class _Restorer:
    """Saves parameters, buffers and the RNG states; `reset()` puts them back exactly (bit for bit)."""

    def __init__(self, model):
        self.model = model
        self.parameters = [p.detach().clone() for p in model.parameters()]
        self.buffers = [b.detach().clone() for b in model.buffers()]
        self.rng = _rng_state()

    def reset(self) -> None:
        with torch.no_grad():
            for p, saved in zip(self.model.parameters(), self.parameters):
                p.copy_(saved)
            for b, saved in zip(self.model.buffers(), self.buffers):
                b.copy_(saved)
        _set_rng_state(self.rng)


def measure_commutator(model, loss_fn, batch_a, batch_b, lr: float, dtype: torch.dtype | None = None
                       ) -> CommutatorSample:
    """theta_AB - theta_BA with the gradients g_A, g_B at theta (Xu 2026, section 3.3.2).

    Both paths start from the same parameters and buffers, and each batch draws its random numbers from the
    same RNG state on both paths (batch A from the state the model came with, batch B from the state after A's
    gradient), so a dropout net keeps each batch's mask and delta stays O(lr^2); parameters, buffers and RNG
    state are restored exactly afterwards. dtype=None steps the model itself in its own precision, as the paper's
    code does; dtype=torch.float64 works on a float64 copy, which removes the float32 round-off of
    theta_AB - theta_BA (a difference of two O(1) vectors that agree to O(lr^2)).

    ValueError for an lr that is not a finite number > 0, a model without parameters, or a loss_fn that does
    not return a scalar tensor; NonFiniteCommutator (a ValueError) where a loss, gradient or step is not finite."""
    lr = checks.real("lr", lr, minimum=0.0, above=True)
    if not any(True for _ in model.parameters()):
        raise ValueError("model has no parameters: there is nothing for an SGD step to move")
    if dtype is not None:
        rng = _rng_state()
        working = copy.deepcopy(model).to(dtype)
        sample = measure_commutator(working, loss_fn, batch_a, batch_b, lr, dtype=None)
        _set_rng_state(rng)
        return sample
    parameters = [p for p in model.parameters()]
    saved = _Restorer(model)
    where_after = f"after one SGD step of lr = {lr:g} (use a smaller lr)"
    try:
        # Each batch draws its random numbers (dropout masks) from its own RNG state on both paths: batch A from
        # the state the model came with, batch B from the state after batch A's gradient at theta (what a
        # training step on A then B would give it). Without this, the second path hands A's mask to B and the
        # two paths differ already at O(lr): delta / lr^2 would grow as 1 / lr.
        rng_a = saved.rng
        grad_a = _flat_gradient(model, loss_fn, batch_a, parameters)
        rng_b = _rng_state()
        _add_flat_(parameters, grad_a, -lr)
        _set_rng_state(rng_b)
        _add_flat_(parameters, _flat_gradient(model, loss_fn, batch_b, parameters, where_after), -lr)
        theta_ab = torch.cat([p.detach().reshape(-1) for p in parameters]).clone()
        saved.reset()
        _set_rng_state(rng_b)
        grad_b = _flat_gradient(model, loss_fn, batch_b, parameters)
        _add_flat_(parameters, grad_b, -lr)
        _set_rng_state(rng_a)
        _add_flat_(parameters, _flat_gradient(model, loss_fn, batch_a, parameters, where_after), -lr)
        theta_ba = torch.cat([p.detach().reshape(-1) for p in parameters]).clone()
    finally:
        saved.reset()
    delta = theta_ab - theta_ba
    if not torch.isfinite(delta).all():
        raise NonFiniteCommutator(f"lr = {lr:g}: the two SGD paths overflow (theta_AB - theta_BA is not finite); "
                                  "use a smaller lr")
    return CommutatorSample(delta, grad_a, grad_b, lr)


def sgd_commutator(model, loss_fn: Callable, batch_a, batch_b, lr: float) -> torch.Tensor:
    """The public API (validate.geometry): theta_AB - theta_BA as one flat tensor, parameters in the order of
    model.parameters(); theta_AB = a plain SGD step on batch_a, then one on batch_b. loss_fn(model, batch) ->
    scalar tensor; lr: a finite number > 0 (NumPy scalars too). Parameters that do not require gradients stay
    where they are (zero entries). The model's parameters, buffers and RNG state are left exactly as they were.
    ValueError for a bad lr, a model without parameters, a loss_fn that does not return a scalar tensor, or
    paths that leave the finite numbers (a NaN/inf loss or gradient at the model, or an lr so large the steps
    overflow): the result is always finite."""
    return measure_commutator(model, loss_fn, batch_a, batch_b, lr).delta


# ----------------------------------------------------------------------------------------------------------
# The leading term by Hessian-vector products (torch.func)
# ----------------------------------------------------------------------------------------------------------

class _LossModule(torch.nn.Module):
    """Wraps loss_fn(model, batch) so that torch.func.functional_call can swap the model's parameters."""

    def __init__(self, model, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


def _buffer_record(model) -> dict:
    """Each buffer's identity, in-place version counter and value: a forward pass that writes a buffer changes
    one of them (native kernels such as batch_norm update running statistics without bumping the counter)."""
    return {name: (id(b), b._version, b.detach().clone()) for name, b in model.named_buffers()}


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal shapes and entries, NaN equal to NaN (a buffer holding NaN is unchanged if it still does)."""
    return a.shape == b.shape and bool(((a == b) | ((a != a) & (b != b))).all())


def _rng_state_after_forward(model, loss_fn: Callable, batch_a, batch_b, saved: "_Restorer") -> tuple:
    """The RNG state batch B draws from (the state after loss_fn on batch A, as in measure_commutator); a
    ValueError where loss_fn writes a buffer (BatchNorm in train mode: running statistics), which the
    Hessian-vector products of torch.func cannot differentiate through."""
    before = _buffer_record(model)
    loss_fn(model, batch_a)
    rng_b = _rng_state()
    loss_fn(model, batch_b)
    after = _buffer_record(model)
    changed = [name for name in before.keys() | after.keys()
               if name not in before or name not in after or before[name][:2] != after[name][:2]
               or not _same_values(before[name][2], after[name][2])]
    if changed:
        saved.reset()
        raise ValueError(f"model: loss_fn changes the buffer(s) {', '.join(sorted(changed))} in its forward pass "
                         "(e.g. BatchNorm in train mode updates its running statistics); hvp_commutator needs a "
                         "forward pass that only reads its buffers: put such modules in eval mode, or use "
                         "sgd_commutator, which restores buffers after each path")
    return rng_b


def hvp_commutator(model, loss_fn: Callable, batch_a, batch_b, lr: float) -> torch.Tensor:
    """The leading term of theory.commutator, eta^2 (H_B g_A - H_A g_B), evaluated product by product with
    forward-over-reverse Hessian-vector products (torch.func.jvp of torch.func.grad). Flat, in the order of
    model.parameters(); the model's parameters, buffers and RNG state are left as they were.

    Each batch draws its random numbers (dropout masks) from the RNG state sgd_commutator gives it (batch A:
    the current state; batch B: the state after one forward pass on batch A), so the two agree to O(lr^3) on a
    dropout net too. ValueError for an lr that is not a finite number > 0, or a loss_fn that changes a buffer
    in its forward pass (BatchNorm in train mode)."""
    from torch.func import functional_call, grad, jvp

    lr = checks.real("lr", lr, minimum=0.0, above=True)
    saved = _Restorer(model)
    rng_b = _rng_state_after_forward(model, loss_fn, batch_a, batch_b, saved)
    saved.reset()

    wrapper = _LossModule(model, loss_fn)
    names = [f"model.{n}" for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, (_, p) in zip(names, model.named_parameters())}
    batches = {"A": (batch_a, saved.rng), "B": (batch_b, rng_b)}

    def loss_of(name):
        batch, state = batches[name]

        def f(p):
            _set_rng_state(state)  # the same dropout draws as the finite-difference paths
            return functional_call(wrapper, p, (batch,))
        return f

    try:
        gradients = {x: grad(loss_of(x))(params) for x in batches}
        total = None
        for coefficient, hessian_name, gradient_name in theory.bracket_products():
            hessian_of, vector = hessian_name[-1], gradients[gradient_name[-1]]
            _, product = jvp(grad(loss_of(hessian_of)), (params,), (vector,))
            term = float(coefficient.subs(theory.eta, lr)) * torch.cat([product[n].reshape(-1) for n in names])
            total = term if total is None else total + term
    finally:
        saved.reset()
    return total


# ----------------------------------------------------------------------------------------------------------
# Where blocks sit in the flat parameter vector
# ----------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BlockSlice:
    name: str
    offset: int  # first index in the flat parameter vector (model.parameters() order)
    size: int


def parameter_offsets(model) -> list[tuple[torch.nn.Parameter, int]]:
    offsets, offset = [], 0
    for p in model.parameters():
        offsets.append((p, offset))
        offset += p.numel()
    return offsets


def block_slices(model, blocks: dict[str, torch.Tensor]) -> list[BlockSlice]:
    """Locate contiguous views of parameters (e.g. MarkerTransformer.attention_weights()) in the flat vector."""
    slices = []
    offsets = parameter_offsets(model)
    for name, view in blocks.items():
        if not view.is_contiguous():
            raise ValueError(f"block {name} is not a contiguous view of one parameter")
        for p, offset in offsets:
            start = (view.data_ptr() - p.data_ptr()) // p.element_size()
            if p.device == view.device and 0 <= start and start + view.numel() <= p.numel() \
                    and view.untyped_storage().data_ptr() == p.untyped_storage().data_ptr():
                slices.append(BlockSlice(name, offset + int(start), view.numel()))
                break
        else:
            raise ValueError(f"block {name} is not a view of any parameter of the model")
    return slices


def total_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------------------------------------
# The execution basis (Xu 2026, section 3.3.2: top-3 trajectory PCs per block, embedded and orthonormalized)
# ----------------------------------------------------------------------------------------------------------

def top_directions(X: np.ndarray, k: int) -> np.ndarray:
    """Top-k right singular vectors (n_b, <=k) of the mean-centred snapshots X (n, n_b), skipping singular
    values below 1e-10 as the code does. Orthonormal columns."""
    X = np.asarray(X, dtype=np.float64)
    centred = X - X.mean(axis=0)
    eigenvalues, eigenvectors = np.linalg.eigh(centred @ centred.T)
    order = np.argsort(eigenvalues)[::-1]
    # the Gram route resolves eigenvalues only down to about n eps lambda_max: below that they are round-off
    # of directions the code's SVD would give singular values ~ 0 and skip
    floor = max(SINGULAR_FLOOR ** 2, X.shape[0] * np.finfo(np.float64).eps * max(float(eigenvalues.max()), 0.0))
    keep = [i for i in order[:k] if eigenvalues[i] > floor]
    if not keep:
        return np.zeros((X.shape[1], 0))
    directions = centred.T @ eigenvectors[:, keep] / np.sqrt(eigenvalues[keep])
    directions, _ = np.linalg.qr(directions)  # re-orthonormalize against round-off of the Gram route
    return directions


@dataclass
class ExecutionBasis:
    """B in R^{P x K}: per block b, K_b orthonormal trajectory PCs embedded at the block's offset. Blocks
    occupy disjoint coordinates, so the embedded columns are already orthonormal: the paper's QR of the
    stacked columns changes nothing, and B B^T delta is computed block by block without forming B."""
    slices: list
    directions: list  # per block, (n_b, K_b) float64
    total_size: int

    @property
    def dimension(self) -> int:
        return int(sum(d.shape[1] for d in self.directions))

    @classmethod
    def from_trajectories(cls, trajectories: dict, slices: list, total_size: int, k_per_block=3,
                          kind: str = "accumulated", upto: int | None = None, window: int = 10,
                          q: float = 0.9) -> "ExecutionBasis":
        """kind: "accumulated" uses snapshots 0..upto, "final" all snapshots, "window" the last `window`
        snapshots ending at upto. k_per_block: an int (the paper: 3) or "r90" (each block's own r_q)."""
        if kind not in BASIS_KINDS:
            raise ValueError(f"basis kind must be one of {BASIS_KINDS}, got {kind!r}")
        directions = []
        for block in slices:
            X = np.asarray(trajectories[block.name])
            end = X.shape[0] if kind == "final" or upto is None else upto + 1
            start = max(0, end - window) if kind == "window" else 0
            X = X[start:end]
            if X.shape[0] < 2:
                raise ValueError(f"basis {kind}: block {block.name} has {X.shape[0]} snapshot(s) in range, need 2")
            if k_per_block == "r90":
                k = effective_dimension(X, q)
            else:
                k = int(k_per_block)
            directions.append(top_directions(X, max(1, min(k, X.shape[0] - 1))))
        return cls(list(slices), directions, int(total_size))

    def block_parts(self, vector) -> list[np.ndarray]:
        v = np.asarray(vector, dtype=np.float64)
        return [v[s.offset:s.offset + s.size] for s in self.slices]

    def projected_energy(self, vector) -> float:
        """||B B^T v||^2."""
        return float(sum(np.sum((d.T @ part) ** 2) for d, part in zip(self.directions, self.block_parts(vector))))

    def rho(self, vector) -> float:
        """rho_exec = ||B B^T v|| / ||v|| (Xu 2026, section 3.3.2, a ratio of norms); NaN for v = 0."""
        norm = float(np.linalg.norm(np.asarray(vector, dtype=np.float64)))
        return math.sqrt(self.projected_energy(vector)) / norm if norm > 0 else float("nan")


# ----------------------------------------------------------------------------------------------------------
# Random baselines (Xu 2026, section 3.3.2: ~ sqrt(K / P); and baselines matched to where delta can live)
# ----------------------------------------------------------------------------------------------------------

def random_subspace_rho_qr(vector, k: int, n_trials: int, generator: np.random.Generator,
                           support: np.ndarray | None = None) -> np.ndarray:
    """The paper's baseline as its code computes it: ||Q Q^T v|| / ||v|| for Q the QR factor of a Gaussian
    P x k matrix over the whole vector (support=None), or over the coordinates in `support` only."""
    v = np.asarray(vector, dtype=np.float64)
    if support is not None:
        v = v[support]
    norm = np.linalg.norm(v)
    out = np.empty(n_trials)
    for t in range(n_trials):
        Q, _ = np.linalg.qr(generator.standard_normal((v.size, k)))
        out[t] = np.linalg.norm(Q.T @ v) / norm
    return out


def random_subspace_rho_draws(k: int, ambient: int, n_trials: int, generator: np.random.Generator) -> np.ndarray:
    """The same distribution without forming Q: for a uniformly random k-dim subspace of R^ambient and any
    fixed v, rho^2 ~ Beta(k/2, (ambient - k)/2) (rotation invariance; theory.commutator). Exact, O(1) per draw,
    and what keeps the baseline affordable at P ~ 10^6. k = 0 (an empty basis: a trajectory that never moved)
    projects nothing: zeros."""
    if k == 0:
        return np.zeros(n_trials)
    return np.sqrt(generator.beta(k / 2.0, (ambient - k) / 2.0, size=n_trials))


def random_subspace_expectations(k: int, ambient: int) -> dict:
    """E[rho] (exact), sqrt(K/P) (the paper's value) and E[rho^2] = K/P for a random k-dim subspace (all 0 for
    k = 0)."""
    if k == 0:
        return {"norm_mean": 0.0, "paper": 0.0, "energy_mean": 0.0}
    return {"norm_mean": float(_random_norm_mean(k, ambient)), "paper": float(_random_norm_paper(k, ambient)),
            "energy_mean": float(_random_energy_mean(k, ambient))}


_block_energy_cache: dict = {}


def _block_energy_function(n_blocks: int):
    if n_blocks not in _block_energy_cache:
        expression, k_b, n_b, w_b = theory.block_matched_energy_mean(n_blocks)
        _block_energy_cache[n_blocks] = sp.lambdify((k_b, n_b, w_b), expression, modules="math")
    return _block_energy_cache[n_blocks]


def block_matched_energy(basis: ExecutionBasis, vector) -> float:
    """E[rho^2] for K_b random orthonormal directions inside each block (theory.block_matched_energy_mean)."""
    total = float(np.sum(np.asarray(vector, dtype=np.float64) ** 2))
    if total == 0:
        return float("nan")
    k_b = [d.shape[1] for d in basis.directions]
    n_b = [s.size for s in basis.slices]
    w_b = [float(np.sum(part ** 2)) / total for part in basis.block_parts(vector)]
    return float(_block_energy_function(len(basis.slices))(k_b, n_b, w_b))


def block_matched_rho_draws(basis: ExecutionBasis, vector, n_trials: int, generator: np.random.Generator
                            ) -> np.ndarray:
    """Monte Carlo of the block-matched baseline: per block, ||V_b^T delta_b||^2 = ||delta_b||^2 Beta(K_b/2,
    (n_b - K_b)/2) for a random orthonormal V_b (n_b x K_b), independently across blocks."""
    v = np.asarray(vector, dtype=np.float64)
    total = float(np.sum(v ** 2))
    energy = np.zeros(n_trials)
    for s, d, part in zip(basis.slices, basis.directions, basis.block_parts(v)):
        k = d.shape[1]
        if k:
            energy += float(np.sum(part ** 2)) * generator.beta(k / 2.0, (s.size - k) / 2.0, size=n_trials)
    return np.sqrt(energy / total)


# ----------------------------------------------------------------------------------------------------------
# Alignment of one commutator sample
# ----------------------------------------------------------------------------------------------------------

def perpendicular_fractions(rho: float) -> dict:
    """The three readings of "fraction of non-commutativity outside the execution subspace":
    perp_norm_frac = sqrt(1 - rho^2), perp_energy_frac = 1 - rho^2, perp_complement_frac = 1 - rho (the
    paper's code, its ">92%")."""
    return {name: float(f(rho)) for name, f in _perp.items()}


def gradient_support(*vectors, tolerance: float = 0.0) -> np.ndarray:
    """Coordinates where any of the vectors is nonzero: the parameters that receive gradient (option (a) of
    the support-matched baseline)."""
    mask = np.zeros(np.asarray(vectors[0]).shape, dtype=bool)
    for v in vectors:
        mask |= np.abs(np.asarray(v)) > tolerance
    return mask


def alignment(basis: ExecutionBasis, sample: CommutatorSample, generator: np.random.Generator,
              n_random: int = 10, method: str = "beta") -> dict:
    """rho_exec of delta against three random baselines, the gradient-inheritance control and the
    perpendicular fractions, for one commutator sample.

    Baselines (mean of n_random draws each, and the analytic expectation):
      paper:   random K-dim subspace of the whole parameter vector (P coordinates, zero-gradient ones included)
      support: random K-dim subspace of the coordinates that receive gradient (g_A, g_B or delta nonzero)
      block:   K_b random directions inside each block (the exact support structure of B)
    method: "beta" draws rho from its exact law; "qr" forms Q as the paper's code does (slow at large P)."""
    delta = sample.delta.detach().double().cpu().numpy()
    grad_a = sample.grad_a.detach().double().cpu().numpy()
    grad_b = sample.grad_b.detach().double().cpu().numpy()
    K, P = basis.dimension, basis.total_size
    support = gradient_support(delta, grad_a, grad_b)
    P_support = int(support.sum())
    rho_exec = basis.rho(delta)
    if method == "qr":
        paper = random_subspace_rho_qr(delta, K, n_random, generator)
        supported = random_subspace_rho_qr(delta, K, n_random, generator, support=support)
    elif method == "beta":
        paper = random_subspace_rho_draws(K, P, n_random, generator)
        supported = random_subspace_rho_draws(K, max(P_support, K + 1), n_random, generator)
    else:
        raise ValueError(f"method must be 'beta' or 'qr', got {method!r}")
    block = block_matched_rho_draws(basis, delta, n_random, generator)
    block_energy = block_matched_energy(basis, delta)
    mean_gradient = 0.5 * (grad_a + grad_b)
    result = {
        "rho_exec": rho_exec, "rho_exec_energy": rho_exec ** 2,
        "rho_rand_paper": float(paper.mean()), "rho_rand_support": float(supported.mean()),
        "rho_rand_block": float(block.mean()),
        "expected_rho_paper": random_subspace_expectations(K, P)["paper"],
        "expected_rho_paper_exact": random_subspace_expectations(K, P)["norm_mean"],
        "expected_rho_support": random_subspace_expectations(K, max(P_support, K + 1))["norm_mean"],
        "expected_energy_block": block_energy,
        "K": K, "P": P, "P_support": P_support,
        "rho_exec_mean_gradient": basis.rho(mean_gradient),
        "rho_exec_grad_a": basis.rho(grad_a), "rho_exec_grad_b": basis.rho(grad_b),
        "defect": sample.defect, "gradient_cosine": sample.gradient_cosine,
    }
    # NaN where a baseline is 0 (an empty basis: the trajectory never moved) or delta is 0
    result["ratio_paper"] = ratio(rho_exec, result["rho_rand_paper"])
    result["ratio_support"] = ratio(rho_exec, result["rho_rand_support"])
    result["ratio_block"] = ratio(rho_exec, result["rho_rand_block"])
    result["ratio_energy_block"] = ratio(rho_exec ** 2, block_energy)
    result["inheritance_ratio"] = ratio(rho_exec, result["rho_exec_mean_gradient"])
    # the mean gradient against its own block-matched baseline: is the gradient itself as aligned as delta?
    gradient_energy = block_matched_energy(basis, mean_gradient)
    result["ratio_energy_block_mean_gradient"] = ratio(result["rho_exec_mean_gradient"] ** 2, gradient_energy)
    result.update(perpendicular_fractions(rho_exec))
    return result
