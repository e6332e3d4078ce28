"""Train many copies of the canonical deep transformer at once, one per (point, seed) of a sweep.

The network is nanoGPT-small in spirit and read top to bottom in ``PhaseModel``: a token embedding, the
canonical blocks of validate._signal_prop.transformer (initialized by their own ``reset_parameters``), the
same LN, and a linear readout. ``StackedPhaseModels`` is M such models as one module: every weight stacked along a
leading model axis, the same forward written with batched matmuls over that axis (torch.bmm / baddbmm), again
read top to bottom. ``train_batched`` trains it with one Adam over the stacked tensors, which (Adam being
elementwise) updates them exactly as M independent optimizers would.

Models differ in their initialization (each from its own BlockParams and seed; the stacked module copies the
initialized PhaseModels) and in the residual coefficients (alpha_A, alpha_M and the skips a_A, a_M), which
are forward-pass constants, (M, 1, 1) buffers of the stacked module. ``train_sequential`` is the baseline: the
same models, one after another, through the blocks' own ``forward`` with torch.optim.Adam at its defaults. A
test checks that the two give the same numbers.

Divergence: a model whose training loss or gradient becomes NaN or inf at a step, or whose test loss does at an
evaluation before that step, is marked diverged at that step (``diverged_at``); its gradients are zeroed from
then on and its remaining curves are None (NaN), while the other models train on. (In a
blow-up, the step at which float32 first overflows depends on rounding, so the batched and the sequential
runs can mark it at different steps.)
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from theory.signal_prop import BlockParams
from validate._common import checks
from validate._signal_prop.phase_task import HistogramTask
from validate._signal_prop.transformer import CanonicalTransformer, layer_norm

TEST_SEED = 2_147_483_647  # the held-out test set; training streams are seeded from the run's seed
TRAIN_STREAM_STRIDE = 1_000_003  # seed s draws its training batches from generator seed STRIDE * (s + 1)
MAX_SEED = (2**64 - 1) // TRAIN_STREAM_STRIDE - 1   # torch.Generator.manual_seed takes seeds below 2^64
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")


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
            checks.field(self, name, checks.integer, 1)
        checks.field(self, "lr", checks.real, 0.0, above=True)
        checks.field(self, "optimizer", checks.choice, OPTIMIZERS)
        checks.field(self, "schedule", checks.choice, SCHEDULES)
        if not isinstance(self.task, HistogramTask):
            raise ValueError(f"task={self.task!r}: must be a validate._signal_prop.phase_task.HistogramTask")

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

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return layer_norm(self.backbone(self.embed[tokens])) @ self.readout


def _normalize_backward_(g: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """dL/dx = scale (g - y (g . y) / d) for y = LN(x), written over g (which the caller owns)."""
    dot = torch.linalg.vecdot(g, y).unsqueeze(-1)
    return g.addcmul_(y, dot, value=-1.0 / y.shape[-1]).mul_(scale)


class _LayerNorm(torch.autograd.Function):
    """validate._signal_prop.transformer.layer_norm, LN(x) = sqrt(d) x / |x|, with a hand-written backward.

    The forward is layer_norm's own expression (the same rounding, the same overflow to inf or NaN). The
    backward, dL/dx = s (g - y (g . y) / d) with y = LN(x) and s = sqrt(d) / |x|, makes four passes over x
    where autograd's chain through mul, div and norm makes about ten. Elementwise passes like these take
    about a third of the stacked models' step.
    """

    @staticmethod
    def forward(ctx, x):
        norm = x.norm(dim=-1, keepdim=True)
        y = math.sqrt(x.shape[-1]) * x / norm
        scale = math.sqrt(x.shape[-1]) / norm
        ctx.save_for_backward(y, scale)
        return y

    @staticmethod
    def backward(ctx, g):
        y, scale = ctx.saved_tensors
        return _normalize_backward_(g.clone(), y, scale)   # autograd's g is not ours to overwrite


def _normalize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LN(x) = sqrt(d) x / |x| as x * scale, scale = sqrt(d) / |x| per token: one pass over x fewer than
    layer_norm's expression (float rounding apart, the same values, the same inf and NaN). Returns
    (LN(x), scale), what the backward needs."""
    scale = math.sqrt(x.shape[-1]) / x.norm(dim=-1, keepdim=True)
    return x * scale, scale


def _activation_backward(phi, pre: torch.Tensor | None, act: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """g phi'(pre): for tanh from the output alone (1 - act^2, one fused kernel), otherwise by autograd."""
    if phi is torch.tanh:
        return torch.ops.aten.tanh_backward(g, act)
    with torch.enable_grad():
        pre = pre.detach().requires_grad_()
        return torch.autograd.grad(phi(pre), pre, g)[0]


class _Block(torch.autograd.Function):
    """One canonical block for M stacked models, (M, tokens, d) -> (M, tokens, d), with a hand-written backward.

    The forward is CanonicalBlock.forward written with batched matmuls over the model axis; sequences of
    n tokens share the leading axis of (M * sequences, n, d) in the attention. Why a hand-written backward:
    at width 64 a CPU step waits on the elementwise passes over the activations and on per-op overhead more
    than on the matmuls' FLOPs. Written by hand, each LN backward is three passes over a gradient the
    backward owns, the residual gradients accumulate in place (addcmul_, baddbmm_), the softmax gradient
    stays in the (key, sequence, query) layout, and the autograd graph has one node per block instead of
    about twenty. Measured at the phase diagram's defaults (12 models, one thread): 9.0-9.5 ms per model
    and training step, against 10.1 ms for autograd's backward of the same forward.
    """

    @staticmethod
    def forward(ctx, x, W_Q, W_K, W_V, W_1, W_2, skip_A, alpha_A, skip_M, alpha_M, phi, n):
        M, T, d = x.shape
        seqs = M * (T // n)
        # attention: X <- a_A X + alpha_A A H W_V, with A = softmax over keys of (H W_Q)(H W_K)^T / sqrt(d)
        h1, scale1 = _normalize(x)
        q = torch.bmm(h1, W_Q).view(seqs, n, d)
        k = torch.bmm(h1, W_K).view(seqs, n, d)
        # logits laid out (key, sequence, query): torch's CPU softmax is slow along a short last axis
        logits = torch.baddbmm(x.new_empty(seqs, n, n), k, q.transpose(1, 2), beta=0, alpha=1 / math.sqrt(d))
        weights = torch.softmax(logits.transpose(0, 1).contiguous(), dim=0)
        mixed = torch.bmm(weights.permute(1, 2, 0), h1.view(seqs, n, d)).view(M, T, d)     # A H
        # (a_A X) + (A H)(alpha_A W_V): the residual add rides on the matmul (in-place baddbmm_)
        scaled_W_V = alpha_A * W_V
        x2 = (skip_A * x).baddbmm_(mixed, scaled_W_V)
        # MLP: X <- a_M X + alpha_M phi(H W_1) W_2, likewise
        h2, scale2 = _normalize(x2)
        pre = torch.bmm(h2, W_1)
        act = phi(pre)
        scaled_W_2 = alpha_M * W_2
        out = (skip_M * x2).baddbmm_(act, scaled_W_2)
        ctx.save_for_backward(W_Q, W_K, scaled_W_V, W_1, scaled_W_2, skip_A, alpha_A, skip_M, alpha_M,
                              h1, scale1, q, k, weights, mixed, h2, scale2, act,
                              None if phi is torch.tanh else pre)
        ctx.phi, ctx.n = phi, n
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        (W_Q, W_K, scaled_W_V, W_1, scaled_W_2, skip_A, alpha_A, skip_M, alpha_M,
         h1, scale1, q, k, weights, mixed, h2, scale2, act, pre) = ctx.saved_tensors
        M, T, d = g_out.shape
        seqs, n = M * (T // ctx.n), ctx.n
        # MLP
        g_pre = _activation_backward(ctx.phi, pre, act, torch.bmm(g_out, scaled_W_2.transpose(1, 2)))
        g_W_2 = torch.bmm(act.transpose(1, 2), g_out).mul_(alpha_M)
        g_W_1 = torch.bmm(h2.transpose(1, 2), g_pre)
        g_x2 = _normalize_backward_(torch.bmm(g_pre, W_1.transpose(1, 2)), h2, scale2).addcmul_(g_out, skip_M)
        # attention
        g_mixed = torch.bmm(g_x2, scaled_W_V.transpose(1, 2)).view(seqs, n, d)
        g_W_V = torch.bmm(mixed.transpose(1, 2), g_x2).mul_(alpha_A)
        h1_seqs = h1.view(seqs, n, d)
        g_weights = torch.bmm(h1_seqs, g_mixed.transpose(1, 2)).transpose(0, 1).contiguous()  # (key, seq, query)
        g_h1 = torch.bmm(weights.permute(1, 0, 2), g_mixed).view(M, T, d)
        g_logits = torch._softmax_backward_data(g_weights, weights, 0, weights.dtype).mul_(1 / math.sqrt(d))
        g_q = torch.bmm(g_logits.permute(1, 2, 0), k).view(M, T, d)
        g_k = torch.bmm(g_logits.transpose(0, 1), q).view(M, T, d)
        g_W_Q = torch.bmm(h1.transpose(1, 2), g_q)
        g_W_K = torch.bmm(h1.transpose(1, 2), g_k)
        g_h1.baddbmm_(g_q, W_Q.transpose(1, 2)).baddbmm_(g_k, W_K.transpose(1, 2))
        g_x = _normalize_backward_(g_h1, h1, scale1).addcmul_(g_x2, skip_A)
        return g_x, g_W_Q, g_W_K, g_W_V, g_W_1, g_W_2, None, None, None, None, None, None


class StackedPhaseModels(nn.Module):
    """M PhaseModels as one module: tokens (M, B, n) -> logits (M, B, n, K), model m through model m's weights.

    Every weight is the models' weights stacked along a leading model axis: embed (M, vocab, d), per block
    W_Q, W_K, W_V (M, d, d), W_1 (M, d, d_ff), W_2 (M, d_ff, d), readout (M, d, K). The forward is
    PhaseModel's, written for the model axis with torch.bmm, one _Block per layer; it differs from it only in
    float rounding (summation order, alpha (A H W_V) computed as (A H)(alpha W_V), LN as x (sqrt(d) / |x|)).
    """

    def __init__(self, models: list[PhaseModel]):
        super().__init__()
        if len({(m.params.activation, m.params.residual) for m in models}) != 1 or \
                len({tuple(p.shape for p in m.parameters()) for m in models}) != 1:
            raise ValueError("stacked models must share their shapes, activation and residual")

        def stacked(weight):
            return nn.Parameter(torch.stack([weight(m).detach() for m in models]))

        self.embed = stacked(lambda m: m.embed)
        depth = len(models[0].backbone.blocks)
        for name in ("W_Q", "W_K", "W_V", "W_1", "W_2"):
            setattr(self, name, nn.ParameterList(stacked(lambda m: getattr(m.backbone.blocks[layer], name))
                                                 for layer in range(depth)))
        self.readout = stacked(lambda m: m.readout)
        for name in ("skip_A", "alpha_A", "skip_M", "alpha_M"):   # the block's a_A, alpha_A, a_M, alpha_M
            self.register_buffer(name, torch.tensor([float(getattr(m.params, name)) for m in models])
                                 .view(-1, 1, 1))
        self.phi = models[0].backbone.blocks[0].phi

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        M, B, n = tokens.shape
        vocab, d = self.embed.shape[1:]
        # model m's tokens index rows m * vocab + token of the models' embeddings laid end to end
        x = nn.functional.embedding(tokens + vocab * torch.arange(M, device=tokens.device).view(M, 1, 1),
                                    self.embed.flatten(0, 1)).view(M, B * n, d)     # (M, tokens, d)
        for weights in zip(self.W_Q, self.W_K, self.W_V, self.W_1, self.W_2):
            x = _Block.apply(x, *weights, self.skip_A, self.alpha_A, self.skip_M, self.alpha_M, self.phi, n)
        return torch.bmm(_LayerNorm.apply(x), self.readout).view(M, B, n, -1)


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
    """A validate._common.sweep task: train the models of a batch of (point, seed) pairs (picklable).

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


def _train_stream(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(TRAIN_STREAM_STRIDE * (int(seed) + 1))


@functools.lru_cache(maxsize=None)
def _fused_adam_available(device_type: str) -> bool:
    """Whether this torch has fused Adam kernels for the device (on CPU since torch 2.4)."""
    try:
        p = torch.zeros(1, device=device_type, requires_grad=True)
        p.grad = torch.ones_like(p)
        torch.optim.Adam([p], fused=True).step()
        return True
    except RuntimeError:
        return False


def _make_optimizer(tensors, config: TrainConfig, fused: bool = False):
    """The optimizer and its learning-rate schedule (cosine decay to 0 damps the end-of-training noise).
    fused=True: Adam's single-kernel implementation where torch has one (the same update, for the few large
    stacked tensors); otherwise, and for the baseline, torch.optim.Adam at its defaults."""
    fused = fused and _fused_adam_available(tensors[0].device.type)
    optimizer = (torch.optim.Adam(tensors, lr=config.lr, fused=fused or None) if config.optimizer == "adam"
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


# what every training record holds (a sweep store's rows are checked for these before a rerun uses them)
RESULT_KEYS = frozenset({"train_loss", "grad_norm", "eval_steps", "test_loss", "diverged_at", "final_test_loss",
                         "bayes_loss", "context_free_loss", "diverged"})


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
    """Train one model per (params, seed) together, as one StackedPhaseModels. Returns one record each:
    train_loss and grad_norm per step, test_loss at eval_steps, final_test_loss, diverged_at (step or None).
    """
    if len(params_list) != len(seeds) or not seeds:
        raise ValueError("params_list and seeds must be non-empty and of equal length")
    torch.set_num_threads(config.threads)
    models = StackedPhaseModels(build_models(params_list, seeds, config)).to(device)
    params = list(models.parameters())
    optimizer, schedule = _make_optimizer(params, config, fused=True)
    task = config.task
    distinct_seeds = sorted(set(int(s) for s in seeds))
    seed_index = torch.tensor([distinct_seeds.index(int(s)) for s in seeds], device=device)
    streams = {s: _train_stream(s) for s in distinct_seeds}
    test_tokens, test_labels = (t.to(device) for t in task.test_set(config.test_size, TEST_SEED))

    n_models = len(seeds)
    alive = torch.ones(n_models, dtype=torch.bool, device=device)
    records = [_new_record(config) for _ in seeds]
    eval_steps = set(_eval_steps(config))

    def evaluate(step):
        with torch.no_grad():
            losses = []
            for start in range(0, config.test_size, 256):
                chunk = test_tokens[start:start + 256]
                logits = models(chunk.expand(n_models, *chunk.shape))
                losses.append(task.expected_loss(logits, test_labels[start:start + 256]) * len(chunk))
            losses = torch.stack(losses).sum(0) / config.test_size
            mark_diverged(alive & ~torch.isfinite(losses), step)
            losses = losses.where(alive, torch.nan)
        for record, value in zip(records, losses.tolist()):
            record["test_loss"].append(_clean(value))

    def mark_diverged(newly_dead, step):
        alive.logical_and_(~newly_dead)
        for i in torch.nonzero(newly_dead).flatten().tolist():
            records[i]["diverged_at"] = step

    for step in range(config.steps + 1):
        if step in eval_steps:
            evaluate(step)
        if step == config.steps:
            break
        per_seed = [task.sample(config.batch, streams[s]) for s in distinct_seeds]
        tokens = torch.stack([t for t, _ in per_seed]).to(device)[seed_index]
        labels = torch.stack([y for _, y in per_seed]).to(device)[seed_index]
        logits = models(tokens)                                              # (M, B, n, K)
        loss = torch.nn.functional.cross_entropy(
            logits.flatten(1, 2).transpose(1, 2), labels.flatten(1), reduction="none").mean(-1)
        optimizer.zero_grad()
        torch.where(alive, loss, 0.0).sum().backward()
        with torch.no_grad():
            grad_sq = sum(p.grad.flatten(1).square().sum(1) for p in params)   # (M,)
            mark_diverged(alive & ~(torch.isfinite(loss) & torch.isfinite(grad_sq)), step)
            if not alive.all():
                for p in params:   # dead models: zero gradient, so they stay put and apart
                    p.grad.copy_(torch.where(alive.view(-1, *[1] * (p.dim() - 1)), p.grad, 0.0))
        optimizer.step()
        schedule.step()
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

        def test_loss():
            with torch.no_grad():
                return sum(task.expected_loss(model(test_tokens[s:s + 256]), test_labels[s:s + 256]).item()
                           * len(test_tokens[s:s + 256]) for s in range(0, config.test_size, 256)) / config.test_size

        for step in range(config.steps + 1):
            if step in eval_steps:
                value = test_loss() if alive else math.nan
                if alive and not math.isfinite(value):
                    alive, record["diverged_at"] = False, step
                record["test_loss"].append(_clean(value))
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
    """FLOPs of one batched training step (forward + backward of StackedPhaseModels), counted by torch's
    FlopCounterMode. Its table has baddbmm but not the in-place baddbmm_ that the forward calls; that op
    is counted with the same formula (the matmul's FLOPs, like baddbmm and bmm)."""
    from torch.utils.flop_counter import FlopCounterMode

    def baddbmm_flop(self_shape, a_shape, b_shape, out_shape=None, **kwargs) -> int:
        (batch, rows, inner), columns = a_shape, b_shape[-1]
        return 2 * batch * rows * inner * columns

    models = StackedPhaseModels(build_models([BlockParams(n_tokens=config.task.n_tokens)] * n_models,
                                             list(range(n_models)), config))
    tokens, labels = config.task.sample(config.batch, torch.Generator().manual_seed(0))
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.baddbmm_: baddbmm_flop})
    with counter:
        logits = models(tokens.expand(n_models, -1, -1))
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 2), labels.repeat(n_models, 1).flatten())
        loss.backward()
    return int(counter.get_total_flops())
