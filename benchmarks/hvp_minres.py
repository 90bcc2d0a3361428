"""Cost of the Pareto expansion's tangent solve as the model grows, and of each HVP variant.

For encoders of ~1e4 to ~1e7 parameters (an MLP whose width sets the size; or ``--model
resnet18``, the CIFAR-style ResNet-18 of the CelebA setting, 11.2M encoder parameters), with two
heads and a fixed batch, prints side by side, measured in one process:

- ``grad ms``: one gradient of the weighted loss over all parameters (forward + backward);
- per HVP variant (``harness/hvp.py``): product time / gradient time (set-up excluded), and the
  same ratio in FLOPs (FlopCounterMode);
- one tangent solve as ``pareto_expansion`` runs it (per-task Jacobian through the engine, HVP
  set-up, MINRES on the chosen variant): wall ms, ms per 1M parameters (flat when the cost grows
  linearly), MINRES iterations and relative residuals (estimated and true);
- ``scipy/torch``: per-iteration time of ``scipy.sparse.linalg.minres`` on the same products
  (vectors crossing to the host every iteration) over this module's MINRES.

Medians of ``--repeats``. Run: ``python benchmarks/hvp_minres.py`` (CPU: sizes up to ~1e7 take
about a minute; ``--device cuda --model resnet18`` for the GPU setting).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import scipy.sparse.linalg
import torch
from _timing import median_seconds
from mtlbench.datasets._models import MLPEncoder, ResNet18Encoder
from mtlbench.harness.budget import Budget
from mtlbench.harness.costs import count_flops
from mtlbench.harness.gradients import get_engine
from mtlbench.harness.hvp import (
    HVP_VARIANTS,
    build_hvp,
    full_jacobian,
    full_parameters,
    hessian_operator,
)
from mtlbench.harness.model import MultiTaskModel, StackedMLPHeads
from mtlbench.harness.tasks import TaskSet, TaskSpec
from mtlbench.methods._minres import minres
from mtlbench.methods.pareto_expansion import precise_min_norm_weights

INPUT_FEATURES = 64
REPRESENTATION = 64
CLASSES = 10


def mlp_model(target_parameters: float) -> MultiTaskModel:
    """MLP 64 -> w -> w -> 64 with w chosen so the encoder has about ``target_parameters``."""
    # w^2 + (64 + 64 + 2) w + 64 = target
    width = max(8, int((-130 + math.sqrt(130**2 + 4 * target_parameters)) / 2))
    encoder = MLPEncoder(INPUT_FEATURES, (width, width, REPRESENTATION))
    return MultiTaskModel(encoder, StackedMLPHeads(2, REPRESENTATION, CLASSES, hidden=None), 2)


def resnet18_model() -> MultiTaskModel:
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool), average-pooled 512-d output, 2 heads."""
    # side 32 gives a 1×1 pooling grid: global average pooling, 512 features at any input side
    return MultiTaskModel(ResNet18Encoder(32), StackedMLPHeads(2, 512, 2, hidden=None), 2)


def measure(model: MultiTaskModel, batch, args, device: torch.device) -> dict[str, object]:
    classes = CLASSES if args.model == "mlp" else 2
    taskset = TaskSet([TaskSpec(f"task{t}", "classification", classes) for t in range(2)])
    model.eval()  # as the expansion runs it: no dropout draws, fixed BatchNorm statistics
    params = full_parameters(model)
    count = sum(p.numel() for p in params)
    weights = torch.tensor([0.4, 0.6], device=device)

    def gradient() -> None:
        losses = taskset.losses(model(batch[0]), batch[1])
        torch.autograd.grad((weights * losses).sum(), params)

    row: dict[str, object] = {"parameters": count}
    grad_seconds = median_seconds(gradient, args.repeats, device)
    grad_flops = count_flops(gradient)
    row["grad_ms"] = 1e3 * grad_seconds
    vector = torch.randn(count, device=device)
    product_seconds = {}
    for variant in args.variants:
        apply = build_hvp(model, taskset, batch, weights, variant)

        def product(apply=apply) -> None:
            apply(vector)

        product_seconds[variant] = median_seconds(product, args.repeats, device)
        row[f"{variant}_time_ratio"] = product_seconds[variant] / grad_seconds
        row[f"{variant}_flop_ratio"] = count_flops(product) / grad_flops
        del apply, product
    chosen = min(product_seconds, key=product_seconds.get)  # type: ignore[arg-type]  # fastest
    row["chosen"] = chosen

    engine = get_engine("loop")(model, taskset, Budget("flops", 1e30), batch)
    reports = []

    def tangent_solve() -> None:
        _, jacobian = full_jacobian(engine, batch)
        alpha = precise_min_norm_weights(jacobian @ jacobian.T).to(jacobian)
        operator = hessian_operator(engine, batch, alpha, chosen)  # type: ignore[arg-type]
        result = minres(
            operator,
            jacobian[0],
            shift=args.damping,
            tolerance=args.tolerance,
            max_iterations=args.iterations,
            check_every=args.check_every,
        )
        reports.append(result)

    solve_seconds = median_seconds(tangent_solve, args.repeats, device)
    last = reports[-1]
    row.update(
        solve_ms=1e3 * solve_seconds,
        solve_ms_per_million=1e3 * solve_seconds / (count / 1e6),
        iterations=last.iterations,
        estimated_residual=last.estimated_residual,
        true_residual=last.true_residual,
    )
    if args.compare_scipy:
        row["scipy_over_torch"] = _scipy_ratio(model, taskset, batch, weights, chosen, args, device)
    return row


def _scipy_ratio(model, taskset, batch, weights, variant, args, device) -> float:
    """Per-iteration time of scipy's host MINRES over ours, same products, same iterations."""
    apply = build_hvp(model, taskset, batch, weights, variant)
    count = sum(p.numel() for p in full_parameters(model))
    rhs = torch.randn(count, device=device)
    iterations = min(args.iterations, 10)

    def on_host(vector: np.ndarray) -> np.ndarray:
        product = apply(torch.from_numpy(np.asarray(vector, dtype=np.float32)).to(device))
        return (
            (
                product
                + args.damping * torch.from_numpy(np.asarray(vector, dtype=np.float32)).to(device)
            )
            .cpu()
            .numpy()
        )

    operator = scipy.sparse.linalg.LinearOperator((count, count), matvec=on_host, dtype=np.float32)

    def with_scipy() -> None:
        scipy.sparse.linalg.minres(operator, rhs.cpu().numpy(), rtol=1e-30, maxiter=iterations)

    def with_torch() -> None:
        minres(
            apply,
            rhs,
            shift=args.damping,
            tolerance=1e-30,
            max_iterations=iterations,
            check_every=args.check_every,
        )

    return median_seconds(with_scipy, args.repeats, device) / median_seconds(
        with_torch, args.repeats, device
    )


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["mlp", "resnet18"], default="mlp")
    parser.add_argument(
        "--sizes",
        type=float,
        nargs="+",
        default=[1e4, 1e5, 1e6, 1e7],
        help="target encoder parameter counts (mlp)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--image-side", type=int, default=32, help="resnet18 input side")
    parser.add_argument("--iterations", type=int, default=10, help="MINRES iterations per solve")
    parser.add_argument("--tolerance", type=float, default=1e-5)
    parser.add_argument("--damping", type=float, default=0.1)
    parser.add_argument("--check-every", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--variants", nargs="+", default=list(HVP_VARIANTS), choices=HVP_VARIANTS)
    parser.add_argument("--no-scipy", dest="compare_scipy", action="store_false")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return parser.parse_args()


def main() -> None:
    args = _parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    rows = []
    builds = (
        [("resnet18", resnet18_model)]
        if args.model == "resnet18"
        else [(f"mlp~{size:.0e}", lambda size=size: mlp_model(size)) for size in args.sizes]
    )
    for name, build in builds:
        model = build().to(device)
        if args.model == "resnet18":
            inputs = torch.randn(
                args.batch_size, 3, args.image_side, args.image_side, device=device
            )
            targets = torch.randint(0, 2, (args.batch_size, 2), device=device).float()
        else:
            inputs = torch.randn(args.batch_size, INPUT_FEATURES, device=device)
            targets = torch.randint(0, CLASSES, (args.batch_size, 2), device=device).float()
        started = time.perf_counter()
        row = measure(model, (inputs, targets), args, device)
        row["model"] = name
        rows.append(row)
        seconds = time.perf_counter() - started
        print(
            f"  measured {name} ({row['parameters']:,} parameters) in {seconds:.1f} s", flush=True
        )
        del model
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"\ndevice {device} ({device_name}, {torch.get_num_threads()} threads), batch "
        f"{args.batch_size}, MINRES {args.iterations} iterations max, tolerance {args.tolerance}, "
        f"damping {args.damping}, medians of {args.repeats}"
    )
    _print_table(rows, args)


def _print_table(rows: list[dict], args: argparse.Namespace) -> None:
    """One Markdown row per measured model."""
    ratio_headers = [f"{v} t/f" for v in args.variants]
    headers = [
        "model",
        "params",
        "grad ms",
        *ratio_headers,
        "fastest",
        "solve ms",
        "ms/1M par",
        "iters",
        "est res",
        "true res",
    ] + (["scipy/torch"] if args.compare_scipy else [])
    print(" | ".join(headers))
    print(" | ".join("---" for _ in headers))
    for row in rows:
        cells = [row["model"], f"{row['parameters']:,}", f"{row['grad_ms']:.2f}"]
        cells += [
            f"{row[f'{v}_time_ratio']:.2f} / {row[f'{v}_flop_ratio']:.2f}" for v in args.variants
        ]
        cells += [
            str(row["chosen"]),
            f"{row['solve_ms']:.1f}",
            f"{row['solve_ms_per_million']:.1f}",
            str(row["iterations"]),
            f"{row['estimated_residual']:.2e}",
            f"{row['true_residual']:.2e}",
        ]
        if args.compare_scipy:
            cells.append(f"{row['scipy_over_torch']:.2f}")
        print(" | ".join(cells))
    print("\nt/f: HVP product time / gradient time, and the same ratio in FLOPs (FlopCounterMode).")


if __name__ == "__main__":
    main()
