"""Training on the marker task while recording the attention-weight trajectory (Xu 2026, section 3.3).

The paper's "trajectory" is the sequence of snapshots of W_Q, W_K, W_V, W_O of every layer (Xu 2026:
the four matrices "together constitute the complete parameterization" it analyses). Snapshots must be
real copies: the released code stores `W.detach().cpu()`, which on a CPU tensor returns the live parameter
itself, so with in-place optimizer updates every stored "snapshot" equals the final weights. `TrajectoryRecorder`
copies, and a test checks that snapshots taken at different steps differ on CPU.

    RunConfig       one training run: task, model and optimizer (the configs below it are built from it)
    train_with_snapshots(task, model_config, train_config, on_snapshot=...)
    Diverged        what train_with_snapshots raises when the loss, the weights or a measurement leave the finite
                    numbers: where, at which step, and the loss curve until then
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Callable

import numpy as np
import torch

from validate._common import checks
from validate._execution_manifold.modular import (MLP_MODES, MarkerTransformer, ModelConfig, TaskConfig,
                                                  cross_entropy_and_accuracy, sample_batch)

OPTIMIZERS = ("adamw", "sgd")
# learning rate and weight decay when none is given: the released code's AdamW (lr 3e-4, PyTorch's default
# weight decay 0.01; github.com/skydancerosel/bubble-modadd, helpers.train) and the paper text's "standard
# stochastic gradient descent" (Xu 2026: lr 0.001, no decay mentioned)
DEFAULT_LR = {"adamw": 3e-4, "sgd": 1e-3}
DEFAULT_WEIGHT_DECAY = {"adamw": 0.01, "sgd": 0.0}


@dataclass(frozen=True)
class TrainConfig:
    """optimizer "adamw" (the released code: lr 3e-4, PyTorch's default weight decay 0.01) or "sgd" (the paper
    text: plain SGD, lr 1e-3). A snapshot is taken before step 0 and every `snapshot_every` steps, and after
    the last step, so steps / snapshot_every + 1 snapshots (41 for the code's 20,000 / 500)."""
    steps: int = 20_000
    snapshot_every: int = 500
    optimizer: str = "adamw"
    lr: float = 3e-4
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self):
        checks.field(self, "steps", checks.integer, 1)
        checks.field(self, "snapshot_every", checks.integer, 1, self.steps)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        checks.field(self, "lr", checks.real, 0.0, above=True)
        checks.field(self, "weight_decay", checks.real, 0.0)
        checks.field(self, "seed", checks.integer, 0, checks.SEED_LIMIT - 1)

    @property
    def snapshot_steps(self) -> list[int]:
        steps = list(range(0, self.steps, self.snapshot_every))
        return steps + [self.steps]


@dataclass(frozen=True)
class RunConfig:
    """One training run on the marker task: the task, the model and the optimizer, without the seed (the
    seed is a replicate; the configs of the experiments hold it). Defaults are the released code's run:
    T = 16, C = 8, m in {1, 2, 3, 4}, batch 128, 5 attention-only layers of width 128 with 4 heads, AdamW,
    20,000 steps, a snapshot every 500. lr / weight_decay None take the optimizer's default (DEFAULT_LR).
    device and threads say where the run is computed, not what it computes."""
    steps: int = 20_000
    snapshot_every: int = 500
    markers: tuple = (1, 2, 3, 4)
    modulus: int = 8
    seq_len: int = 16
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float | None = None
    weight_decay: float | None = None
    mlp: str = "none"
    n_layers: int = 5
    d_model: int = 128
    n_heads: int = 4
    device: str = "cpu"
    threads: int = 1

    def __post_init__(self):
        # plain ints (NumPy integers too); the ranges are checked by the configs below (and threads here)
        checks.field(self, "markers", checks.sequence, checks.integer, distinct=False, empty=True)
        for name in ("steps", "snapshot_every", "modulus", "seq_len", "batch_size", "n_layers", "d_model", "n_heads"):
            checks.field(self, name, checks.integer)
        checks.field(self, "threads", checks.integer, 1)
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.optimizer])
        if self.weight_decay is None:
            object.__setattr__(self, "weight_decay", DEFAULT_WEIGHT_DECAY[self.optimizer])
        if self.mlp not in MLP_MODES:
            raise ValueError(f"mlp must be one of {MLP_MODES}, got {self.mlp!r}")
        checks.field(self, "device", checks.device)  # cpu, or a CUDA device torch sees
        # the configs below check their own fields: build them once so a bad value is named now
        self.model_config(self.task_config())
        self.train_config(seed=0)

    @property
    def n_snapshots(self) -> int:
        """len(TrainConfig.snapshot_steps): every snapshot_every steps from 0, and the last step."""
        return -(-self.steps // self.snapshot_every) + 1

    def task_config(self, markers: tuple | None = None, modulus: int | None = None) -> TaskConfig:
        """The task of this run, or of another difficulty setting (markers, modulus) with everything else kept."""
        return TaskConfig(seq_len=self.seq_len, markers=self.markers if markers is None else tuple(markers),
                          modulus=self.modulus if modulus is None else modulus, batch_size=self.batch_size)

    def model_config(self, task: TaskConfig) -> ModelConfig:
        return ModelConfig.for_task(task, n_layers=self.n_layers, d_model=self.d_model, n_heads=self.n_heads,
                                    mlp=self.mlp)

    def train_config(self, seed: int) -> TrainConfig:
        return TrainConfig(steps=self.steps, snapshot_every=self.snapshot_every, optimizer=self.optimizer,
                           lr=self.lr, weight_decay=self.weight_decay, seed=seed, device=self.device)

    def numbers_fields(self) -> dict:
        """The fields that change the numbers (all but device and threads), for the store's fingerprints."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("device", "threads")}


class TrajectoryRecorder:
    """Stores (step, {block name: flattened float32 copy}) for the named weight views of a model."""

    def __init__(self, blocks: Callable[[], dict[str, torch.Tensor]]):
        self._blocks = blocks
        self.steps: list[int] = []
        self._snapshots: dict[str, list[np.ndarray]] = {}

    def record(self, step: int) -> None:
        with torch.no_grad():
            for name, weight in self._blocks().items():
                # copy=True: on CPU, .cpu() alone would return the live parameter (the released code's bug)
                copy = weight.detach().to("cpu", dtype=torch.float32, copy=True)
                self._snapshots.setdefault(name, []).append(copy.numpy().reshape(-1))
        self.steps.append(int(step))

    def trajectories(self) -> dict[str, np.ndarray]:
        """{block name: (n_snapshots, D) array}."""
        return {name: np.stack(snaps) for name, snaps in self._snapshots.items()}


class Diverged(Exception):
    """A run left the finite numbers: `where` ("loss", "weights", or a measurement such as "attention" or
    "commutator") at training step `step`; `loss` holds the training loss of every step before it (NaN or inf
    at the end where the loss diverged). Raised by train_with_snapshots and by its on_snapshot hooks."""

    def __init__(self, step: int, where: str, loss=None):
        super().__init__(step, where)
        self.step, self.where = int(step), str(where)
        self.loss = np.zeros(0) if loss is None else np.asarray(loss, dtype=np.float64)

    def __str__(self) -> str:
        return f"diverged at step {self.step}: the {self.where} is not finite"

    def as_dict(self) -> dict:
        """What a result records of it."""
        return {"step": self.step, "where": self.where}


def loss_curve(loss: np.ndarray, steps, snapshot_every: int) -> list[float]:
    """The mean training loss over the snapshot_every steps before each snapshot step."""
    return [float(np.mean(loss[max(0, s - snapshot_every):max(1, s)])) for s in steps]


def diverged_result(diverged: Diverged, run: RunConfig, seconds: float) -> dict:
    """What a diverged run stores in place of its measurements: where and when ({"step", "where"}), and its
    loss curve at the snapshot steps it reached and at the step it diverged."""
    reached = [s for s in run.train_config(0).snapshot_steps if s < diverged.step] + [diverged.step]
    return {"diverged": diverged.as_dict(), "snapshot_steps": reached,
            "loss_curve": loss_curve(diverged.loss, reached, run.snapshot_every),
            "final_train_loss": float("nan"), "seconds": {"train": seconds, "analysis": 0.0}}


def _first_nonfinite_step(losses: torch.Tensor, start: int, stop: int) -> int | None:
    """The first step in [start, stop) whose loss is NaN or inf, or None."""
    bad = torch.nonzero(~torch.isfinite(losses[start:stop]))
    return None if bad.numel() == 0 else start + int(bad[0, 0])


@dataclass
class TrainingRun:
    model: MarkerTransformer
    snapshot_steps: np.ndarray
    trajectories: dict  # {block name: (n_snapshots, D) float32}
    loss: np.ndarray  # training loss at every step
    accuracy: np.ndarray  # training-batch accuracy at every step
    markers: np.ndarray  # m of every step's batch


def make_optimizer(model: torch.nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    if train.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)


def train_with_snapshots(task: TaskConfig, model_config: ModelConfig, train: TrainConfig,
                         on_snapshot: Callable[[int, MarkerTransformer], None] | None = None,
                         progress: Callable[[int], None] | None = None) -> TrainingRun:
    """Train on fresh batches, recording W_Q, W_K, W_V, W_O at train.snapshot_steps.

    on_snapshot(step, model) runs right after each snapshot (probe metrics here; commutators later); it must
    not change the parameters. Initialization and the data stream are seeded by train.seed and drawn on the
    CPU, so the same seed gives the same run on any device.

    Divergence: at every snapshot the losses since the last one and the weights are checked (one check per
    snapshot, not per step, so the GPU is not synchronized every step); a NaN or inf raises Diverged with the
    first step whose loss was not finite (or, for the weights, the snapshot's step), and the loss curve until
    then. An on_snapshot hook raises Diverged for a measurement that is not finite; it gets the loss curve too.
    """
    torch.manual_seed(train.seed)
    model = MarkerTransformer(model_config).to(train.device)
    data_generator = torch.Generator().manual_seed(train.seed)
    optimizer = make_optimizer(model, train)
    recorder = TrajectoryRecorder(model.attention_weights)
    snapshot_steps = set(train.snapshot_steps)
    losses = torch.zeros(train.steps, device=train.device)
    accuracies = torch.zeros(train.steps, device=train.device)
    markers = np.zeros(train.steps, dtype=np.int64)
    checked = 0  # losses of steps < checked were finite
    for step in range(train.steps + 1):
        if step in snapshot_steps:
            bad = _first_nonfinite_step(losses, checked, step)
            if bad is not None:
                raise Diverged(bad, "loss", losses[:bad + 1].cpu().numpy())
            checked = step
            if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
                raise Diverged(step, "weights", losses[:step].cpu().numpy())
            recorder.record(step)
            if on_snapshot is not None:
                try:
                    on_snapshot(step, model)
                except Diverged as diverged:
                    raise Diverged(diverged.step, diverged.where, losses[:step].cpu().numpy()) from None
        if step == train.steps:
            break
        m = task.markers_at_step(step, data_generator)
        batch = sample_batch(task, m, data_generator).to(train.device)
        loss, accuracy = cross_entropy_and_accuracy(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses[step], accuracies[step], markers[step] = loss.detach(), accuracy, m
        if progress is not None:
            progress(1)
    return TrainingRun(model, np.array(recorder.steps), recorder.trajectories(), losses.cpu().numpy(),
                       accuracies.cpu().numpy(), markers)
