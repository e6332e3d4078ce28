"""What a signal_prop or phase_diagram run holds in memory at its peak, estimated from its sizes before any compute,
so that a configuration this machine (or its GPU) cannot hold is refused in one line naming the inputs and the
limit (validate._common.memory), instead of a traceback minutes in or a hang.

    signal_prop_problem(cfg)      None, or that line, for a validate._signal_prop.propagation_experiment config
    phase_diagram_problem(cfg)    the same for a validate._signal_prop.phase_experiment config

Each term below is what the code allocates that grows with the inputs (named after the function that allocates
it), in bytes; where torch or the allocator holds more than the code references, the coefficient is measured and
its docstring says so. The process itself (Python with torch, NumPy, Numba and matplotlib loaded, ~0.4 GB) is not
counted. Against the peak resident memory of runs on this machine (resource.getrusage), less the same process's
resident memory just before the run, the estimate is 0.93 to 1.22 times the measured peak for the runs of
tests/test_faults_signal_prop.py (network weights and activations in float32 and float64, a batch of models
trained together) and 0.94 to 1.15 for train_batched alone over its sizes; the tests hold it within a factor
ESTIMATE_FACTOR, above or below.
"""
from __future__ import annotations

import math

from sim.signal_prop import MONTE_CARLO_SAMPLES
from validate._common.memory import FLOAT32, FLOAT64, INT64, Need, device_memory, memory_problem
from validate._signal_prop.propagation_experiment import SETTINGS

ESTIMATE_FACTOR = 2
# Python objects of one canonical block (an nn.Module, its parameters and their dicts) beside its weights
BLOCK_OBJECT_BYTES = 6_000
# a Python float in a list (the float and the list's pointer), and the same number as JSON text
NUMBER_BYTES = 32 + 20
# a number of a training curve: in the trainer's lists, as JSON in the sweep store, read back, and in the JSON
# record (measured: 231 bytes per number with 8 models of 30000 steps)
CURVE_NUMBER_BYTES = 240
# the predicted maps: 5 float64 maps kept and about 8 temporaries of sim's grid per map point, and the figure's
# contour and image arrays (measured: 670 bytes per point in all at 1000^2 points, 653 at 2000^2)
MAP_BYTES_PER_POINT = 13 * FLOAT64 + 600


def _problem(host: list[Need], device: list[Need], device_name: str) -> str | None:
    problem = memory_problem(host)
    limit = device_memory(device_name)
    if problem is None and limit is not None:
        problem = memory_problem(device, limit, f"the memory of {device_name}")
    return problem


# ----------------------------------------------------------------------------------------------------------
# validate.signal_prop
# ----------------------------------------------------------------------------------------------------------
def _network_activations(tokens: int, width: int, depth: int, probes: int) -> int:
    """measure_network (float32): the states after every block (kept through the JVP) and the JVP's states and
    tangents after every block, 3 (probes, n, d) arrays per block; the inputs, the probes and one block's
    intermediates under the JVP (dual: LN'd input, Q, K, A H, A H W_V, the MLP's pre-activation, phi, output;
    logits and softmax of n^2). Measured at width 512, depth 16 and 32, probes 32 and 64, n 32 and 256: 4.6
    arrays per block and 36 besides, and 6 of n^2 (torch.func.jvp and the allocator hold more than the 3 that
    are referenced); the estimate takes 5 per block. measure_exponents' one block needs less (21 and 4.3)."""
    return FLOAT32 * probes * ((5 * depth + 36) * tokens * width + 6 * tokens ** 2)


def _finite_depth_activations(tokens: int, width: int, depth: int, probes: int) -> int:
    """measure_finite_depth (float64): the batched JVP over 2P inputs (states and tangents after every block:
    4 (probes, n, d) arrays per block), the collapsed inputs, tangents and spread (about 10), one block's dual
    intermediates, the one-token common-mode JVP (2 (probes, d) per block). Measured as for
    _network_activations: 6.9 arrays per block and 38 besides, 14 of n^2; the estimate takes 7 and 40."""
    return FLOAT64 * probes * ((7 * depth + 40) * tokens * width + 14 * tokens ** 2 + 2 * depth * width)


def signal_prop_needs(cfg) -> tuple[list[Need], list[Need]]:
    """(host, device) needs of a SignalPropConfig. One network is measured at a time, so a run's peak is its
    largest network; the theory and the results of every setting are held to the end."""
    d, n, L, P = cfg.width, cfg.n_tokens, cfg.depth, cfg.probes
    networks = cfg.networks * len(cfg.seeds)
    trajectory = [name for name in cfg.settings if name in SETTINGS]
    finite_depth = len(cfg.settings) - len(trajectory)
    biases = 2 * d if any(SETTINGS[name].sigma_b > 0 for name in trajectory) else 0
    weights, activations = 0, 0
    if trajectory:   # float32 networks, d_ff = d; the exponent block of measure_exponents is smaller
        weights = FLOAT32 * L * (5 * d * d + biases)
        activations = _network_activations(n, d, L, P)
    if finite_depth and FLOAT64 * L * 5 * d * d + _finite_depth_activations(n, d, L, P) > weights + activations:
        weights, activations = FLOAT64 * L * 5 * d * d, _finite_depth_activations(n, d, L, P)
    sizes = {"width": d, "depth": L}
    common = [
        Need("for the weights of each network (5 depth width^2 numbers)", sizes, weights),
        Need("for the Python objects of each network's blocks", {"depth": L}, BLOCK_OBJECT_BYTES * L),
    ]
    host = common + [
        # sim.signal_prop.propagate's common random numbers: 3 x MONTE_CARLO_SAMPLES x n float64 normals
        Need(f"for the theory's softmax Monte Carlo (3 x {MONTE_CARLO_SAMPLES} x n_tokens float64)",
             {"n_tokens": n}, 3 * MONTE_CARLO_SAMPLES * n * FLOAT64 if trajectory else 0),
        Need("for the results of every setting and network, after every block",
             {"depth": L, "networks": cfg.networks, "seeds": cfg.seeds},
             len(cfg.settings) * (L + 1) * (4 * networks * FLOAT64 + 20 * NUMBER_BYTES)),
    ]
    activations_need = Need("for the states, probes and JVPs of each network (probes x n_tokens x width after "
                            "every block)", {"probes": P, "n_tokens": n, "width": d, "depth": L}, activations)
    if cfg.device == "cpu":
        return host + [activations_need], []
    # on a GPU the networks are drawn on the host and moved; their activations live on the device
    return host, common + [activations_need]


def signal_prop_problem(cfg) -> str | None:
    """None when a SignalPropConfig fits this machine's memory (and its GPU's), else one line naming the inputs
    of its largest need and the limit."""
    host, device = signal_prop_needs(cfg)
    return _problem(host, device, cfg.device)


# ----------------------------------------------------------------------------------------------------------
# validate.phase_diagram
# ----------------------------------------------------------------------------------------------------------
def _parameters(train) -> int:
    """Parameters of one PhaseModel: embedding, blocks (W_Q, W_K, W_V, W_1, W_2), readout."""
    d, f = train.width, train.d_ff
    return train.task.vocab * d + train.depth * (3 * d * d + 2 * d * f) + d * train.task.n_classes


def _training(train, models: int, activation) -> list[Need]:
    """train_batched of `models` models: their stacked weights with gradients and Adam's two moments (4 copies;
    2 PhaseModels' worth while stacking) and a temporary of the largest weight (the gradient norm, or the zeroing
    of diverged models); the activations _Block saves for the backward at every block (the pre-activation too
    unless phi is tanh) with one block's temporaries, and one evaluation chunk of min(256, test_size) sequences:
    their sum, not their max, because the allocator keeps what the first evaluation frees (measured at 4 and 8
    models, width 64 to 512, depth 4 and 8, n 16 and 64: the peak is 0.9 to 1.1 times the sum, up to twice
    the max); the test set, whose labels come from an (S, n, n) comparison summed as int64 (9 n^2 bytes per
    sequence)."""
    d, f, L, B = train.width, train.d_ff, train.depth, train.batch
    n, K, V = train.task.n_tokens, train.task.n_classes, train.task.vocab
    largest = max(V * d, d * d, d * f)
    saved_ff = f if activation == "tanh" else 2 * f
    tokens = models * B * n
    steps = FLOAT32 * tokens * (L * (5 * d + saved_ff + n + 2) + 8 * d + 2 * f + 4 * n + 4 * K) + 4 * INT64 * tokens
    chunk = min(256, train.test_size)
    evaluation = FLOAT32 * models * chunk * n * (8 * d + 2 * f + 3 * n + 3 * K)
    return [Need("for the stacked weights, gradients and Adam's moments of each batch of models",
                 {"models_per_batch": models, "width": d, "d_ff": f, "depth": L, "vocab": V},
                 FLOAT32 * models * (4 * _parameters(train) + largest)),
            Need("for the activations of each batch of models (a training step and an evaluation chunk)",
                 {"models_per_batch": models, "batch": B, "n_tokens": n, "width": d, "depth": L},
                 steps + evaluation),
            Need("for the test set (test_size x n_tokens tokens and labels, through an n_tokens^2 comparison)",
                 {"test_size": train.test_size, "n_tokens": n}, train.test_size * n * (3 * INT64 + 9 * n))]


def _measuring(cfg) -> list[Need]:
    """The crossing experiment's initialized networks (measure_finite_depth, float64, d_ff = width), one at a
    time, on the CPU whatever the device."""
    train = cfg.train
    sizes = {"width": train.width, "depth": train.depth}
    return [Need("for the weights of each initialized network measured (5 depth width^2 float64)", sizes,
                 FLOAT64 * train.depth * 5 * train.width ** 2),
            Need("for the JVPs of each initialized network measured", sizes | {"probes": cfg.probes},
                 _finite_depth_activations(train.task.n_tokens, train.width, train.depth, cfg.probes))]


def _total(needs: list[Need]) -> int:
    return sum(need.size for need in needs)


def _times(needs: list[Need], copies: int) -> list[Need]:
    """`copies` of each need at once (the worker processes), which names workers among its inputs."""
    if copies == 1:
        return needs
    return [Need(need.what, need.inputs | {"workers": copies}, need.size * copies) for need in needs]


def phase_diagram_needs(cfg) -> tuple[list[Need], list[Need]]:
    """(host, device) needs of a PhaseDiagramConfig: the batches running at once (one per worker process, or
    one in this process with workers=0 or on a cluster), and what this process holds to the end: the predicted
    maps and the curves of every trained model."""
    train = cfg.train
    points = cfg.grid[0] * cfg.grid[1]
    pairs = points * len(cfg.seeds)
    models = min(cfg.models_per_batch, pairs)
    if cfg.experiment == "crossing" and cfg.sgd_lr is None:
        models = max(models, len(cfg.seeds))    # the learning-rate candidates: one batch of the seeds each
    at_once = 1 if cfg.workers == 0 or cfg.scheduler else min(cfg.workers, math.ceil(pairs / models))
    training = _training(train, models, cfg.base.activation)
    measuring = _measuring(cfg) if cfg.experiment == "crossing" else []
    runs = 1 if cfg.experiment == "plane" else 2 + (len(cfg.sgd_lr_candidates) / points if cfg.sgd_lr is None
                                                    else 0)
    curves = 2 * train.steps + len(range(0, train.steps + 1, train.eval_every)) + 1
    held = [
        Need("for the training curves of every model (2 x steps numbers each, held and written as JSON)",
             {"steps": train.steps, "grid": cfg.grid, "seeds": cfg.seeds},
             int(runs * pairs * curves * CURVE_NUMBER_BYTES)),
        Need("for the predicted exponent maps (5 maps of map_points^2 float64, their temporaries and figure)",
             {"map_points": cfg.map_points}, cfg.map_points ** 2 * MAP_BYTES_PER_POINT),
    ]
    if cfg.device == "cpu":
        batch = measuring if _total(measuring) > _total(training) else training
        return _times(batch, at_once) + held, []
    # on a GPU the models are built (two copies of their weights while stacking) and the test set drawn on the
    # host, then moved; the training lives on the device; the measured networks stay on the host
    weights, activations, test = training
    stacking = Need("for the weights of each batch of models while they are stacked", weights.inputs,
                    FLOAT32 * models * 2 * _parameters(train))
    host = [stacking, test] if _total([stacking, test]) > _total(measuring) else measuring
    return _times(host, at_once) + held, _times(training, at_once)


def phase_diagram_problem(cfg) -> str | None:
    """None when a PhaseDiagramConfig fits this machine's memory (and its GPU's), else one line naming the
    inputs of its largest need and the limit."""
    host, device = phase_diagram_needs(cfg)
    return _problem(host, device, cfg.device)
