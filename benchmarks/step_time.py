"""Step time of gradient-balancing methods relative to EW, for T in {2, 3, 40}, in one run.

Every method trains its own copy of the same initial model on the same batch; for each T the
methods are timed in interleaved blocks of steps, and the printed ratio is the median over
blocks of (method's step time / EW's step time in the same block). FLOPs per step (the budget's
tally) are printed beside it. Rows:
- ``ew``: the harness's EW step (the baseline); ``ew_bare``: the same step in plain PyTorch
  (``loss.backward()``), to show the harness adds nothing;
- ``mgda`` (its default ``loop`` engine: T backward passes), ``mgda@batched`` (one vmapped
  product), ``mgda_ub``;
  ``marigold`` and ``pml`` when registered; ``name@engine`` picks another engine;
- ``torchjd_mgda``: TorchJD's ``mtl_backward`` + ``jac_to_grad`` with its ``MGDA`` aggregator,
  when torchjd is installed (the ``bench`` extra).

CPU (default): LeNet encoder (1×28×28 → 50) + T binary heads Linear(50, 2), batch 128, one
thread (stable figures on a shared machine). ``--device cuda``: CIFAR-style ResNet-18 (≈11.2M
parameters) on 3×64×64, batch 256, T heads Linear(2048, 2).

``--zoo``: every registered weighting (Gram and loss weightings, FAMO) beside ``ew`` and
``mgda``, with each row's time over its family's reference in the same blocks (a Gram weighting
over MGDA's step, a loss weighting over EW's) and the verdict against the 1.05 target: what a
weighting adds to the engine's work is its T×T solver, which must stay a few percent of a step.

Run: ``python benchmarks/step_time.py`` (or ``--device cuda``; ``--tasks 2 3 40``; ``--zoo``).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
from collections.abc import Callable

import torch
from _timing import seconds_per_call
from mtlbench.datasets._models import LeNetEncoder, ResNet18Encoder
from mtlbench.harness.budget import Budget
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.method import TrainingConfig
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from mtlbench.harness.registry import METHODS
from mtlbench.harness.tasks import TaskSet, TaskSpec

DEFAULT_METHODS = [
    "ew",
    "ew_bare",
    "mgda",
    "mgda@batched",
    "mgda_ub",
    "marigold",
    "pml",
    "torchjd_mgda",
]
Step = Callable[[], None]


def build_model(kind: str, side: int, tasks: int) -> MultiTaskModel:
    encoder = LeNetEncoder(side) if kind == "lenet" else ResNet18Encoder(side)
    channels = 1 if kind == "lenet" else 3
    with torch.no_grad():
        width = encoder(torch.zeros(2, channels, side, side)).shape[1]
    return MultiTaskModel(encoder, StackedMLPHeads(tasks, width, 2, hidden=None), tasks)


def harness_step(
    name: str, model, taskset, batch, training, chunk_size
) -> tuple[Step, Budget] | None:
    method_name, _, engine_name = name.partition("@")
    if method_name not in METHODS.names():
        return None
    method_cls = METHODS.get(method_name)
    params = method_cls.expand(method_cls.Params(), taskset)[0]
    method = method_cls(params, model, taskset, training)
    engine_name = engine_name or method_cls.default_engine
    options = (
        {"chunk_size": chunk_size}
        if chunk_size and engine_name in ("batched", "representation")
        else {}
    )
    budget = Budget("flops", 1e30)
    engine = get_engine(engine_name)(method.model, taskset, budget, batch, **options)
    method.bind(engine, steps_per_epoch=10)
    return (lambda: method.step(batch, engine)), budget


def bare_ew_step(model, taskset, batch, training) -> Step:
    optimizer = torch.optim.Adam(model.parameters(), lr=training.lr)
    weights = torch.full((len(taskset),), 1.0 / len(taskset), device=batch[0].device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        (weights * taskset.losses(model(batch[0]), batch[1])).sum().backward()
        optimizer.step()

    return step


def torchjd_step(model, taskset, batch, training) -> Step | None:
    try:
        from torchjd.aggregation import MGDA
        from torchjd.autojac import jac_to_grad, mtl_backward
    except ImportError:
        return None
    optimizer = torch.optim.Adam(model.parameters(), lr=training.lr)
    aggregator = MGDA()
    shared = model.shared_parameters()

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        features = model.encoder(batch[0])
        losses = taskset.losses(model.heads(features), batch[1])
        # the stacked heads share one graph across tasks: keep it for every task's pass
        mtl_backward(list(losses), features=features, shared_params=shared, retain_graph=True)
        jac_to_grad(shared, aggregator)
        optimizer.step()

    return step


def zoo_methods() -> list[str]:
    """``ew``, ``mgda``, then every registered Gram weighting, loss weighting and FAMO."""
    from mtlbench.harness.weighting import GramWeighting, LossWeighting

    names = ["ew", "mgda"]
    for name, method_cls in METHODS.items():
        family = issubclass(method_cls, (GramWeighting, LossWeighting)) or name == "famo"
        if family and name not in names and name not in ("single_task", "mgda_ub"):
            names.append(name)
    return names


def reference_of(name: str) -> str:
    """The row a method's time is held against with ``--zoo``: MGDA for Gram weightings (same
    engine work, T encoder backwards), EW for the rest (one backward)."""
    from mtlbench.harness.weighting import GramWeighting

    method_cls = METHODS.get(name.partition("@")[0])
    return "mgda" if issubclass(method_cls, GramWeighting) else "ew"


def run_tasks(args, tasks: int, device: torch.device) -> list[tuple[str, float, float, float]]:
    torch.manual_seed(0)
    channels = 1 if args.model == "lenet" else 3
    initial = build_model(args.model, args.side, tasks).to(device)
    taskset = TaskSet([TaskSpec(f"t{t}", "classification", 2) for t in range(tasks)])
    inputs = torch.randn(args.batch_size, channels, args.side, args.side, device=device)
    targets = torch.randint(0, 2, (args.batch_size, tasks), device=device).float()
    batch = (inputs, targets)
    training = TrainingConfig(batch_size=args.batch_size, lr=1e-4)
    steps: dict[str, tuple[Step, Budget | None]] = {}
    for name in args.methods:
        model = copy.deepcopy(initial)
        if name == "ew_bare":
            steps[name] = (bare_ew_step(model, taskset, batch, training), None)
        elif name == "torchjd_mgda":
            step = torchjd_step(model, taskset, batch, training)
            if step is not None:
                steps[name] = (step, None)
        else:
            made = harness_step(name, model, taskset, batch, training, args.chunk_size)
            if made is not None:
                steps[name] = made
    missing = [name for name in args.methods if name not in steps]
    if missing:
        print(f"  (skipped, not registered or not installed: {', '.join(missing)})")
    flops_per_step: dict[str, float] = {}
    for name, (step, budget) in list(steps.items()):  # warm-up; FLOPs per step from the tally
        spent = budget.spent_flops if budget else 0.0
        try:
            for _ in range(args.warmup):
                step()
        except Exception as error:  # one broken method must not hide the others
            print(f"  {name}: failed ({type(error).__name__}: {str(error).splitlines()[0]})")
            del steps[name]
            continue
        if budget:
            flops_per_step[name] = (budget.spent_flops - spent) / args.warmup
    times: dict[str, list[float]] = {name: [] for name in steps}
    ratios: dict[str, list[float]] = {name: [] for name in steps}
    family_ratios: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.blocks):
        block = {
            name: seconds_per_call(step, args.steps, device) for name, (step, _) in steps.items()
        }
        for name, seconds in block.items():
            times[name].append(seconds)
            ratios[name].append(seconds / block["ew"])
            if args.zoo and name in METHODS.names() and reference_of(name) in block:
                family_ratios[name].append(seconds / block[reference_of(name)])
    if args.zoo:
        # FLOPs ratio: what the method's algorithm itself adds in passes (FAMO's second forward);
        # time per FLOP isolates what the weighting's own solver adds on top of its passes
        print(f"  {'method':<16}{'over':>6}{'time ratio':>12}{'FLOPs ratio':>13}"
              f"{'per FLOP':>10}{'target':>8}  verdict")  # fmt: skip
        for name, values in family_ratios.items():
            if values and name not in ("ew", "mgda"):
                reference = reference_of(name)
                ratio = statistics.median(values)
                flops = flops_per_step.get(name, math.nan) / flops_per_step[reference]
                verdict = "meets" if ratio <= 1.05 else "MISSES"
                print(f"  {name:<16}{reference:>6}{ratio:12.3f}{flops:13.2f}"
                      f"{ratio / flops:10.3f}{1.05:8.2f}  {verdict}")  # fmt: skip
    ew_flops = flops_per_step.get("ew", float("nan"))
    return [
        (
            name,
            statistics.median(times[name]),
            statistics.median(ratios[name]),
            flops_per_step.get(name, float("nan")) / ew_flops,
        )
        for name in steps
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 3, 40])
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument(
        "--zoo", action="store_true", help="every weighting, each over its family's reference"
    )
    parser.add_argument("--model", choices=["lenet", "resnet18"], default=None)
    parser.add_argument("--side", type=int, default=None, help="input side (28 LeNet, 64 ResNet)")
    parser.add_argument("--batch-size", type=int, default=None, help="128 on CPU, 256 on CUDA")
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed block")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (torch)")
    parser.add_argument("--chunk-size", type=int, default=None, help="tasks per batched VJP")
    parser.add_argument(
        "--tf32", action="store_true", help="CUDA: TensorFloat-32 matmuls and convolutions"
    )
    args = parser.parse_args()
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    args.model = args.model or ("resnet18" if cuda else "lenet")
    args.side = args.side or (64 if args.model == "resnet18" else 28)
    args.batch_size = args.batch_size or (256 if cuda else 128)
    args.methods = args.methods or (zoo_methods() if args.zoo else DEFAULT_METHODS)
    if "ew" not in args.methods:
        args.methods = ["ew", *args.methods]
    if not cuda:
        torch.set_num_threads(args.threads)
    where = (
        torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} thread(s)"
    )
    print(
        f"{args.model} encoder, {args.side}×{args.side} inputs, batch {args.batch_size}, "
        f"binary heads; {where}{'; TF32' if args.tf32 else ''}; chunk {args.chunk_size or 'all'}; "
        f"torch {torch.__version__}; median of {args.blocks} blocks × {args.steps} steps"
    )
    for tasks in args.tasks:
        print(f"\nT = {tasks}")
        print(f"  {'method':<16}{'step ms':>10}{'time / EW':>11}{'FLOPs / EW':>12}")
        for name, seconds, ratio, flops_ratio in run_tasks(args, tasks, device):
            flops = f"{flops_ratio:12.2f}" if not math.isnan(flops_ratio) else f"{'-':>12}"
            print(f"  {name:<16}{1e3 * seconds:10.2f}{ratio:11.2f}{flops}")


if __name__ == "__main__":
    main()
