"""Projection, not a measurement: exact MGDA's step on K GPUs at T = 40, ResNet-18, batch 256.

Prints the table of ``docs/sharding-projection.md``: step time, time / EW and parallel efficiency
for K = 2, 4, 8 GPUs over each link, with and without overlap of the exchange with the VJPs, and
the smallest K whose step falls under 6× EW.

Inputs:

- Measured on one H100 (``benchmarks/measured/h100-2026-11-23/step_time_after_host_solver.txt``,
  ResNet-18, 64×64, batch 256, fp32, T = 40): EW step 52.15 ms, MGDA with the ``loop`` engine
  (one forward, T separate VJPs) 1427.53 ms. The forward F and one VJP V are solved from those
  two steps, taking EW = F + V and MGDA = F + T·V (the heads, the solve, Σ aₜgₜ and the SGD update
  are folded into F; they are small at this size): V = (MGDA − EW) / (T − 1) = 35.3 ms,
  F = EW − V = 16.9 ms. Check: V / F = 2.09, against 2.0 from FLOPs (a backward is two forwards).
- The exchange's bytes per rank, from ``expected_collective_bytes`` (``cluster/collective.py``),
  float32, P = 11,168,832 shared parameters, T and the columns split evenly over the K GPUs.
- Links (per GPU, per direction), from the vendors' specifications (sources in the docs page):
  NVLink 4 on H100 SXM 450 GB/s (900 GB/s bidirectional), PCIe Gen5 x16 63 GB/s (32 GT/s ×
  16 lanes × 128/130), InfiniBand EDR / HDR / NDR 100 / 200 / 400 Gb/s (12.5 / 25 / 50 GB/s),
  one port per GPU. HBM3 3.35 TB/s (H100 SXM) for the partial Gram and Σ aₜgₜ, which read the
  (T, P/K) column shard once each and are memory-bound.

Model of one step on K GPUs (W = K workers, the driver being rank 0 on GPU 0)::

    compute   = F + ceil(T/K)·V            every GPU runs (or replays) the forward; VJPs split
    reshard   = T_r·(P − P_r)·4 / link     all-to-all: each GPU sends and receives this much
    gram      = 2·T·(P/K)·4 / HBM + 2(K−1)/K·T²·4 / link     partial Gram + ring all-reduce
    direction = T·(P/K)·4 / HBM + (K−1)/K·P·4 / link         slice product + gather on rank 0
    step      = compute + reshard + gram + solve + weights + direction + 4·latency   (no overlap)
    step      = F + max(ceil(T/K)·V, reshard) + the rest       (perfect overlap: rows are sent
                                                                 while the next VJPs run)

solve: the min-norm solve (``--solve-ms``, 1 ms: measured 0.7 ms at T = 16 on the CPU runs of
``ray_sharding.py``; not measured on the GPU at T = 40); latency: per collective (``--latency-us``,
20 µs, an assumption of the order NCCL shows for small messages; four collectives per step).
Parallel efficiency = t(1) / (K · t(K)) with t(1) = F + T·V (the measured ``loop`` step).

Run: ``python benchmarks/sharding_projection.py`` (instant; no GPU needed).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass

from mtlbench.cluster.collective import ShardLayout, expected_collective_bytes

# measured, benchmarks/measured/h100-2026-11-23/step_time_after_host_solver.txt (T = 40, fp32)
EW_MS = 52.15
MGDA_LOOP_MS = 1427.53
TASKS = 40
SHARED_PARAMETERS = 11_168_832  # ResNet18Encoder(64, width 64), datasets/_models.py
FLOAT_BYTES = 4
HBM_GB_S = 3350.0  # H100 SXM HBM3
TARGET_TIMES_EW = 6.0  # the issue's bar for exact MGDA
LINKS_GB_S = {  # per GPU, per direction
    "NVLink 4 (H100 SXM)": 450.0,
    "PCIe Gen5 x16": 32 * 16 * 128 / 130 / 8,
    "InfiniBand NDR 400 Gb/s": 400 / 8,
    "InfiniBand HDR 200 Gb/s": 200 / 8,
    "InfiniBand EDR 100 Gb/s": 100 / 8,
}


@dataclass(frozen=True)
class Measured:
    """The single-GPU inputs, milliseconds: F (forward, heads, update), V (one task's VJP)."""

    forward_ms: float
    vjp_ms: float

    @classmethod
    def from_steps(cls, ew_ms: float, mgda_ms: float, tasks: int) -> Measured:
        """Solve EW = F + V and MGDA = F + T·V for F and V."""
        vjp = (mgda_ms - ew_ms) / (tasks - 1)
        return cls(ew_ms - vjp, vjp)


@dataclass(frozen=True)
class StepParts:
    """One step on K GPUs, milliseconds, by part (see the module notes)."""

    compute: float
    vjps: float
    reshard: float
    gram: float
    solve: float
    weights: float
    direction: float
    latency: float

    def total(self, overlap: bool) -> float:
        rest = self.gram + self.solve + self.weights + self.direction + self.latency
        if overlap:  # the reshard hides behind the VJPs, as far as it can
            forward = self.compute - self.vjps
            return forward + max(self.vjps, self.reshard) + rest
        return self.compute + self.reshard + rest


def step_parts(
    measured: Measured, gpus: int, link_gb_s: float, solve_ms: float, latency_us: float
) -> StepParts:
    """The parts of one step at K = ``gpus`` over a link of ``link_gb_s`` GB/s per direction."""
    layout = ShardLayout.even(TASKS, SHARED_PARAMETERS, gpus)
    sent = expected_collective_bytes(
        TASKS, SHARED_PARAMETERS, layout.task_counts, layout.column_bounds, FLOAT_BYTES
    )
    link = link_gb_s * 1e6  # bytes per millisecond
    hbm = HBM_GB_S * 1e6
    shard_bytes = TASKS * max(layout.column_counts()) * FLOAT_BYTES  # the (T, P/K) column shard
    ring = 2 * (gpus - 1) / gpus  # a ring all-reduce's wire bytes per rank, per tensor byte
    vjps = math.ceil(TASKS / gpus) * measured.vjp_ms
    return StepParts(
        compute=measured.forward_ms + vjps,
        vjps=vjps,
        reshard=max(rank["reshard"] for rank in sent) / link,
        gram=2 * shard_bytes / hbm + ring * sent[0]["gram"] / link,  # read twice: A and Aᵀ
        solve=solve_ms,
        weights=sent[0]["weights"] / link,
        direction=shard_bytes / hbm + sum(rank["direction"] for rank in sent) / link,
        latency=4 * latency_us / 1e3 if gpus > 1 else 0.0,
    )


def smallest_k_under_target(
    measured: Measured, link_gb_s: float, solve_ms: float, latency_us: float, overlap: bool
) -> int | None:
    """The fewest GPUs (up to T) whose projected step is under 6× EW, or None."""
    for gpus in range(1, TASKS + 1):
        parts = step_parts(measured, gpus, link_gb_s, solve_ms, latency_us)
        if parts.total(overlap) < TARGET_TIMES_EW * EW_MS:
            return gpus
    return None


def print_table(measured: Measured, solve_ms: float, latency_us: float) -> None:
    """The projection table: per link and K, step ms, × EW and efficiency, both overlaps."""
    single = measured.forward_ms + TASKS * measured.vjp_ms
    print(
        f"PROJECTION (not a measurement): exact MGDA, ResNet-18, batch 256, 64×64, fp32, "
        f"T = {TASKS}, P = {SHARED_PARAMETERS:,}\n"
        f"inputs measured on one H100: EW {EW_MS} ms, MGDA (loop) {MGDA_LOOP_MS} ms → "
        f"F = {measured.forward_ms:.1f} ms, V = {measured.vjp_ms:.1f} ms per task; "
        f"solve {solve_ms} ms, {latency_us} µs per collective; 6× EW = "
        f"{TARGET_TIMES_EW * EW_MS:.0f} ms\n"
        f"K = 1: {single:.0f} ms = {single / EW_MS:.1f}× EW\n"
    )
    header = f"{'link':<26}{'K':>3}{'reshard ms':>11}{'gather ms':>10}"
    header += f"{'no overlap ms':>14}{'× EW':>6}{'eff':>6}{'overlap ms':>11}{'× EW':>6}{'eff':>6}"
    print(header)
    for link_name, link_gb_s in LINKS_GB_S.items():
        for gpus in (2, 4, 8):
            parts = step_parts(measured, gpus, link_gb_s, solve_ms, latency_us)
            cells = f"{link_name:<26}{gpus:>3}{parts.reshard:11.2f}{parts.direction:10.2f}"
            for overlap in (False, True):
                total = parts.total(overlap)
                width = 14 if not overlap else 11
                cells += f"{total:{width}.1f}{total / EW_MS:6.2f}{single / (gpus * total):6.2f}"
            print(cells)
    print(f"\nsmallest K with a step under {TARGET_TIMES_EW:g}× EW:")
    for link_name, link_gb_s in LINKS_GB_S.items():
        answers = [
            smallest_k_under_target(measured, link_gb_s, solve_ms, latency_us, overlap)
            for overlap in (False, True)
        ]
        print(f"  {link_name:<26} no overlap: K = {answers[0]}, perfect overlap: K = {answers[1]}")
    free = smallest_k_under_target(measured, math.inf, 0.0, 0.0, overlap=False)
    print(f"  {'a free exchange':<26} K = {free} (compute alone: F + ceil(T/K)·V)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solve-ms", type=float, default=1.0, help="min-norm solve, ms")
    parser.add_argument("--latency-us", type=float, default=20.0, help="per collective, µs")
    args = parser.parse_args()
    measured = Measured.from_steps(EW_MS, MGDA_LOOP_MS, TASKS)
    print_table(measured, args.solve_ms, args.latency_us)


if __name__ == "__main__":
    main()
