"""The LM diagnostics on a randomly initialised GPT-2-small-shaped model (12 layers, 12
heads, d_model 768, vocabulary 50257, saved locally with ``save_pretrained``) with the
chain task (19 nodes + the query = input 20) written in its vocabulary after a BOS.

    python -m benchmarks.bench_lm [--old REV] [--only NAME ...] [--memory-gb 16]

Each measurement runs in a fresh process (its peak RSS is its own), under an address
space limit of ``--memory-gb`` so that a call that would exhaust the machine fails
quickly ("killed for memory") instead of swapping. With ``--old REV`` the same calls
of that revision (exported with ``git archive``) run first, in the same run.

Rows: ``load_lm``; ``induction_scores`` (defaults); ``rank_heads``; ``extract_graph``
(defaults: the old revision reads layer 0); ``heldout_losses``; the whole ``diagnose``
suite (new revision; progress bars off).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = r"""
import json, resource, sys, time
import torch
name, folder, limit = sys.argv[1], sys.argv[2], int(float(sys.argv[3]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
torch.set_num_threads(2)
import mechcausal as mc
start = time.perf_counter()
lm = mc.load_lm(folder)
loaded = time.perf_counter() - start
task = mc.InContextTree(mc.CausalGraph.chain(19), vocab_size=10, alpha=0.1).in_vocabulary(
    list(range(1000, 1010)), bos_token_id=50256)
calls = {
    "load_lm": lambda: None,
    "induction_scores": lambda: mc.induction_scores(lm),
    "rank_heads": lambda: mc.rank_heads(lm, task),
    "extract_graph": lambda: mc.extract_graph(lm, task),
    "heldout_losses": lambda: mc.heldout_losses(lm, task),
    "diagnose": lambda: mc.diagnose(lm, task, progress=False),
}
start = time.perf_counter()
try:
    result = calls[name]()
    status = "ok"
except MemoryError:
    status = "killed for memory"
except Exception as error:  # an old revision may lack a call
    status = f"{type(error).__name__}: {str(error)[:80]}"
seconds = time.perf_counter() - start if name != "load_lm" else loaded
extra = {}
if name == "diagnose" and status == "ok":
    extra = {"failed": sorted(result.failed), "lines": result.lines}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps({"name": name, "status": status, "seconds": seconds, "peak_gb": peak, **extra}))
"""

NAMES = ["load_lm", "induction_scores", "rank_heads", "extract_graph", "heldout_losses",
         "diagnose"]


def save_model(folder: Path) -> None:
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config()  # GPT-2 small: 12 layers, 12 heads, d_model 768
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)


def measure(name: str, folder: Path, tree: Path, memory_gb: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", MEASURE, name, str(folder), str(memory_gb)],
                          capture_output=True, text=True, env=env, cwd=tree)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"name": name, "status": f"process failed (rc {done.returncode}): "
                                          f"{done.stderr.strip().splitlines()[-1:]}"}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", default=None, metavar="REV")
    parser.add_argument("--only", nargs="*", default=NAMES, choices=NAMES)
    parser.add_argument("--memory-gb", type=float, default=16.0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        folder = scratch / "gpt2-small-random"
        save_model(folder)
        sides = [("new", ROOT)]
        if args.old:
            old = scratch / "old"
            old.mkdir()
            archive = subprocess.run(["git", "archive", args.old], cwd=ROOT, check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
            sides.insert(0, ("old", old))
        rows = []
        for side, tree in sides:
            for name in args.only:
                if side == "old" and name == "diagnose":
                    continue  # the old suite reads the wrong layers: not a like-for-like row
                row = {"side": side, **measure(name, folder, tree, args.memory_gb)}
                rows.append(row)
                seconds = row.get("seconds")
                shown = f"{seconds:7.1f} s" if seconds is not None else "      -"
                peak = row.get("peak_gb")
                print(f"{side:4} {name:18} {shown}  peak RSS "
                      f"{peak:.2f} GB  {row['status']}" if peak is not None else
                      f"{side:4} {name:18} {shown}  {row['status']}", flush=True)
                for line in row.get("lines", []):
                    print(f"     {line}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
