"""Two revisions of the package side by side in one run: the same measurements of each,
taken in alternation so that a slow spell of the machine hits both alike.

    python -m benchmarks.compare_revisions OLD_REV [--rounds 3] [--steps 200]

``OLD_REV`` (a commit, tag or branch) is exported with ``git archive`` into a temporary
folder; the working tree is the new side. Each round runs one fresh process per side
(``PYTHONPATH`` picks the tree) measuring, with the public API only, so any revision
can be compared:

* ``mc.train`` on the paper config (S=10, T=20, heads (1, 1), batch 1024, SGD lr 1,
  fresh samples; evaluations excluded), steps/s;
* ``mc.train`` of the reduced model on the same task, steps/s;
* the Figure 9 step: 20 random forests (S=3, T=20) trained as one ensemble at batch
  1024 per member, sweep-steps/s;
* ``TrainConfig.paper("chain")``'s first 1000 steps with fresh data and with pools,
  steps/s over the wall time of the whole call (drawing, evaluations and all).

Printed: the median of the rounds per row and side, and new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, sys, time
import torch
import mechcausal as mc
steps = int(sys.argv[1])
task = mc.InContextTree(mc.CausalGraph.chain(20), vocab_size=10, alpha=0.1)

def config(n, batch=1024):
    return mc.TrainConfig(steps=n, batch_size=batch, optimizer="sgd", lr=1.0, eval_every=n,
                          eval_samples=256, progress=False)

def rate(model, task, n):
    mc.train(model, task, config(5))  # warm-up: first-call initialisation
    return mc.train(model, task, config(n)).steps_per_second

rows = {
    "mc.train (paper config)": rate(mc.DisentangledTransformer.for_task(
        task, init="normal", init_scale=0.1), task, steps),
    "mc.train, reduced model": rate(mc.ReducedModel.for_task(task, beta0=1.0), task, steps),
}
forests = [mc.InContextTree(mc.CausalGraph.random_forest(20, seed=s), 3, 0.1) for s in range(20)]
ensemble = mc.Ensemble([mc.DisentangledTransformer.for_task(t) for t in forests])
sweep = max(5, steps // 10)
if hasattr(mc, "Callback"):  # one loop for models and ensembles
    rows["Figure 9 step (20-member ensemble)"] = mc.train(ensemble, forests, config(sweep))[0].steps_per_second
else:
    rows["Figure 9 step (20-member ensemble)"] = mc.train_ensemble(ensemble, forests, config(sweep))[0].steps_per_second
# the paper chain preset's first 1000 steps, wall clock from the call (pool drawing and
# evaluations included), as steps/s over that wall
for data in ("fresh", "pool"):
    paper = mc.TrainConfig.paper("chain", steps=1000, eval_every=1000, eval_samples=2048,
                                 data=data, progress=False)
    model = mc.DisentangledTransformer.for_task(task)
    started = time.perf_counter()
    mc.train(model, task, paper)
    rows[f"paper chain preset, 1000 steps, {data} (wall)"] = 1000 / (time.perf_counter() - started)
print(json.dumps(rows))
"""


def measure(tree: Path, steps: int) -> dict[str, float]:
    """One fresh process measuring the package in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(steps)], env=env, cwd=tree,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", help="the revision to compare the working tree with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        archive = subprocess.run(["git", "archive", args.old], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
        sides = {"old": Path(folder), "new": ROOT}
        rates: dict[str, dict[str, list[float]]] = {side: {} for side in sides}
        for round_ in range(args.rounds):
            for side, tree in sides.items():
                for row, value in measure(tree, args.steps).items():
                    rates[side].setdefault(row, []).append(value)
            print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
    print(f"old = {args.old}, new = working tree; median of {args.rounds} alternating rounds")
    print(f"{'':48s}{'old':>9s}{'new':>9s}{'new/old':>9s}   rounds old | new")
    for row in rates["old"]:
        old, new = (statistics.median(rates[side][row]) for side in ("old", "new"))
        rounds = " ".join(f"{v:.1f}" for v in rates["old"][row]) + " | " + " ".join(
            f"{v:.1f}" for v in rates["new"][row])
        print(f"{row:48s}{old:9.1f}{new:9.1f}{new / old:9.2f}   {rounds}")


if __name__ == "__main__":
    main()
