"""Training speed and memory, measured side by side in one run.

    python -m benchmarks.bench_train [--steps 200] [--rounds 3] [--device cpu] [--json out.json]

Rows (paper config: S=10, T=20, batch 1024, SGD lr 1, fresh samples every step; each
row the median of ``--rounds`` measurements, taken in turn with the other rows):
* ``reference (eager, dense)``: the same disentangled model and loss written the
  straightforward way (dense one-hot inputs, every layer at every position);
* ``mc.train``: the library's loop with its defaults (fast path, batches drawn ahead
  in a background thread, four per sampler call);
* ``mc.train, no prefetch``: the same loop drawing each batch in turn;
* ``fast step, fixed batch``: one training step on one fixed batch (no sampling);
* ``sampling only``: ``task.sample`` of one batch alone;
* ``mc.train, reduced model``: the reduced model of the theory.
Then the quick chain preset from a cold start (time to parent attention 0.95), and the
Figure 9 sweep (20 random forests, S=3, T=20, batch 1024 per graph): 20 ``mc.train``
runs vs one ``mc.train`` run of an ``mc.Ensemble``; the Figure 9 step at the quick
recipe's batch before and today, with each recipe's training time; and the paper chain
preset's first 1000 steps, fresh data vs pools. Figures are printed, never asserted.
``benchmarks/compare_revisions.py`` sets two commits' rows side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from dataclasses import replace

import torch

import mechcausal as mc
from mechcausal.training.allocator import keep_freed_memory
from mechcausal.training.loop import loss_fn, make_optimizer


def peak_rss_mb() -> float:
    """Peak resident memory of this process."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_logits(model: mc.DisentangledTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """CatFormer forward written plainly: one-hot stream, dense attention everywhere."""
    S, n_ctx = model.cfg.d_vocab, model.cfg.n_ctx
    B, L = tokens.shape
    h = torch.cat([torch.nn.functional.one_hot(tokens, S).float(),
                   torch.eye(n_ctx)[:L].expand(B, L, n_ctx)], dim=-1)
    mask = torch.ones(L, L, dtype=torch.bool).tril()
    for block in model.blocks:
        scores = torch.einsum("bqd,hde,bke->bhqk", h, block.attn.A, h)
        pattern = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
        heads = torch.einsum("bhqk,bkd->bqhd", pattern, h)
        h = torch.cat([h, heads.flatten(2)], dim=-1)
    return h[:, -1] @ model.W_U


def time_steps(step, steps: int, device: torch.device) -> float:
    """Steps per second of ``step()`` after a short warm-up."""
    for _ in range(5):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def train_rate(model: torch.nn.Module, task: mc.InContextTask, steps: int,
               device: torch.device, batch: int, **overrides) -> float:
    """Steps/s of ``mc.train`` itself (paper SGD recipe, fresh samples, evaluations
    excluded from the clock) after a short warm-up run."""
    config = mc.TrainConfig(steps=steps, batch_size=batch, optimizer="sgd", lr=1.0,
                            eval_every=steps, eval_samples=256, progress=False,
                            device=str(device), **overrides)
    mc.train(model, task, mc.TrainConfig(**{**config.to_dict(), "steps": 5, "eval_every": 5}))
    return mc.train(model, task, config).steps_per_second


def bench_paper_config(steps: int, device: torch.device, batch: int = 1024,
                       rounds: int = 3) -> list[dict]:
    """Each row's median over ``rounds`` interleaved measurements."""
    task = mc.InContextTree(mc.CausalGraph.chain(20), vocab_size=10, alpha=0.1)
    gen = torch.Generator(device=device).manual_seed(0)

    def disentangled() -> mc.DisentangledTransformer:
        return mc.DisentangledTransformer.for_task(task, init="normal", init_scale=0.1).to(device)

    model = disentangled()
    opt = make_optimizer(list(model.parameters()), mc.TrainConfig(optimizer="sgd", lr=1.0))
    fixed = task.sample(batch, generator=gen, device=device)

    def reference_step() -> None:
        b = task.sample(batch, generator=gen, device=device)
        loss = -(b.target * torch.log_softmax(reference_logits(model, b.tokens), -1)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def fixed_batch_step() -> None:
        loss = loss_fn(model, fixed)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    rows = {
        "reference (eager, dense)": lambda: time_steps(reference_step, steps, device),
        "mc.train": lambda: train_rate(disentangled(), task, steps, device, batch),
        "mc.train, no prefetch": lambda: train_rate(disentangled(), task, steps, device, batch,
                                                    prefetch=False),
        "fast step, fixed batch": lambda: time_steps(fixed_batch_step, steps, device),
        "sampling only": lambda: time_steps(
            lambda: task.sample(batch, generator=gen, device=device), steps, device),
        "mc.train, reduced model": lambda: train_rate(
            mc.ReducedModel.for_task(task, beta0=1.0), task, steps, device, batch),
    }
    # rounds interleave the rows, so a slow spell of a shared machine hits all of them
    rates: dict[str, list[float]] = {name: [] for name in rows}
    for _ in range(rounds):
        for name, measure in rows.items():
            rates[name].append(measure())
    return [{"name": name, "steps_per_s": statistics.median(r), "samples_per_s":
             statistics.median(r) * batch, "rounds": r} for name, r in rates.items()]


def bench_figure9(steps: int, device: torch.device, batch: int = 1024,
                  n_graphs: int = 20) -> dict:
    """Sweep steps/s (every graph advanced one step): 20 ``mc.train`` runs one after
    the other vs one ``mc.train`` run of a 20-member ``mc.Ensemble``."""
    tasks = [mc.InContextTree(mc.CausalGraph.random_forest(20, seed=s), 3, 0.1)
             for s in range(n_graphs)]
    sweep_steps = max(5, steps // 10)
    config = mc.TrainConfig(steps=sweep_steps, batch_size=batch, optimizer="sgd", lr=1.0,
                            eval_every=sweep_steps, eval_samples=256, progress=False,
                            device=str(device))
    seconds_per_sweep_step = sum(
        1.0 / mc.train(mc.DisentangledTransformer.for_task(t), t, config).steps_per_second
        for t in tasks)
    ensemble = mc.Ensemble([mc.DisentangledTransformer.for_task(t) for t in tasks])
    together = mc.train(ensemble, tasks, config)[0].steps_per_second
    serial = 1.0 / seconds_per_sweep_step
    official_steps = 2**14
    return {"graphs": n_graphs, "batch_per_graph": batch, "serial_sweep_steps_per_s": serial,
            "ensemble_sweep_steps_per_s": together,
            "official_recipe_serial_minutes": official_steps / serial / 60,
            "official_recipe_ensemble_minutes": official_steps / together / 60}


def bench_figure9_recipes(device: torch.device, steps: int = 20, rounds: int = 3) -> list[dict]:
    """The Figure 9 step (20 random forests, S=3, 19 positions + query, one ensemble) at
    the batch of the quick recipe before this round (3000 steps of 2048) and of today's
    ``TrainConfig.quick("forest")``: seconds per step (median of interleaved rounds) and
    the training time of each whole recipe at that rate."""
    tasks = [mc.make_task("forest", seq_len=19, vocab_size=3, alpha=0.1, seed=g)
             for g in range(20)]
    today = mc.TrainConfig.quick("forest")
    recipes = {"before: 3000 steps of 2048": (3000, 2048),
               f"today: {today.steps} steps of {today.batch_size}": (today.steps, today.batch_size)}
    seconds: dict[str, list[float]] = {name: [] for name in recipes}
    for _ in range(rounds):
        for name, (_, batch) in recipes.items():
            config = replace(today, steps=steps, batch_size=batch, eval_every=steps,
                                eval_samples=256, progress=False, device=str(device))
            ensemble = mc.Ensemble([mc.DisentangledTransformer.for_task(t) for t in tasks])
            seconds[name].append(1.0 / mc.train(ensemble, tasks, config)[0].steps_per_second)
    return [{"name": name, "batch": batch, "seconds_per_step": statistics.median(seconds[name]),
             "recipe_training_s": recipe_steps * statistics.median(seconds[name])}
            for name, (recipe_steps, batch) in recipes.items()]


def bench_paper_first_steps(device: torch.device, steps: int = 1000) -> list[dict]:
    """``TrainConfig.paper("chain")``'s first ``steps`` steps, fresh data vs pools: the wall
    time of the whole ``mc.train`` call (drawing, evaluations and all) and the loop's
    own rate."""
    task = mc.InContextTree(mc.CausalGraph.chain(20), vocab_size=10, alpha=0.1)
    rows = []
    for data in ("fresh", "pool"):
        config = mc.TrainConfig.paper("chain", steps=steps, eval_every=steps, data=data,
                                      eval_samples=2048, progress=False, device=str(device))
        model = mc.DisentangledTransformer.for_task(task)
        started = time.perf_counter()
        history = mc.train(model, task, config)
        rows.append({"data": data, "wall_s": time.perf_counter() - started,
                     "loop_steps_per_s": history.steps_per_second})
    return rows


def bench_quick_chain(device: torch.device) -> dict:
    task = mc.InContextTree(mc.CausalGraph.chain(20), vocab_size=10, alpha=0.1)
    start = time.perf_counter()
    model = mc.DisentangledTransformer.for_task(task)
    config = mc.TrainConfig.quick("chain", progress=False, eval_every=20, device=str(device))
    history = mc.train(model, task, config)
    total = time.perf_counter() - start
    return {"time_to_0.95_train_s": history.time_to_parent_attention(0.95),
            "first_eval_at_0.95": next((s for s, a in zip(history.eval_step,
                                                          history.parent_attention)
                                        if a >= 0.95), None),
            "wall_s_including_evals": total, "steps": config.steps,
            "final": history.final}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved measurements per paper-config row (median shown)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    keep_freed_memory()  # what mc.train does on CPU; set first so every row shares it
    rows = bench_paper_config(args.steps, device, rounds=args.rounds)
    quick = bench_quick_chain(device)
    sweep = bench_figure9(args.steps, device)
    recipes = bench_figure9_recipes(device)
    first_steps = bench_paper_first_steps(device)
    reference = rows[0]["steps_per_s"]
    print(f"machine: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, device {device}")
    print(f"paper config: S=10, T=20 (input 21), heads (1, 1), batch 1024, SGD; "
          f"median of {args.rounds} interleaved rounds")
    print(f"{'':28s}{'steps/s':>10s}{'samples/s':>12s}{'x reference':>13s}   rounds")
    for row in rows:
        print(f"{row['name']:28s}{row['steps_per_s']:10.1f}{row['samples_per_s']:12.0f}"
              f"{row['steps_per_s'] / reference:13.2f}   "
              + " ".join(f"{r:.0f}" for r in row["rounds"]))
    print(f"quick chain preset: parent attention 0.95 after {quick['time_to_0.95_train_s']:.2f} s "
          f"of training (eval at step {quick['first_eval_at_0.95']}); "
          f"{quick['steps']} steps in {quick['wall_s_including_evals']:.1f} s with evaluations")
    print(f"Figure 9 sweep ({sweep['graphs']} graphs x batch {sweep['batch_per_graph']}): "
          f"serial {sweep['serial_sweep_steps_per_s']:.2f} sweep-steps/s, ensemble "
          f"{sweep['ensemble_sweep_steps_per_s']:.2f} "
          f"({sweep['ensemble_sweep_steps_per_s'] / sweep['serial_sweep_steps_per_s']:.1f}x); "
          f"official 2^14 steps: {sweep['official_recipe_serial_minutes']:.0f} min serial, "
          f"{sweep['official_recipe_ensemble_minutes']:.0f} min ensemble")
    print("Figure 9 step (20 forests, S=3, T=19 + query, one ensemble):")
    for row in recipes:
        print(f"  {row['name']:28s} {1000 * row['seconds_per_step']:7.1f} ms/step -> "
              f"{row['recipe_training_s']:6.0f} s of training")
    print("TrainConfig.paper('chain'), first 1000 steps:")
    for row in first_steps:
        print(f"  {row['data']:6s} {row['wall_s']:6.1f} s wall, loop {row['loop_steps_per_s']:.0f} steps/s")
    print(f"peak RSS: {peak_rss_mb():.0f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"paper_config": rows, "quick_chain": quick, "figure9_sweep": sweep,
                       "figure9_recipes": recipes, "paper_first_steps": first_steps,
                       "peak_rss_mb": peak_rss_mb(),
                       "device": str(device), "torch": torch.__version__}, f, indent=1)


if __name__ == "__main__":
    main()
