"""Wall-clock of the fusion tree: one command against one job per node.

The paper fuses so that the small models "can train at the same time on
separate hardware". This measures, on this machine, a `tools.train
--recipe=fusion_tree` tree (depth 2 by default: 4 -> 2 -> 1) run two ways,
with the same flags and a tokenizer trained once beforehand:

1. **sequential**: the whole tree in one command (one process, the nodes in
   order);
2. **pairs concurrent**: one `tools.train --node=NAME` process a node, the two
   nodes of each pair at the same time (leaf0 with leaf1, then leaf2 with
   leaf3, then fused1_0 with fused1_1, then the root), each job started when
   its inputs are finished.

It reports the wall-clock of each, every job's own wall-clock (process start
to exit: what a separate machine would take for that node, its start-up
included), and the **critical path**: the longest chain of jobs from a leaf to
the root, summed from those job times, which is what the tree takes with one
machine a node. Both ways must end with the same held-out curve for every
node (checked, within 1e-5).

Writes benchmarks/results/fusion_tree_wall.json (or --output) and prints the
machine, the config and the figures.

    python benchmarks/fusion_tree_wall.py [--steps 1200 --growth_step 300 --tree_depth 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from benchmark_utils import machine_info, save_json, script_setup, versions

ROOT = script_setup(__file__)

DEFAULT_OUTPUT = os.path.join(ROOT, "benchmarks", "results", "fusion_tree_wall.json")


def node_names(flags):
    listed = subprocess.run(
        [sys.executable, "-m", "tools.train", *flags, "--list_nodes"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return listed.stdout.split()


def start(flags, model_dir, node=None, log=None):
    args = [sys.executable, "-m", "tools.train", *flags, f"--model_dir={model_dir}"]
    if node:
        args.append(f"--node={node}")
    return subprocess.Popen(
        args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
    )


def wait(process, what):
    if process.wait() != 0:
        raise RuntimeError(f"{what} exited {process.returncode}")


def inputs_of(name, names, tree_depth):
    """The inputs of a node from the tree's naming: leaf i, fused{L}_i, root."""
    leaves = [n for n in names if n.startswith("leaf")]
    levels = [leaves] + [
        [n for n in names if n.startswith(f"fused{level}_")] for level in range(1, tree_depth)
    ]
    levels.append(["root"])
    for level in range(1, len(levels)):
        if name in levels[level]:
            i = levels[level].index(name)
            return levels[level - 1][2 * i : 2 * i + 2]
    return []


def critical_path(job_seconds, names, tree_depth):
    """The longest chain of jobs from a leaf to the root (seconds, names)."""

    def longest(name):
        below = [longest(n) for n in inputs_of(name, names, tree_depth)]
        seconds, chain = max(below, default=(0.0, []))
        return seconds + job_seconds[name], chain + [name]

    return longest("root")


def eval_rows(model_dir, name):
    with open(os.path.join(model_dir, "nodes", name, "done.json")) as f:
        return [(row["step"], row["eval_loss"]) for row in json.load(f)["rows"]]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--growth_step", type=int, default=300)
    parser.add_argument("--tree_depth", type=int, default=2)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--eval_every", type=int, default=150)
    parser.add_argument("--output", default=DEFAULT_OUTPUT)
    args = parser.parse_args()

    machine = machine_info()
    print(f"Machine: {machine['cpu_model']}, {machine['cpu_count']} CPUs; {versions()}")
    work = tempfile.mkdtemp(prefix="fusion_tree_wall_")
    flags = [
        "--recipe=fusion_tree",
        f"--preset={args.preset}",
        f"--tree_depth={args.tree_depth}",
        f"--steps={args.steps}",
        f"--growth_step={args.growth_step}",
        f"--eval_every={args.eval_every}",
        f"--checkpoint_every={args.growth_step}",
    ]
    names = node_names(flags + [f"--model_dir={work}/listing"])
    print(f"Config: {' '.join(flags)}; nodes {names}", flush=True)

    # The tokenizer once, so that neither way pays for it (or races on it).
    from keras_fusion import data

    tokenizer = data.train_tokenizer(
        data.load_corpus("embedded", "train"), 1000, os.path.join(work, "tokenizer")
    )
    flags.append(f"--tokenizer={tokenizer}")

    sequential_dir = os.path.join(work, "sequential")
    with open(os.path.join(work, "sequential.log"), "w") as log:
        began = time.monotonic()
        wait(start(flags, sequential_dir, log=log), "the whole tree")
        sequential = time.monotonic() - began
    print(f"Sequential (one command): {sequential:.1f} s", flush=True)

    parallel_dir = os.path.join(work, "pairs")
    job_seconds = {}
    began = time.monotonic()
    pairs = [names[i : i + 2] for i in range(0, len(names) - 1, 2)] + [["root"]]
    for pair in pairs:
        jobs = []
        for name in pair:
            log = open(os.path.join(work, f"{name}.log"), "w")
            jobs.append((name, time.monotonic(), start(flags, parallel_dir, name, log), log))
        for name, t0, process, log in jobs:
            wait(process, f"node {name}")
            log.close()
            job_seconds[name] = time.monotonic() - t0
            print(f"  job {name}: {job_seconds[name]:.1f} s", flush=True)
    pairs_concurrent = time.monotonic() - began
    path_seconds, path = critical_path(job_seconds, names, args.tree_depth)
    print(f"Pairs concurrent: {pairs_concurrent:.1f} s", flush=True)
    print(f"Critical path {' -> '.join(path)}: {path_seconds:.1f} s", flush=True)

    # Same curves whichever way it ran (the test suite checks the logits).
    worst = max(
        abs(a[1] - b[1])
        for name in names
        for a, b in zip(eval_rows(sequential_dir, name), eval_rows(parallel_dir, name))
    )
    print(f"Largest held-out loss difference between the two ways: {worst:.2e}")
    if worst > 1e-5:
        raise RuntimeError(f"the two ways differ by {worst} in held-out loss")

    result = dict(
        benchmark="fusion_tree_wall",
        machine=machine,
        versions=versions(),
        command=" ".join([os.path.relpath(__file__, ROOT)] + sys.argv[1:]),
        config=dict(vars(args), flags=flags[:-1], nodes=names),
        sequential_seconds=sequential,
        pairs_concurrent_seconds=pairs_concurrent,
        job_seconds=job_seconds,
        critical_path=path,
        critical_path_seconds=path_seconds,
        speedup_pairs_concurrent=sequential / pairs_concurrent,
        speedup_critical_path=sequential / path_seconds,
        largest_eval_loss_difference=worst,
    )
    save_json(result, args.output)
    print(
        f"Sequential {sequential:.1f} s; pairs concurrent {pairs_concurrent:.1f} s "
        f"({sequential / pairs_concurrent:.2f}x); critical path {path_seconds:.1f} s "
        f"({sequential / path_seconds:.2f}x)"
    )


if __name__ == "__main__":
    main()
