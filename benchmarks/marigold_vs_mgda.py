"""MARIGOLD vs MGDA: how close its weights stay to MGDA's min-norm weights, and at what cost.

Tracking. One training run per MARIGOLD variant. At every step, on the step's own forward pass
(same batch, same dropout draw, same theta), MGDA's min-norm weights are computed from the exact
Gram of the shared-parameter Jacobian (a second engine with its own budget, so MARIGOLD's tally
is untouched; ``min_norm.min_norm_weights``, exact active set); MARIGOLD then takes its step on
that same forward pass. Reported over the run: the L1 distance between the weights MARIGOLD
applied and MGDA's (mean / median / mean over the last 10% of steps) and the relative excess of
the MGDA objective, (F(w) - F(w_mgda)) / F(w_mgda), F(w) = w^T M w (median). Two references
frame the numbers: uniform weights (EW), and MGDA's weights of the *previous* step (how much the
per-batch target itself moves). Since per-batch MGDA weights are noisy, every ``--eval-every``
steps both MARIGOLD's weights and the per-batch MGDA weights are also compared with MGDA's
weights on a large batch (``--large-batch`` samples, same theta): "L1 large" is MARIGOLD's
distance to them, and the last table row the per-batch MGDA's. Also: FLOPs per step / EW's (from
the budget tally).

Timing. Step time of each method / EW's, on one batch, in interleaved blocks in one process
(median of per-block ratios): EW, exact MGDA (``batched`` engine) and the MARIGOLD variants.

Problems: ``multidigits`` (T = 2, the LeNet), ``teacher`` (T tasks of 4 classes from a random
two-layer teacher, MLP encoder 32 -> 64 -> 64, linear heads; ``--tasks``) and, for timing only,
``--resnet`` (CelebA's ResNet-18 with T = 40 heads on random 64x64 images).

Run: ``python benchmarks/marigold_vs_mgda.py --problem teacher --tasks 10``
     ``python benchmarks/marigold_vs_mgda.py --problem multidigits``
     ``python benchmarks/marigold_vs_mgda.py --resnet --batch-size 32 --skip-tracking``
Sweeps: ``--variant 'weight_step=0.3,num_directions=4'`` (repeatable) tracks those MarigoldParams
overrides instead of VARIANTS (``''``: the defaults); ``--seed``; ``--json PATH`` keeps the rows.
The "uniform weights (EW)" and "per-batch MGDA" rows are taken along the first variant's run.

Measured (2026-11-23, CPU, 2 threads, shared machine; tracking at 300 steps, batch 128, Adam lr
1e-3, large batch 2048; the timing part was shrunk to ``--blocks 1 --timing-steps 1`` and its
output discarded). Columns: L1 to the per-batch MGDA weights ("L1 batch": mean over steps), gap
(median over steps of the relative excess of F), "L1 large" (to the large-batch MGDA weights,
mean over evaluations), FLOPs per step / EW's (budget tally).

Default sweep (chose the defaults: weight_step 0.3, num_directions 2), teacher, T = 10; seeds 0-5
(3 asked for, 6 run to resolve the differences), large batch every 5 steps (60 evaluations a run):

    for s in 0 1 2 3 4 5; do
      python benchmarks/marigold_vs_mgda.py --problem teacher --tasks 10 --blocks 1
        --timing-steps 1 --eval-every 5 --seed $s
        --variant 'weight_step=1,num_directions=1' ... --variant 'weight_step=0.1,num_directions=4'
    done      # one command per seed (wrapped here); all 12 pairs of weight_step {1, .5, .3, .1}
              # x num_directions {1, 2, 4}, in that order

L1 large: mean over the 6 seeds (seeds 0-2 alone in brackets); "- EW": paired difference with
uniform weights' L1 large on the same run, "- best": with (0.1, 4) on the same seed, both mean
(standard error over the seeds); L1 batch and gap: mean over seeds. All line_search, pairs,
exact_directional, k = 1.

    eta_w  q   L1 large (0-2)   - EW (SE)       - best (SE)     L1 batch  gap med  FLOPs/EW
    1      1   0.295  (0.283)   +0.047 (0.004)  +0.072 (0.004)   0.278    8.9e-2    1.53
    1      2   0.291  (0.292)   +0.048 (0.006)  +0.069 (0.005)   0.255    7.5e-2    2.06
    1      4   0.290  (0.285)   +0.048 (0.006)  +0.068 (0.004)   0.224    5.8e-2    3.13
    0.5    1   0.242  (0.231)   -0.004 (0.003)  +0.020 (0.002)   0.226    6.1e-2    1.53
    0.5    2   0.237  (0.231)   -0.006 (0.004)  +0.014 (0.003)   0.214    5.3e-2    2.06
    0.5    4   0.243  (0.236)   +0.001 (0.005)  +0.021 (0.002)   0.200    4.7e-2    3.13
    0.3    1   0.234  (0.225)   -0.012 (0.002)  +0.011 (0.002)   0.217    5.6e-2    1.53  default
    0.3    2   0.227  (0.218)   -0.016 (0.004)  +0.004 (0.002)   0.208    5.1e-2    2.06
    0.3    4   0.229  (0.219)   -0.014 (0.004)  +0.006 (0.002)   0.199    4.7e-2    3.13
    0.1    1   0.233  (0.223)   -0.010 (0.002)  +0.011 (0.002)   0.212    5.4e-2    1.53
    0.1    2   0.228  (0.218)   -0.015 (0.004)  +0.006 (0.002)   0.208    5.1e-2    2.06
    0.1    4   0.222  (0.212)   -0.020 (0.003)   best            0.203    4.9e-2    3.13
    uniform weights (EW)  0.244  (0.232)                             0.218    5.6e-2    1
    per-batch MGDA        0.269  (0.262)      MGDA of the previous step: L1 batch 0.281

EW and per-batch MGDA rows: means over all 72 runs (each run has its own trajectory). The same
sweep at the default ``--eval-every 25``, seeds 0-2 (same runs, 12 evaluations each): same
picture, L1 large at eta_w = 1 0.28-0.29; eta_w <= 0.3: q >= 2 0.215-0.228, q = 1 0.224-0.229;
EW 0.228.

Teacher, T = 10, seed 0, the VARIANTS table (``--problem teacher --tasks 10 --blocks 1
--timing-steps 1``; large batch every 25 steps; the EW and per-batch MGDA rows are along the
default's run):

    teacher, T = 10                      L1 mean  median  last10%  gap med  L1 large  FLOPs/EW
    pairs, q=2, eta=0.3                   0.208    0.204   0.224    5.0e-2    0.249     2.06
    exact, pairs, q=1, eta=1 (old dflt)   0.277    0.270   0.276    9.3e-2    0.319     1.53
    exact, pairs, q=4, eta=1              0.216    0.209   0.216    5.4e-2    0.301     3.13
    central, pairs, q=1, eta=1, mu=1      0.277    0.270   0.276    9.3e-2    0.319     2.06
    exact, gaussian, q=1, eta=1           0.273    0.263   0.300    8.4e-2    0.276     1.53
    exact, pairs, q=1, eta=1, k=4         0.305    0.303   0.263    1.1e-1    0.272     1.13
    fixed rule, central, q=4, eta=1       0.398    0.368   0.581    1.6e-1    0.441     5.26
    uniform weights (EW)                  0.222                     5.9e-2    0.256     1
    MGDA weights of the previous step     0.276
    per-batch MGDA weights                                                    0.300

Multidigits, T = 2, seed 0 (``--problem multidigits --blocks 1 --timing-steps 1``; the default
row and the reference rows from ``--variant 'weight_step=0.3,num_directions=2'``, the other rows
from the earlier run of the same settings):

    multidigits, T = 2                   L1 mean  median  last10%  gap med  L1 large  FLOPs/EW
    pairs, q=2, eta=0.3                   0.105    0.092   0.103    8.9e-3    0.132     2.20
    exact, pairs, q=1, eta=1 (old dflt)   <1e-4    <1e-4   <1e-4    6e-16     0.200     1.60
    exact, pairs, q=4, eta=1              <1e-4    <1e-4   <1e-4    8e-16     0.197     3.39
    central, pairs, q=1, eta=1, mu=1      <1e-4    <1e-4   <1e-4    3e-15     0.210     2.20
    exact, gaussian, q=1, eta=1           <1e-4    <1e-4   <1e-4    6e-16     0.200     1.60
    exact, pairs, q=1, eta=1, k=4         0.197    0.151   0.184    2.7e-2    0.264     1.15
    fixed rule, central, q=4, eta=1       0.774    0.900   1.036    8.6e-1    0.796     5.79
    uniform weights (EW)                  0.221                     4.3e-2    0.160     1
    MGDA weights of the previous step     0.247
    per-batch MGDA weights                                                    0.201

T = 2 check of the default, seeds 0-2 (``--problem multidigits --blocks 1 --timing-steps 1
--seed S --variant ...``, large batch every 25 steps; means over seeds, per seed in brackets):

    multidigits, T = 2       L1 batch  gap med  L1 large               EW's L1 large  FLOPs/EW
    eta_w = 1, q = 1          <1e-4    1e-15    0.237 (.200 .237 .274)  0.263          1.60
    eta_w = 0.3, q = 2        0.102    8.4e-3   0.193 (.132 .180 .268)  0.225          2.20
    eta_w = 0.3, q = 1        0.136    1.5e-2   0.200 (.141 .199 .259)  0.228          1.60

Reading. T = 10: the undamped line search (eta_w = 1) follows the per-batch MGDA weights, which at
batch 128 are mostly noise (they move 0.28 a step and lie farther from the large-batch MGDA
weights, 0.27, than uniform weights do, 0.24): at every q it is 0.05 farther from the large-batch
weights than EW, on all 6 seeds. Damping (eta_w <= 0.5) averages the noise out. The best setting
(eta_w 0.1, q 4) is 0.020 closer than EW; q = 2 is within noise of it (eta_w 0.3: +0.004, SE
0.002, better on 2 of 6 seeds; L1 large's seed-to-seed sd is 0.016); q = 1 is not (+0.011, SE
0.002, worse on all 6 seeds). The default is nevertheless q = 1, eta_w = 0.3 (1.53 x EW's FLOPs;
q = 2: 2.06 x): issue 6's cost target is <= 2 x EW's step time at T = 40 on ResNet-18, where each
direction is one more encoder backward (H100: q = 1 measured 1.69 x; q = 2 would be ~2.3 x). It
is still closer to the large-batch MGDA weights than EW on every seed (paired -0.012, SE 0.002).
Plainly: no setting beats uniform weights by much (best: 0.020 closer than EW). T = 2: one
tangent direction, so each pair line search is along the same line, and with eta_w = 0.3 an
update goes 1 - 0.7^2 = 51 % of the way to MGDA's closed form (if interior; eta_w = 1: all of
it, the per-batch MGDA weights exactly). The default
therefore no longer applies MGDA's per-batch weights (L1 0.10, gap 8e-3; EW: 0.20, 3.4e-2), but it
is no farther from the large-batch MGDA weights (0.19, vs 0.24 at eta_w = 1 and 0.23 for EW; 12
noisy evaluations a run). ``central`` gives ``exact_directional``'s weights (F is quadratic) at
2.06 vs 1.53 x EW's FLOPs (q = 1); the fixed rule is the worst row on both problems; k = 4 costs
1.13-1.15 x EW's FLOPs but tracks worse than EW.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _timing import seconds_per_call
from mtlbench.harness.budget import Budget
from mtlbench.harness.data import training_batches
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.method import Method, TrainingConfig
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from mtlbench.harness.registry import DATASETS, METHODS
from mtlbench.harness.tasks import TaskSet, TaskSpec
from mtlbench.methods.min_norm import min_norm_weights
from torch import nn

VARIANTS: dict[str, dict[str, Any]] = {
    "default (pairs, q=1, eta=0.3)": {},
    "pairs, q=2, eta=0.3": {"num_directions": 2},
    "exact, pairs, q=1, eta=1": {"num_directions": 1, "weight_step": 1.0},
    "exact, pairs, q=4, eta=1": {"num_directions": 4, "weight_step": 1.0},
    "central, pairs, q=1, eta=1, mu=1": {
        "estimator": "central",
        "num_directions": 1,
        "weight_step": 1.0,
    },
    "exact, gaussian, q=1, eta=1": {
        "direction_distribution": "gaussian",
        "num_directions": 1,
        "weight_step": 1.0,
    },
    "exact, pairs, q=1, eta=1, k=4": {"update_every": 4, "num_directions": 1, "weight_step": 1.0},
    "fixed rule, central, q=4, eta=1": {
        "step_rule": "fixed",
        "estimator": "central",
        "num_directions": 4,
        "weight_step": 1.0,
    },
}


# ---- problems --------------------------------------------------------------------------------
def teacher_problem(num_tasks: int, samples: int = 4096, seed: int = 0):
    """(taskset, build_model, train tensors): T 4-class tasks read from a random teacher."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(samples, 32, generator=generator)
    hidden = torch.tanh(inputs @ torch.randn(32, 16, generator=generator))
    readout = torch.randn(num_tasks, 16, 4, generator=generator)
    targets = torch.einsum("bh,thc->btc", hidden, readout).argmax(-1).float()
    taskset = TaskSet([TaskSpec(f"t{t}", "classification", 4) for t in range(num_tasks)])

    def build_model() -> MultiTaskModel:
        encoder = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU())
        return MultiTaskModel(encoder, StackedMLPHeads(num_tasks, 64, 4, hidden=None), num_tasks)

    return taskset, build_model, (inputs, targets)


def multidigits_problem():
    dataset_cls = DATASETS.get("multidigits")
    dataset = dataset_cls(dataset_cls.Params(val_pairs=1, test_pairs=1))
    return dataset_cls.taskset(dataset.params), dataset.build_model, dataset.load().train.tensors


def resnet_problem(batch_size: int):
    """CelebA's model (ResNet-18, 40 heads of 2 classes) on one random batch: timing only."""
    dataset_cls = DATASETS.get("celeba")
    params = dataset_cls.Params()
    taskset = dataset_cls.taskset(params)
    dataset = dataset_cls(params)
    generator = torch.Generator().manual_seed(0)
    side = params.image_size
    inputs = torch.randn(batch_size, 3, side, side, generator=generator)
    targets = torch.randint(0, 2, (batch_size, len(taskset)), generator=generator).float()
    return taskset, dataset.build_model, (inputs, targets)


def make_method(name: str, params: dict[str, Any], model, taskset, training) -> Method:
    method_cls = METHODS.get(name)
    return method_cls(method_cls.Params.model_validate(params), model, taskset, training)


def ew_step_flops(engine) -> Callable[[int], float]:
    kinds = ("encoder_forward", "heads_forward", "heads_backward", "encoder_backward")
    return lambda size: sum(engine.costs.flops(kind, size) for kind in kinds)


# ---- tracking --------------------------------------------------------------------------------
def track(params: dict[str, Any], taskset, build_model, train, args) -> dict[str, float]:
    """Train MARIGOLD with ``params`` for ``args.steps`` steps; distances to MGDA per step."""
    torch.manual_seed(args.seed)
    model = build_model()
    training = TrainingConfig(batch_size=args.batch_size, lr=args.lr)
    method = make_method("marigold", params, model, taskset, training)
    batches = training_batches(
        torch.utils.data.TensorDataset(*train), args.batch_size, args.seed, torch.device("cpu")
    )
    first = next(batches)
    budget = Budget("flops", 1e30)
    engine = get_engine("loop")(model, taskset, budget, first)
    reference = get_engine("batched")(model, taskset, Budget("flops", 1e30), first)
    uniform = torch.full((len(taskset),), 1.0 / len(taskset), dtype=torch.float64)
    keys = (
        "l1",
        "gap",
        "l1_uniform",
        "gap_uniform",
        "l1_lag",
        "l1_large",
        "l1_batch_large",
        "l1_uniform_large",
    )
    rows: dict[str, list[float]] = {key: [] for key in keys}
    large_batch = (train[0][: args.large_batch], train[1][: args.large_batch])
    previous = None
    batch = first
    for step in range(args.steps):
        if step % args.eval_every == args.eval_every - 1:
            large = reference.shared_jacobian(reference.forward(large_batch)).double()
            large_mgda = min_norm_weights(large @ large.T).double()
        state = engine.forward(batch)
        jacobian = reference.shared_jacobian(state).double()
        gram = jacobian @ jacobian.T
        mgda = min_norm_weights(gram).double()
        state.representation_grads, state.shared_jacobian = None, None
        # MARIGOLD's step on this very forward pass (its forward is already charged above).
        engine.forward = lambda _batch, state=state: state  # type: ignore[method-assign]
        weights = method.step(batch, engine)["weights"].double()
        del engine.forward
        objective = mgda @ gram @ mgda
        rows["l1"].append(float((weights - mgda).abs().sum()))
        rows["gap"].append(float((weights @ gram @ weights - objective) / objective))
        rows["l1_uniform"].append(float((uniform - mgda).abs().sum()))
        rows["gap_uniform"].append(float((uniform @ gram @ uniform - objective) / objective))
        if previous is not None:
            rows["l1_lag"].append(float((previous - mgda).abs().sum()))
        if step % args.eval_every == args.eval_every - 1:
            rows["l1_large"].append(float((weights - large_mgda).abs().sum()))
            rows["l1_batch_large"].append(float((mgda - large_mgda).abs().sum()))
            rows["l1_uniform_large"].append(float((uniform - large_mgda).abs().sum()))
        previous = mgda
        batch = next(batches)
    tail = max(1, args.steps // 10)
    per_step_flops = budget.spent_flops / args.steps
    return {
        "l1_mean": float(np.mean(rows["l1"])),
        "l1_median": float(np.median(rows["l1"])),
        "l1_final": float(np.mean(rows["l1"][-tail:])),
        "gap_median": float(np.median(rows["gap"])),
        "uniform_l1_mean": float(np.mean(rows["l1_uniform"])),
        "uniform_gap_median": float(np.median(rows["gap_uniform"])),
        "lag_l1_mean": float(np.mean(rows["l1_lag"])),
        "large_l1_mean": float(np.mean(rows["l1_large"])),
        "batch_large_l1_mean": float(np.mean(rows["l1_batch_large"])),
        "uniform_large_l1_mean": float(np.mean(rows["l1_uniform_large"])),
        "flops_ratio": per_step_flops / ew_step_flops(engine)(args.batch_size),
    }


# ---- timing ----------------------------------------------------------------------------------
def time_steps(
    entries: dict[str, tuple[str, dict[str, Any], str]], taskset, build_model, batch, args
) -> dict[str, float]:
    """Median over interleaved blocks of (method step time / EW step time)."""
    training = TrainingConfig(batch_size=int(batch[0].shape[0]), lr=args.lr)
    steppers = {}
    for label, (name, params, engine_name) in entries.items():
        torch.manual_seed(0)
        method = make_method(name, params, build_model(), taskset, training)
        engine = get_engine(engine_name)(method.model, taskset, Budget("flops", 1e30), batch)
        steppers[label] = (method, engine)

    def block(label: str) -> float:
        method, engine = steppers[label]
        return seconds_per_call(lambda: method.step(batch, engine), args.timing_steps)

    for label in steppers:  # warm-up
        block(label)
    ratios: dict[str, list[float]] = {label: [] for label in steppers}
    for _ in range(args.blocks):
        ew = block("ew")
        for label in steppers:
            ratios[label].append((ew if label == "ew" else block(label)) / ew)
    return {label: statistics.median(values) for label, values in ratios.items()}


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``'weight_step=0.3,num_directions=4'`` -> (label, MarigoldParams overrides).

    Values are read as int, then float, else kept as strings; ``''`` is the defaults.
    """
    params: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = item.partition("=")
        for cast in (int, float):
            try:
                params[key.strip()] = cast(value)
                break
            except ValueError:
                continue
        else:
            params[key.strip()] = value.strip()
    return (text or "defaults"), params


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=["teacher", "multidigits"], default="teacher")
    parser.add_argument("--tasks", type=int, default=10, help="teacher problem only")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--large-batch", type=int, default=2048)
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--timing-steps", type=int, default=10)
    parser.add_argument("--resnet", action="store_true", help="time CelebA's ResNet-18, T = 40")
    parser.add_argument("--skip-tracking", action="store_true")
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        metavar="KEY=VALUE,...",
        help="track this MARIGOLD variant instead of VARIANTS (repeatable; '' is "
        "the defaults), e.g. --variant 'weight_step=0.3,num_directions=4'",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the tracking rows as JSON")
    return parser.parse_args()


def main() -> None:
    args = _parse_args()
    variants = dict(map(parse_variant, args.variant)) if args.variant else VARIANTS
    if args.problem == "teacher":
        taskset, build_model, train = teacher_problem(args.tasks)
    else:
        taskset, build_model, train = multidigits_problem()
    print(
        f"problem {args.problem}, T = {len(taskset)}, batch {args.batch_size}, "
        f"Adam lr {args.lr}, {args.steps} steps, seed {args.seed}, "
        f"threads {torch.get_num_threads()}"
    )
    if not args.skip_tracking:
        _track_variants(variants, taskset, build_model, train, args)
    _time_methods(taskset, build_model, train, args)


def _track_variants(variants: dict, taskset, build_model, train, args: argparse.Namespace) -> None:
    """Print how closely each MARIGOLD variant's weights track MGDA's (one row per variant)."""
    print(
        "\nL1 distance of the applied weights to MGDA's min-norm weights on the same batch;"
        " gap: (F(w) - F*) / F*"
    )
    print(
        f"{'variant':34s} {'L1 mean':>8s} {'median':>8s} {'final':>8s} {'gap med':>8s} "
        f"{'L1 large':>8s} {'FLOPs/EW':>8s}"
    )
    reference_row = None
    rows = {}
    for label, params in variants.items():
        row = rows[label] = track(params, taskset, build_model, train, args)
        reference_row = reference_row or row
        print(
            f"{label:34s} {row['l1_mean']:8.4f} {row['l1_median']:8.4f} "
            f"{row['l1_final']:8.4f} {row['gap_median']:8.2e} {row['large_l1_mean']:8.4f} "
            f"{row['flops_ratio']:8.2f}"
        )
    print(
        f"{'uniform weights (EW)':34s} {reference_row['uniform_l1_mean']:8.4f} "
        f"{'':8s} {'':8s} {reference_row['uniform_gap_median']:8.2e} "
        f"{reference_row['uniform_large_l1_mean']:8.4f} {1.0:8.2f}"
    )
    print(f"{'MGDA weights of the previous step':34s} {reference_row['lag_l1_mean']:8.4f}")
    print(
        f"{'per-batch MGDA weights':34s} {'':8s} {'':8s} {'':8s} {'':8s} "
        f"{reference_row['batch_large_l1_mean']:8.4f}"
    )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "rows": rows}, handle, indent=1)


def _time_methods(taskset, build_model, train, args: argparse.Namespace) -> None:
    """Print each method's step time over EW's, on this problem or CelebA's ResNet-18."""
    timing_problems = [(args.problem, taskset, build_model, train)]
    if args.resnet:
        timing_problems = [("resnet18 celeba", *resnet_problem(args.batch_size))]
    entries = {"ew": ("ew", {}, "loop"), "mgda (batched)": ("mgda", {}, "batched")}
    for label in (
        "default (pairs, q=1, eta=0.3)",
        "pairs, q=2, eta=0.3",
        "exact, pairs, q=1, eta=1",
        "central, pairs, q=1, eta=1, mu=1",
        "exact, pairs, q=1, eta=1, k=4",
    ):
        entries[f"marigold {label}"] = ("marigold", VARIANTS[label], "loop")
    for name, timed_taskset, timed_model, data in timing_problems:
        batch = (data[0][: args.batch_size], data[1][: args.batch_size])
        ratios = time_steps(entries, timed_taskset, timed_model, batch, args)
        print(
            f"\nstep time / EW step time ({name}, T = {len(timed_taskset)}, "
            f"batch {args.batch_size}, "
            f"median of {args.blocks} interleaved blocks of {args.timing_steps} steps)"
        )
        for label, ratio in ratios.items():
            print(f"  {label:44s} {ratio:6.2f}")


if __name__ == "__main__":
    main()
