"""A 60-member study in this process vs on a local Ray, side by side in one run.

    python -m benchmarks.bench_sweep [--steps 600] [--workers 2]

The study: 3 graph families (chain, icl, random) x 20 seeds at S=5, T=16, the quick
recipe of each member's family replaced by one shared recipe (``TrainConfig.quick
("random")``, ``--steps`` steps), so all 60 members have one shape. In process they
train as one ensemble; on Ray as ``--workers`` ensembles of 60 / workers members, one
Ray task each, on a local Ray started with ``--workers`` CPUs (its start-up counted).
Printed: wall time, members per minute, and the largest difference between the two
backends' rows (zero: a member's numbers do not depend on its group).
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time

import numpy as np
import torch

import mechcausal as mc

GRID = {"graph": ["chain", "icl", "random"], "seed": list(range(20)), "vocab_size": [5],
        "seq_len": [16]}
METRICS = ["test_loss", "gap", "parent_attention", "parent_accuracy", "f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import ray

    config = mc.TrainConfig.quick("random", steps=args.steps, progress=False)
    members = 60
    print(f"{platform.machine()}, {torch.get_num_threads()} torch threads: {members} "
          f"members, {args.steps} steps of {config.batch_size}")
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        rows["in process"] = mc.sweep(GRID, config, out=f"{folder}/local", progress=False)
        local = time.perf_counter() - started
        started = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        rows["ray"] = mc.sweep(GRID, config, out=f"{folder}/ray", backend="ray",
                               progress=False, max_group=members // args.workers)
        on_ray = time.perf_counter() - started
        ray.shutdown()
    for name, seconds in (("in process (one ensemble)", local),
                          (f"local Ray ({args.workers} workers, start-up included)", on_ray)):
        print(f"{name:<45} {seconds:8.1f} s  {members / seconds * 60:6.1f} members/min")
    difference = np.abs(rows["ray"][METRICS].to_numpy(dtype=float)
                        - rows["in process"][METRICS].to_numpy(dtype=float)).max()
    print(f"largest difference between the backends' rows: {difference:.2e}")
    table = rows["in process"].pivot(index="seed", columns="graph", values="parent_attention")
    print("parent attention, seed x family:")
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
