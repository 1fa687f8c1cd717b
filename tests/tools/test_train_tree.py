"""`tools.train --recipe=fusion_tree`: the paper's 4 -> 2 -> 1 tree, each node its own job.

Real processes on a shared local model_dir: the whole tree in one command,
and the same tree as separate node jobs (the four leaves at once, a
duplicate job refused by the node's lease, a node killed with SIGKILL and
one pre-empted with SIGTERM, both rerun), end with the same model.
"""

import json
import os
import re
import subprocess
import sys
import time

import pytest

from keras_fusion import data, training
from keras_fusion.diagnostics import relative_error
from train_jobs import final_logits, finished, worker_job

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A depth-2 tree at the tiny sizes: leaves hidden 8 (steps 0-4), two fused
# hidden-16 nodes (4-8), the root hidden 32 (8-12).
TREE = dict(
    recipe="fusion_tree",
    tree_depth=2,
    steps=12,
    growth_step=4,
    hidden_dim=32,
    num_heads=4,
    intermediate_dim=64,
    key_value_dim=8,
    eval_every=2,
    checkpoint_every=2,
    export=False,  # the final models are compared; the SavedModel is test_tools.py's
)
NODES = ["leaf0", "leaf1", "leaf2", "leaf3", "fused1_0", "fused1_1", "root"]


def tree_flags(**overrides):
    return [f"--{name}={value}" for name, value in dict(TREE, **overrides).items()]


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    texts = data.load_corpus("embedded", "train")[:300]
    return data.train_tokenizer(texts, 500, str(tmp_path_factory.mktemp("tokenizer")))


def train(*args):
    return subprocess.run(
        [sys.executable, "-m", "tools.train", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


def node_job(model_dir, tokenizer_path, node=None, *extra):
    """The tree, or one node of it, as a `tools.train` process in the background."""
    flags = list(TREE.items()) + ([("node", node)] if node else [])
    return worker_job(model_dir, tokenizer_path, *extra, flags=flags)


def eval_losses(model_dir, node):
    with open(os.path.join(model_dir, "nodes", node, "done.json")) as f:
        return [(row["step"], row["eval_loss"]) for row in json.load(f)["rows"]]


def test_list_nodes_prints_the_nodes_inputs_first_and_nothing_else(tmp_path):
    model_dir = tmp_path / "tree"
    listed = train(*tree_flags(), f"--model_dir={model_dir}", "--list_nodes")
    assert listed.returncode == 0, listed.stderr[-3000:]
    assert listed.stdout == "".join(name + "\n" for name in NODES)
    depth_1 = train(*tree_flags(tree_depth=1), f"--model_dir={model_dir}", "--list_nodes")
    assert depth_1.stdout == "leaf0\nleaf1\nroot\n"
    # Deep Fusion is the tree of depth 1, whatever --tree_depth says.
    deep_fusion = train(
        *tree_flags(recipe="deep_fusion"), f"--model_dir={model_dir}", "--list_nodes"
    )
    assert deep_fusion.stdout == depth_1.stdout, deep_fusion.stderr[-3000:]
    scratch = train(*tree_flags(recipe="scratch"), f"--model_dir={model_dir}", "--list_nodes")
    assert scratch.returncode == 2 and "lists the nodes of --recipe=deep_fusion" in scratch.stderr
    assert not model_dir.exists()  # listing writes nothing


def test_a_node_whose_inputs_are_not_finished_exits_2_names_them_and_writes_nothing(
    tmp_path, tokenizer_path
):
    model_dir = tmp_path / "tree"
    process = train(*tree_flags(), f"--model_dir={model_dir}", "--node=root")
    assert process.returncode == 2, process.stderr[-3000:]
    assert "node root needs fused1_0, fused1_1 finished first" in process.stderr
    assert not model_dir.exists()
    unknown = train(*tree_flags(), f"--model_dir={model_dir}", "--node=leaf9")
    assert unknown.returncode == 2
    assert "node must be one of ['leaf0', 'leaf1', 'leaf2', 'leaf3'" in unknown.stderr
    assert not model_dir.exists()
    # Waiting: the inputs never come within a second, so it still exits 2.
    waited = train(
        *tree_flags(), f"--model_dir={model_dir}", "--node=fused1_0", "--wait_for_inputs=1"
    )
    assert waited.returncode == 2
    assert "Node fused1_0 waits for leaf0, leaf1" in waited.stdout
    assert "node fused1_0 needs leaf0, leaf1 finished first" in waited.stderr
    assert not model_dir.exists()


def wait_for_lease(model_dir, node, process, timeout=300):
    folder = os.path.join(model_dir, "nodes", node)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if os.path.isdir(folder) and any(n.startswith("lease-") for n in os.listdir(folder)):
            return
        assert process.poll() is None, process.communicate()[0][-3000:]
        time.sleep(0.2)
    raise AssertionError(f"no lease in {folder} after {timeout} s")


def test_the_tree_ends_with_the_same_model_in_one_command_or_as_separate_node_jobs(
    tmp_path, tokenizer_path
):
    whole, nodes = tmp_path / "whole", tmp_path / "nodes"
    one_command = node_job(whole, tokenizer_path)  # the whole tree, alongside the node jobs

    # The four leaves at once, and a second job of leaf0 while the first
    # holds it: refused, leaf0's job undisturbed.
    leaves = {name: node_job(nodes, tokenizer_path, name) for name in NODES[:4]}
    wait_for_lease(nodes, "leaf0", leaves["leaf0"])
    duplicate = finished(node_job(nodes, tokenizer_path, "leaf0"), returncode=2)
    assert "is in use by another job" in duplicate
    for process in leaves.values():
        finished(process)

    # fused1_0 killed (SIGKILL) after its fusion at step 4 and the checkpoint
    # of step 6; beside it fused1_1 gets the pre-emption notice (SIGTERM)
    # at step 5, saves at the next step and exits 143. Rerun, each resumes
    # from its checkpoint.
    killed = node_job(nodes, tokenizer_path, "fused1_0", "--kill", "fused1_0:6")
    preempted = node_job(nodes, tokenizer_path, "fused1_1", "--sigterm", "fused1_1:5")
    assert "KILLED at fused1_0:6" in finished(killed, returncode=-9)
    assert "a checkpoint at step 6 was saved" in finished(preempted, returncode=143)
    for node in ("fused1_0", "fused1_1"):
        assert not os.path.exists(nodes / "nodes" / node / "done.json")
        resumed = finished(node_job(nodes, tokenizer_path, node))
        assert f"Resumed node {node} from ckpt-000000006" in resumed

    # A finished node does nothing and says so.
    done = nodes / "nodes" / "leaf1" / "done.json"
    before = done.stat().st_mtime_ns
    again = finished(node_job(nodes, tokenizer_path, "leaf1"))
    assert "Node leaf1 is already finished" in again
    assert done.stat().st_mtime_ns == before

    finished(node_job(nodes, tokenizer_path, "root"))
    out = finished(one_command)
    assert len(re.findall(r"^Node \w+ finished", out, flags=re.M)) == len(NODES)

    for node in NODES:  # every node's held-out curve, row by row
        (steps, losses), (other_steps, other_losses) = (
            zip(*eval_losses(folder, node)) for folder in (whole, nodes)
        )
        assert steps == other_steps
        assert losses == pytest.approx(other_losses, abs=1e-5)
    a, b = final_logits(whole / "final.keras"), final_logits(nodes / "final.keras")
    assert relative_error(a, b) < 1e-5, relative_error(a, b)
    with open(nodes / "metrics.json") as f:
        metrics = json.load(f)
    assert list(metrics["curves"]) == NODES
    # FLOPs over every node: the root's first row counts all six others'.
    curves = metrics["curves"]
    others = sum(curves[n][-1]["flops"] for n in ("fused1_0", "fused1_1"))
    # At the fusion, before it trains (its first row), exactly theirs; then more.
    assert curves["root"][0]["flops"] == others and curves["root"][-1]["flops"] > others
    assert [e["step"] for e in metrics["growth_events"]] == [4, 4, 8]


def test_run_config_refuses_what_a_tree_cannot_do():
    base = training.RunConfig(recipe="fusion_tree", steps=12, growth_step=4)
    base.check()
    cases = [
        (dict(growth_step=6), r"tree_depth \* growth_step = 12, which must be below steps \(12\)"),
        (dict(tree_depth=0), r"tree_depth must be an int in \[1, 4\], got 0"),
        (dict(growth_schedule="self_fuse@4"), r"--growth_schedule does not apply to --recipe=fus"),
        (dict(node="leaf0", fresh=True), r"--fresh deletes the whole tree"),
        (dict(recipe="self_fusion", node="leaf0"), r"--node runs one node of a fusion tree"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=message):
            training.RunConfig(**{**vars(base), **change}).check()


def test_a_tree_run_records_its_depth_and_other_runs_keep_their_flags():
    tree = training.RunConfig(recipe="fusion_tree", node="leaf0").run_flags()
    assert tree["tree_depth"] == 2 and "node" not in tree
    assert "tree_depth" not in training.RunConfig(recipe="deep_fusion").run_flags()


pytestmark = pytest.mark.slow
