"""Train many copies of the canonical deep transformer at once, one per (point, seed) of a sweep.

The network is nanoGPT-small in spirit and read top to bottom in ``PhaseModel``: a token embedding, the
canonical blocks of validate.transformer (DESIGN.md, initialized by their own ``reset_parameters``), the same
LN, and a linear readout. ``train_batched`` stacks M such models with ``torch.func.stack_module_state`` and
runs them through ``torch.func.vmap(functional_call(...))``: every matmul becomes one batched matmul over a
model axis, and Adam (elementwise) updates the stacked tensors as M independent optimizers would.

Models differ in their initialization (each from its own BlockParams and seed) and in the residual
coefficients (alpha_A, alpha_M and the skips a_A, a_M), which are forward-pass constants; those enter the
vmapped forward as a per-model tensor. ``train_sequential`` is the baseline: the same models, one after another,
through the blocks' own ``forward``. A test checks that the two give the same numbers.

Divergence: a model whose training loss or gradient becomes NaN or inf is marked diverged at that step; its
gradients are zeroed from then on and its remaining curve is NaN, while the other models train on.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from theory.signal_prop import BlockParams
from validate.phase_task import HistogramTask
from validate.transformer import CanonicalTransformer, layer_norm

TEST_SEED = 2_147_483_647  # the held-out test set; training streams are seeded from the run's seed


@dataclass(frozen=True)
class TrainConfig:
    """Everything that is the same for every model of a sweep (the sweep's identity, with the base params)."""

    depth: int = 16
    width: int = 64
    d_ff: int = 64
    steps: int = 400
    batch: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    schedule: str = "cosine"
    test_size: int = 512
    eval_every: int = 50
    threads: int = 1
    task: HistogramTask = field(default_factory=HistogramTask)

    def __post_init__(self):
        for name in ("depth", "width", "d_ff", "steps", "batch", "test_size", "eval_every", "threads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be a positive integer")
        if isinstance(self.lr, bool) or not isinstance(self.lr, (int, float)) or not 0 < self.lr < math.inf:
            raise ValueError(f"lr={self.lr!r}: must be a positive finite number")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer={self.optimizer!r}: allowed values are ('adam', 'sgd')")
        if self.schedule not in ("cosine", "constant"):
            raise ValueError(f"schedule={self.schedule!r}: allowed values are ('cosine', 'constant')")
        if not isinstance(self.task, HistogramTask):
            raise ValueError(f"task={self.task!r}: must be a validate.phase_task.HistogramTask")

    def to_dict(self) -> dict:
        return asdict(self)


class PhaseModel(nn.Module):
    """Embedding -> ``depth`` canonical blocks -> LN -> readout: (batch, n) tokens -> (batch, n, K) logits."""

    def __init__(self, params: BlockParams, config: TrainConfig):
        super().__init__()
        self.params = params
        self.embed = nn.Parameter(torch.empty(config.task.vocab, config.width))
        self.backbone = CanonicalTransformer(params, config.depth, config.width, config.d_ff)
        self.readout = nn.Parameter(torch.empty(config.width, config.task.n_classes))

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator) -> "PhaseModel":
        # embeddings N(0, 1): every token enters with q = |x|^2/d = 1, distinct symbols nearly orthogonal
        self.embed.normal_(0.0, 1.0, generator=generator)
        self.backbone.reset_parameters(generator)
        self.readout.normal_(0.0, 1.0 / math.sqrt(self.readout.shape[0]), generator=generator)
        return self

    def residual_coefficients(self) -> torch.Tensor:
        """(a_A, alpha_A, a_M, alpha_M): the forward-pass constants of DESIGN.md's residual update."""
        h = self.params
        return torch.tensor([h.skip_A, h.alpha_A, h.skip_M, h.alpha_M])

    def forward(self, tokens: torch.Tensor, coefficients: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed[tokens]
        if coefficients is None:            # the blocks' own forward (the sequential path)
            x = self.backbone(x)
        else:                               # same update, coefficients from a tensor (so they can be vmapped)
            skip_A, alpha_A, skip_M, alpha_M = coefficients
            for block in self.backbone.blocks:
                x = skip_A * x + alpha_A * block.attention(x)
                x = skip_M * x + alpha_M * block.mlp(x)
        return layer_norm(x) @ self.readout


def params_at(base: BlockParams, point: dict) -> BlockParams:
    """The BlockParams of a sweep point {field: value}; the field "alpha" sets alpha_A = alpha_M."""
    changes = {}
    for name, value in point.items():
        if name == "alpha":
            changes.update(alpha_A=value, alpha_M=value)
        else:
            changes[name] = value
    return base.replace(**changes)


@dataclass(frozen=True)
class TrainPoints:
    """A validate.sweep task: train the models of a batch of (point, seed) pairs (picklable).

    sequential=False trains them together (train_batched); True one after another (train_sequential, the
    benchmark's baseline).
    """

    base: BlockParams
    train: TrainConfig
    device: str = "cpu"
    sequential: bool = False

    def __call__(self, items: list[tuple[dict, int]]) -> list[dict]:
        trainer = train_sequential if self.sequential else train_batched
        return trainer([params_at(self.base, p) for p, _ in items], [s for _, s in items], self.train,
                       self.device)


def build_models(params_list: list[BlockParams], seeds: list[int], config: TrainConfig) -> list[PhaseModel]:
    """One initialized model per (params, seed); the init depends only on its own pair, not on the batch."""
    return [PhaseModel(h, config).reset_parameters(torch.Generator().manual_seed(int(s)))
            for h, s in zip(params_list, seeds)]


def _stacked(models: list[PhaseModel], device: str):
    """The models as one set of stacked leaf tensors (model axis first), their residual coefficients, and
    forward(params, coefficients, tokens (M, B, n)) -> logits (M, B, n, K), vmapped over the model axis."""
    stacked, _ = torch.func.stack_module_state(models)
    params = {k: v.detach().to(device).requires_grad_() for k, v in stacked.items()}
    coefficients = torch.stack([m.residual_coefficients() for m in models]).to(device)
    base = copy.deepcopy(models[0]).to("meta")

    def one_model(p, c, tokens):
        return torch.func.functional_call(base, p, (tokens, c))

    return params, coefficients, torch.func.vmap(one_model)


def _train_stream(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * (int(seed) + 1))


def _make_optimizer(tensors, config: TrainConfig):
    """The optimizer and its learning-rate schedule (cosine decay to 0 damps the end-of-training noise)."""
    optimizer = (torch.optim.Adam(tensors, lr=config.lr) if config.optimizer == "adam"
                 else torch.optim.SGD(tensors, lr=config.lr))
    if config.schedule == "cosine":
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.steps)
    else:
        schedule = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0)
    return optimizer, schedule


def _eval_steps(config: TrainConfig) -> list[int]:
    return sorted({*range(0, config.steps + 1, config.eval_every), config.steps})


def _new_record(config: TrainConfig) -> dict:
    return {"train_loss": [], "grad_norm": [], "eval_steps": _eval_steps(config), "test_loss": [],
            "diverged_at": None}


def _finish(record: dict, config: TrainConfig) -> dict:
    task = config.task
    record["final_test_loss"] = record["test_loss"][-1]
    record["bayes_loss"] = task.bayes_loss()
    record["context_free_loss"] = task.context_free_loss()
    record["diverged"] = record["diverged_at"] is not None
    return record


def _clean(value: float) -> float | None:
    """JSON-safe: NaN and inf become None."""
    return float(value) if math.isfinite(value) else None


def train_batched(params_list: list[BlockParams], seeds: list[int], config: TrainConfig,
                  device: str = "cpu") -> list[dict]:
    """Train one model per (params, seed) together, vmapped over a model axis. Returns one record each:
    train_loss and grad_norm per step, test_loss at eval_steps, final_test_loss, diverged_at (step or None).
    """
    if len(params_list) != len(seeds) or not seeds:
        raise ValueError("params_list and seeds must be non-empty and of equal length")
    torch.set_num_threads(config.threads)
    params, coefficients, batched = _stacked(build_models(params_list, seeds, config), device)
    optimizer, schedule = _make_optimizer(list(params.values()), config)
    task = config.task
    distinct_seeds = sorted(set(int(s) for s in seeds))
    seed_index = torch.tensor([distinct_seeds.index(int(s)) for s in seeds], device=device)
    streams = {s: _train_stream(s) for s in distinct_seeds}
    test_tokens, test_labels = (t.to(device) for t in task.test_set(config.test_size, TEST_SEED))

    n_models = len(seeds)
    alive = torch.ones(n_models, dtype=torch.bool, device=device)
    records = [_new_record(config) for _ in seeds]
    eval_steps = set(_eval_steps(config))

    def evaluate():
        with torch.no_grad():
            losses = []
            for start in range(0, config.test_size, 256):
                chunk = test_tokens[start:start + 256]
                logits = batched(params, coefficients, chunk.expand(len(seeds), *chunk.shape))
                losses.append(task.expected_loss(logits, test_labels[start:start + 256])
                              * len(test_tokens[start:start + 256]))
            losses = (torch.stack(losses).sum(0) / config.test_size).where(alive, torch.nan)
        for record, value in zip(records, losses.tolist()):
            record["test_loss"].append(_clean(value))

    for step in range(config.steps + 1):
        if step in eval_steps:
            evaluate()
        if step == config.steps:
            break
        per_seed = [task.sample(config.batch, streams[s]) for s in distinct_seeds]
        tokens = torch.stack([t for t, _ in per_seed]).to(device)[seed_index]
        labels = torch.stack([y for _, y in per_seed]).to(device)[seed_index]
        logits = batched(params, coefficients, tokens)                       # (M, B, n, K)
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(1, 2).transpose(1, 2), labels.flatten(1), reduction="none").mean(-1)
        optimizer.zero_grad(set_to_none=False)
        torch.where(alive, loss, 0.0).sum().backward()
        with torch.no_grad():
            grad_sq = sum(g.grad.pow(2).flatten(1).sum(1) for g in params.values())
            newly_dead = alive & ~(torch.isfinite(loss) & torch.isfinite(grad_sq))
            alive &= ~newly_dead
            if not alive.all():
                for tensor in params.values():   # dead models: zero gradient, so they stay put and apart
                    tensor.grad.copy_(torch.where(alive.view(-1, *[1] * (tensor.dim() - 1)), tensor.grad, 0.0))
        optimizer.step()
        schedule.step()
        for i in torch.nonzero(newly_dead).flatten().tolist():
            records[i]["diverged_at"] = step
        for record, l_value, g_value, ok in zip(records, loss.tolist(), grad_sq.sqrt().tolist(), alive.tolist()):
            record["train_loss"].append(_clean(l_value) if ok else None)
            record["grad_norm"].append(_clean(g_value) if ok else None)
    return [_finish(r, config) for r in records]


def train_sequential(params_list: list[BlockParams], seeds: list[int], config: TrainConfig,
                     device: str = "cpu") -> list[dict]:
    """The baseline: the same models trained one after another through the blocks' own forward."""
    if len(params_list) != len(seeds) or not seeds:
        raise ValueError("params_list and seeds must be non-empty and of equal length")
    torch.set_num_threads(config.threads)
    task = config.task
    test_tokens, test_labels = (t.to(device) for t in task.test_set(config.test_size, TEST_SEED))
    eval_steps = set(_eval_steps(config))
    records = []
    for model, seed in zip(build_models(params_list, seeds, config), seeds):
        model.to(device)
        optimizer, schedule = _make_optimizer(list(model.parameters()), config)
        stream = _train_stream(seed)
        record, alive = _new_record(config), True

        def evaluate():
            with torch.no_grad():
                value = sum(task.expected_loss(model(test_tokens[s:s + 256]), test_labels[s:s + 256]).item()
                            * len(test_tokens[s:s + 256]) for s in range(0, config.test_size, 256))
            record["test_loss"].append(_clean(value / config.test_size) if alive else None)

        for step in range(config.steps + 1):
            if step in eval_steps:
                evaluate()
            if step == config.steps:
                break
            tokens, labels = (t.to(device) for t in task.sample(config.batch, stream))
            if not alive:   # keep the data stream aligned with the batched run; the model is frozen
                record["train_loss"].append(None)
                record["grad_norm"].append(None)
                schedule.step()
                continue
            loss = torch.nn.functional.cross_entropy(model(tokens).flatten(0, 1), labels.flatten())
            optimizer.zero_grad()
            loss.backward()
            grad_sq = sum(p.grad.pow(2).sum() for p in model.parameters())
            if not (torch.isfinite(loss) and torch.isfinite(grad_sq)):
                alive, record["diverged_at"] = False, step
                record["train_loss"].append(None)
                record["grad_norm"].append(None)
                schedule.step()
                continue
            optimizer.step()
            schedule.step()
            record["train_loss"].append(loss.item())
            record["grad_norm"].append(grad_sq.sqrt().item())
        records.append(_finish(record, config))
    return records


def training_step_flops(n_models: int, config: TrainConfig) -> int:
    """FLOPs of one batched training step (forward + backward), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode
    models = build_models([BlockParams(n_tokens=config.task.n_tokens)] * n_models, list(range(n_models)), config)
    params, coefficients, forward = _stacked(models, "cpu")
    tokens, labels = config.task.sample(config.batch, torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False)
    with counter:
        logits = forward(params, coefficients, tokens.expand(n_models, -1, -1))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 2), labels.repeat(n_models, 1).flatten())
        loss.backward()
    return int(counter.get_total_flops())
