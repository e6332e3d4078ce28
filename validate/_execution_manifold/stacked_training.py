"""The marker-task transformer of several seeds trained as one stacked model: the same runs, computed faster.

validate._execution_manifold.trajectory.train_with_snapshots trains one MarkerTransformer per call. Here the
models of S seeds (S = 1 included) become one module, every weight stacked along a leading seed axis, with the
same forward written with batched matmuls and a hand-written backward (_AttentionBlock), trained by one optimizer
over the stacked tensors. AdamW and SGD are elementwise, so one optimizer over stacked tensors updates every
seed's slice as that seed's own optimizer would. Each seed keeps its own initialization (torch.manual_seed(seed),
then MarkerTransformer(config), as train_with_snapshots does) and its own data stream (a generator seeded by the
seed, drawing the same markers_at_step and sample_batch calls in the same order), so seed s of a stack is the run
train_with_snapshots(task, model_config, train with seed s) up to float rounding: tests/test_stacked_training.py
holds the two equal step by step (float64 to 1e-10; float32 to a tolerance measured there).

What the stacked forward does differently (measured by `python -m benchmarks.bench_execution_manifold --profile`:
on one CPU thread the plain step spends about half its time in the projection matmuls, a fifth in copies and
concatenations, a tenth in the attention's small matmuls):
  - q, k, v go from the projection matmul straight into head-major buffers, and the heads' outputs are summed
    by accumulating matmuls: no activation is permuted or concatenated, forward or backward;
  - LN's affine (gamma, beta) is folded into the qkv projection, W' = W diag(gamma), b' = b + W beta: work on
    the (3d, d) weights in place of passes over the (B T, d) activations;
  - the scale 1/sqrt(d_head) and the causal mask ride on the score matmul (baddbmm onto an additive -inf mask);
  - the last layer computes only what the readout reads: the query, attention and output projection at the last
    position (keys and values at every position). The plain model's other rows there get exactly zero gradient;
  - one fused optimizer kernel per step in place of a Python loop of elementwise ops per parameter.
These change the rounding of float32 sums, not the function computed.

    runs = train_stacked(task, model_config, [run.train_config(seed) for seed in seeds],
                         on_snapshot=lambda index, step, model: ...)   # one TrainingRun or Diverged per seed
"""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from validate._execution_manifold.modular import MarkerTransformer, ModelConfig, TaskConfig, sample_batch
from validate._execution_manifold.trajectory import (Diverged, TrainConfig, TrainingRun, TrajectoryRecorder,
                                                     _first_nonfinite_step)

LAYER_NORM_EPS = 1e-5  # nn.LayerNorm's default, which MarkerTransformer's LayerNorms use


class _AttentionBlock(torch.autograd.Function):
    """One pre-LN attention block of S stacked models, x + W_O Attn(LN(x)), with a hand-written backward.

    x (S, B T, d) -> (S, B T, d), or with last_only -> (S, B, d): the block's output at the last position of
    every sequence, computed from that position's query alone (the readout of the last layer uses nothing else).

    Why by hand: autograd's graph of the plain forward permutes q, k, v into the (sequence, head) layout and the
    heads' outputs back, and its backward does the reverse and concatenates the three split gradients; these
    strided copies take about a fifth of the plain step on one CPU thread. Here each head's q, k, v are written
    by the projection matmul straight into head-major buffers (S, H, B T, d_head): a batched matmul over heads
    whose input is the same LN output for every head (a stride-0 batch axis, never materialized); the output
    projection sums the heads by accumulating one matmul per head into the residual stream, and the backward
    mirrors both. No activation is permuted or concatenated.

    LN's affine (gamma, beta) is folded into the projection, W' = W diag(gamma), b' = b + W beta (Xu 2026's model
    has LN's affine; folding moves it from the (B T, d) activations onto the (3d, d) weights); the backward
    unfolds it: dW = dW' diag(gamma) + db' beta^T, dgamma = sum_rows(dW' * W), dbeta = W^T db', db = db'.
    """

    @staticmethod
    def forward(ctx, x, gamma, beta, W, b, W_O, b_O, causal_bias, n_heads, last_only):
        S, N, d = x.shape
        T = causal_bias.shape[0]
        B, H, dh = N // T, n_heads, d // n_heads
        Tq = 1 if last_only else T  # query positions per sequence
        x_hat, mean, rstd = torch.native_layer_norm(x, (d,), None, None, LAYER_NORM_EPS)
        W_folded = W * gamma[:, None, :]
        b_folded = torch.baddbmm(b[:, :, None], W, beta[:, :, None]).view(S, 3, H, 1, dh)
        # head j's projection, x_hat W'_j^T with W'_j = rows [j dh, (j + 1) dh) of W': (S, 3, H, d, dh) views
        W_heads = W_folded.view(S, 3, H, dh, d).transpose(3, 4)
        x_query = x_hat if not last_only else x_hat.view(S, B, T, d)[:, :, -1]  # (S, B Tq, d)
        q = x.new_empty(S, H, B * Tq, dh)
        kv = x.new_empty(2, S, H, N, dh)
        for s, (x_hat_s, x_query_s, b_s, W_s, q_s) in enumerate(zip(x_hat, x_query, b_folded, W_heads, q)):
            torch.baddbmm(b_s[0], x_query_s.expand(H, -1, d), W_s[0], out=q_s)
            for i in (0, 1):
                torch.baddbmm(b_s[1 + i], x_hat_s.expand(H, N, d), W_s[1 + i], out=kv[i, s])
        k, v = kv[0].view(S * H * B, T, dh), kv[1].view(S * H * B, T, dh)
        scores = torch.baddbmm(causal_bias[T - Tq:], q.view(S * H * B, Tq, dh), k.transpose(1, 2),
                               alpha=1 / math.sqrt(dh))
        attention = torch.softmax(scores, dim=-1)  # (S H B, Tq, T)
        y = torch.bmm(attention, v).view(S, H, B * Tq, dh)
        # x + b_O + sum_h y_h W_O[:, h]^T, one accumulated matmul per head (W_O[:, h] = columns h dh.. of W_O)
        x_rows = x if not last_only else x.view(S, B, T, d)[:, :, -1]
        out = x_rows + b_O[:, None, :]
        W_O_heads_T = W_O.view(S, d, H, dh).permute(0, 2, 3, 1)  # (S, H, dh, d)
        for out_s, y_s, W_O_s in zip(out, y, W_O_heads_T):
            for y_h, W_O_h in zip(y_s, W_O_s):
                out_s.addmm_(y_h, W_O_h)
        ctx.save_for_backward(x, mean, rstd, x_hat, gamma, beta, W, W_folded, W_O, q, kv, attention, y)
        ctx.shape = (S, N, d, T, B, H, dh, Tq)
        ctx.last_only = last_only
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_out):
        x, mean, rstd, x_hat, gamma, beta, W, W_folded, W_O, q, kv, attention, y = ctx.saved_tensors
        S, N, d, T, B, H, dh, Tq = ctx.shape
        g_out = g_out.contiguous()
        # output projection: out = x_rows + b_O + sum_h y_h W_O[:, h]^T
        g_b_O = g_out.sum(1)
        g_W_O_heads = torch.empty(S, H, d, dh, dtype=x.dtype, device=x.device)  # dW_O[:, h] = g_out^T y_h
        g_y = torch.empty_like(y)
        W_O_heads = W_O.view(S, d, H, dh).transpose(1, 2)  # (S, H, d, dh)
        for g_out_s, y_s, W_O_s, g_W_O_s, g_y_s in zip(g_out, y, W_O_heads, g_W_O_heads, g_y):
            torch.bmm(g_out_s.t().expand(H, d, B * Tq), y_s, out=g_W_O_s)
            torch.bmm(g_out_s.expand(H, B * Tq, d), W_O_s, out=g_y_s)
        g_W_O = g_W_O_heads.transpose(1, 2).reshape(S, d, d)
        # attention
        g_y = g_y.view(S * H * B, Tq, dh)
        k, v = kv[0].view(S * H * B, T, dh), kv[1].view(S * H * B, T, dh)
        g_kv = torch.empty_like(kv)
        g_attention = torch.bmm(g_y, v.transpose(1, 2))
        torch.bmm(attention.transpose(1, 2), g_y, out=g_kv[1].view(S * H * B, T, dh))
        g_scores = torch._softmax_backward_data(g_attention, attention, -1, attention.dtype).mul_(1 / math.sqrt(dh))
        g_q = torch.bmm(g_scores, k).view(S, H, B * Tq, dh)
        torch.bmm(g_scores.transpose(1, 2), q.view(S * H * B, Tq, dh), out=g_kv[0].view(S * H * B, T, dh))
        # projection: gradients of W', b' and of x_hat
        x_query = x_hat if not ctx.last_only else x_hat.view(S, B, T, d)[:, :, -1]
        g_W_folded = torch.empty_like(W_folded)
        g_x_hat = torch.empty_like(x_hat)
        W_rows = W_folded.view(S, 3, H, dh, d)  # W'_j, (dh, d) each
        g_k_all, g_v_all = g_kv
        for g_W_s, g_q_s, g_k_s, g_v_s, x_hat_s, x_query_s, g_x_hat_s, W_s in zip(
                g_W_folded.view(S, 3, H, dh, d), g_q, g_k_all, g_v_all, x_hat, x_query, g_x_hat, W_rows):
            torch.bmm(g_q_s.transpose(1, 2), x_query_s.expand(H, -1, d), out=g_W_s[0])
            torch.bmm(g_k_s.transpose(1, 2), x_hat_s.expand(H, N, d), out=g_W_s[1])
            torch.bmm(g_v_s.transpose(1, 2), x_hat_s.expand(H, N, d), out=g_W_s[2])
            # dx_hat = sum over the 3H heads j of dqkv_j W'_j: one accumulated matmul per head
            g_x_hat_s.zero_()
            for g_heads, W_heads_rows in ((g_k_s, W_s[1]), (g_v_s, W_s[2])):
                for g_h, W_h in zip(g_heads, W_heads_rows):
                    g_x_hat_s.addmm_(g_h, W_h)
            g_x_query = g_x_hat_s if not ctx.last_only else g_x_hat_s.view(B, T, d)[:, -1]
            for g_h, W_h in zip(g_q_s, W_s[0]):
                g_x_query.addmm_(g_h, W_h)
        g_b_folded = torch.cat([g_q.sum(2).view(S, d), g_kv.sum(3).transpose(0, 1).reshape(S, 2 * d)], dim=1)
        g_x = torch.ops.aten.native_layer_norm_backward(g_x_hat, x, (d,), mean, rstd, None, None,
                                                         [True, False, False])[0]
        (g_x if not ctx.last_only else g_x.view(S, B, T, d)[:, :, -1]).add_(g_out)
        # unfold LN's affine
        g_gamma = (g_W_folded * W).sum(1)
        g_W = g_W_folded.mul_(gamma[:, None, :]).baddbmm_(g_b_folded[:, :, None], beta[:, None, :])
        g_beta = torch.bmm(g_b_folded[:, None, :], W).squeeze(1)
        return g_x, g_gamma, g_beta, g_W, g_b_folded, g_W_O, g_b_O, None, None, None


class StackedMarkerTransformers(nn.Module):
    """S MarkerTransformers as one module: tokens (S, B, T) -> logits (S, B, n_classes), seed s through seed s's
    weights. The weights keep the plain module's layout with a leading seed axis: qkv_weight[layer] (S, 3d, d)
    holds W_Q, W_K, W_V in rows [0:d], [d:2d], [2d:3d], out_weight[layer] (S, d, d) is W_O. With mlp="on" each
    block's MLP (its LayerNorm, d -> d_mlp -> d with GELU) follows the attention, through autograd. The MLP of
    mlp="unused" gets no gradient in the plain module and never changes; it is not stacked (copy_into leaves it
    as the plain model has it)."""

    def __init__(self, models: Sequence[MarkerTransformer]):
        super().__init__()
        configs = {m.config for m in models}
        if not models or len(configs) != 1:
            raise ValueError(f"models: must be MarkerTransformers of one ModelConfig, got {len(configs)} configs")
        config = models[0].config
        self.config = config
        self.n_heads, self.d_head = config.n_heads, config.d_model // config.n_heads

        def stacked(weight):
            return nn.Parameter(torch.stack([weight(m).detach() for m in models]).clone())

        def per_layer(weight):
            return nn.ParameterList(stacked(lambda m: weight(m.blocks[layer])) for layer in range(config.n_layers))

        self.token_embedding = stacked(lambda m: m.token_embedding.weight)
        self.position_embedding = stacked(lambda m: m.position_embedding.weight)
        self.ln_weight = per_layer(lambda b: b.ln_attention.weight)
        self.ln_bias = per_layer(lambda b: b.ln_attention.bias)
        self.qkv_weight = per_layer(lambda b: b.attention.qkv.weight)
        self.qkv_bias = per_layer(lambda b: b.attention.qkv.bias)
        self.out_weight = per_layer(lambda b: b.attention.out.weight)
        self.out_bias = per_layer(lambda b: b.attention.out.bias)
        if config.mlp == "on":
            self.mlp_ln_weight = per_layer(lambda b: b.ln_mlp.weight)
            self.mlp_ln_bias = per_layer(lambda b: b.ln_mlp.bias)
            self.mlp_in_weight = per_layer(lambda b: b.mlp[0].weight)
            self.mlp_in_bias = per_layer(lambda b: b.mlp[0].bias)
            self.mlp_out_weight = per_layer(lambda b: b.mlp[2].weight)
            self.mlp_out_bias = per_layer(lambda b: b.mlp[2].bias)
        self.ln_final_weight = stacked(lambda m: m.ln_final.weight)
        self.ln_final_bias = stacked(lambda m: m.ln_final.bias)
        self.head_weight = stacked(lambda m: m.head.weight)
        self.head_bias = stacked(lambda m: m.head.bias)
        T = config.seq_len
        # the causal mask as an additive bias on the scores: 0 where a query sees a key, -inf after it
        visible = torch.tril(torch.ones(T, T, dtype=torch.bool, device=self.token_embedding.device))
        self.register_buffer("causal_bias", torch.zeros(T, T, dtype=self.token_embedding.dtype,
                                                        device=visible.device).masked_fill(~visible, float("-inf")),
                             persistent=False)

    @property
    def n_models(self) -> int:
        return self.token_embedding.shape[0]

    def parameter_pairs(self, model: MarkerTransformer) -> list[tuple[nn.Parameter, nn.Parameter]]:
        """(parameter of a plain MarkerTransformer, the stacked parameter holding it for every seed) for every
        stacked parameter: seed s's value of plain is stacked[s]."""
        pairs = [(model.token_embedding.weight, self.token_embedding),
                 (model.position_embedding.weight, self.position_embedding),
                 (model.ln_final.weight, self.ln_final_weight), (model.ln_final.bias, self.ln_final_bias),
                 (model.head.weight, self.head_weight), (model.head.bias, self.head_bias)]
        for layer, block in enumerate(model.blocks):
            pairs += [(block.ln_attention.weight, self.ln_weight[layer]),
                      (block.ln_attention.bias, self.ln_bias[layer]),
                      (block.attention.qkv.weight, self.qkv_weight[layer]),
                      (block.attention.qkv.bias, self.qkv_bias[layer]),
                      (block.attention.out.weight, self.out_weight[layer]),
                      (block.attention.out.bias, self.out_bias[layer])]
            if self.config.mlp == "on":
                pairs += [(block.ln_mlp.weight, self.mlp_ln_weight[layer]),
                          (block.ln_mlp.bias, self.mlp_ln_bias[layer]),
                          (block.mlp[0].weight, self.mlp_in_weight[layer]),
                          (block.mlp[0].bias, self.mlp_in_bias[layer]),
                          (block.mlp[2].weight, self.mlp_out_weight[layer]),
                          (block.mlp[2].bias, self.mlp_out_bias[layer])]
        return pairs

    @torch.no_grad()
    def copy_into(self, model: MarkerTransformer, index: int) -> MarkerTransformer:
        """Write seed index's current weights into a plain MarkerTransformer of the same config; returns it."""
        for plain, stacked in self.parameter_pairs(model):
            plain.copy_(stacked[index])
        return model

    def attention_weights(self, index: int) -> dict[str, torch.Tensor]:
        """MarkerTransformer.attention_weights of seed index: views {"L0.W_Q": (d, d), ...} of the live weights."""
        d, blocks = self.config.d_model, {}
        for layer in range(self.config.n_layers):
            qkv = self.qkv_weight[layer][index]
            blocks[f"L{layer}.W_Q"] = qkv[:d]
            blocks[f"L{layer}.W_K"] = qkv[d:2 * d]
            blocks[f"L{layer}.W_V"] = qkv[2 * d:]
            blocks[f"L{layer}.W_O"] = self.out_weight[layer][index]
        return blocks

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (S, B, T) long -> logits (S, B, n_classes) at the last position, as MarkerTransformer.forward."""
        S, B, T = tokens.shape
        d, H, dh = self.config.d_model, self.n_heads, self.d_head
        vocab = self.token_embedding.shape[1]
        # seed s's tokens index rows s * vocab + token of the seeds' embedding tables laid end to end
        rows = tokens + vocab * torch.arange(S, device=tokens.device).view(S, 1, 1)
        x = F.embedding(rows, self.token_embedding.flatten(0, 1)) + self.position_embedding[:, None, :T]
        x = x.view(S, B * T, d)
        for layer in range(self.config.n_layers):
            x = _AttentionBlock.apply(x, self.ln_weight[layer], self.ln_bias[layer], self.qkv_weight[layer],
                                      self.qkv_bias[layer], self.out_weight[layer], self.out_bias[layer],
                                      self.causal_bias[:T, :T], H, layer == self.config.n_layers - 1)
            if self.config.mlp == "on":
                x = x + self._mlp(x, layer)
        return self._linear(self._layer_norm(x, self.ln_final_weight, self.ln_final_bias), self.head_weight,
                            self.head_bias)

    @staticmethod
    def _layer_norm(x, weight, bias):
        """LayerNorm over the last axis with seed s's (d,) weight and bias: x (S, rows, d)."""
        return F.layer_norm(x, x.shape[-1:], eps=LAYER_NORM_EPS) * weight[:, None, :] + bias[:, None, :]

    @staticmethod
    def _linear(x, weight, bias):
        """nn.Linear with seed s's weight (out, in) and bias (out,): x (S, rows, in) -> (S, rows, out)."""
        return torch.baddbmm(bias[:, None, :], x, weight.transpose(1, 2))

    def _mlp(self, x, layer: int):
        """Block's MLP (mlp "on"): W_2 GELU(W_1 LN(x) + b_1) + b_2, per position."""
        h = self._layer_norm(x, self.mlp_ln_weight[layer], self.mlp_ln_bias[layer])
        h = F.gelu(self._linear(h, self.mlp_in_weight[layer], self.mlp_in_bias[layer]))
        return self._linear(h, self.mlp_out_weight[layer], self.mlp_out_bias[layer])


def _optimizer(parameters, train: TrainConfig) -> torch.optim.Optimizer:
    """trajectory.make_optimizer's optimizer over the stacked tensors: AdamW (lr, weight_decay, torch's other
    defaults) as one fused kernel where this torch has one for the device, else the foreach kernels; SGD foreach.
    The same elementwise update as the plain optimizer's per-parameter loop, up to float rounding."""
    parameters = list(parameters)
    if train.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=train.lr, weight_decay=train.weight_decay, foreach=True)
    try:
        optimizer = torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay, fused=True)
    except RuntimeError:  # no fused AdamW for this device in this torch
        optimizer = torch.optim.AdamW(parameters, lr=train.lr, weight_decay=train.weight_decay, foreach=True)
    return optimizer


def _checked_trains(trains) -> list[TrainConfig]:
    trains = list(trains) if isinstance(trains, (list, tuple)) else None
    if not trains or not all(isinstance(t, TrainConfig) for t in trains):
        raise ValueError(f"trains: must be a non-empty list of TrainConfig, got {trains!r}")
    if len({replace(t, seed=0) for t in trains}) != 1:
        raise ValueError("trains: the TrainConfigs of one stack must differ in their seed only, got "
                         f"{sorted({str(replace(t, seed=0)) for t in trains})}")
    return trains


def train_stacked(task: TaskConfig, model_config: ModelConfig, trains: Sequence[TrainConfig],
                  on_snapshot: Callable[[int, int, MarkerTransformer], None] | None = None,
                  progress: Callable[[int], None] | None = None) -> list[TrainingRun | Diverged]:
    """train_with_snapshots(task, model_config, train, ...) for every train of `trains` (one per seed; they may
    differ in their seed only), computed together as one stacked model. Returns, per train in order, the
    TrainingRun train_with_snapshots returns (the model holds that seed's final weights) or the Diverged it
    raises, with the same step, place and loss curve.

    on_snapshot(index, step, model) runs after the snapshot of every seed still finite, with index the seed's
    position in `trains` and model a MarkerTransformer holding that seed's weights at that step (the plain module:
    probes computed on it are the plain loop's probes); a Diverged it raises marks that seed diverged, as in
    train_with_snapshots. The other seeds train on: a seed's numbers never depend on the others' (every sum is
    within a seed). progress(1) after every training step of the stack.

    float64: build and train under torch.set_default_dtype(torch.float64), as the plain loop would be run.
    """
    trains = _checked_trains(trains)
    if not isinstance(model_config, ModelConfig):
        raise ValueError(f"model_config: must be a ModelConfig, got {model_config!r}")
    train, n_models = trains[0], len(trains)
    models = []
    for t in trains:
        torch.manual_seed(t.seed)  # the plain loop's initialization, seed by seed
        models.append(MarkerTransformer(model_config).to(t.device))
    stack = StackedMarkerTransformers(models)
    optimizer = _optimizer(stack.parameters(), train)
    data_generators = [torch.Generator().manual_seed(t.seed) for t in trains]
    recorders = [TrajectoryRecorder(lambda index=index: stack.attention_weights(index)) for index in range(n_models)]
    snapshot_steps = set(train.snapshot_steps)
    losses = torch.zeros(n_models, train.steps, device=train.device)
    accuracies = torch.zeros(n_models, train.steps, device=train.device)
    markers = np.zeros((n_models, train.steps), dtype=np.int64)
    outcome: list = [None] * n_models  # a Diverged once a seed has diverged
    checked = 0  # every live seed's losses of steps < checked were finite
    for step in range(train.steps + 1):
        if step in snapshot_steps:
            for index in range(n_models):
                if outcome[index] is None:
                    outcome[index] = _snapshot(stack, index, step, checked, losses[index], recorders[index],
                                               models[index], on_snapshot)
            checked = step
            if all(outcome):
                break
        if step == train.steps:
            break
        batches = []
        for index, generator in enumerate(data_generators):
            m = task.markers_at_step(step, generator)
            batches.append(sample_batch(task, m, generator))
            markers[index, step] = m
        tokens = torch.stack([b.tokens for b in batches]).to(train.device)
        labels = torch.stack([b.labels for b in batches]).to(train.device)
        logits = stack(tokens)  # (S, B, n_classes)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="none").view(labels.shape).mean(1)
        optimizer.zero_grad(set_to_none=True)
        loss.sum().backward()  # seed s's gradient is that of its own mean loss
        optimizer.step()
        with torch.no_grad():
            losses[:, step] = loss
            accuracies[:, step] = (logits.argmax(dim=-1) == labels).float().mean(1)
        if progress is not None:
            progress(1)
    results = []
    for index, model in enumerate(models):
        if outcome[index] is not None:
            results.append(outcome[index])
            continue
        results.append(TrainingRun(stack.copy_into(model, index), np.array(recorders[index].steps),
                                   recorders[index].trajectories(), losses[index].cpu().numpy(),
                                   accuracies[index].cpu().numpy(), markers[index].copy()))
    return results


def _snapshot(stack: StackedMarkerTransformers, index: int, step: int, checked: int, losses: torch.Tensor,
              recorder: TrajectoryRecorder, model: MarkerTransformer, on_snapshot) -> Diverged | None:
    """train_with_snapshots' snapshot of one seed: its divergence checks, the recording and the hook. Returns the
    Diverged the plain loop would raise there, or None."""
    bad = _first_nonfinite_step(losses, checked, step)
    if bad is not None:
        return Diverged(bad, "loss", losses[:bad + 1].cpu().numpy())
    if not all(bool(torch.isfinite(p[index]).all()) for p in stack.parameters()):
        return Diverged(step, "weights", losses[:step].cpu().numpy())
    recorder.record(step)
    if on_snapshot is not None:
        try:
            on_snapshot(index, step, stack.copy_into(model, index))
        except Diverged as diverged:
            return Diverged(diverged.step, diverged.where, losses[:step].cpu().numpy())
    return None
