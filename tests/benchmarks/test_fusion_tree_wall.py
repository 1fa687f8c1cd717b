"""benchmarks/fusion_tree_wall.py: the tree's inputs and its critical path (no timing here)."""

from benchmark_test_utils import load_benchmark

bench = load_benchmark("fusion_tree_wall")

DEPTH_2 = ["leaf0", "leaf1", "leaf2", "leaf3", "fused1_0", "fused1_1", "root"]


def test_inputs_follow_the_papers_tree():
    assert bench.inputs_of("root", DEPTH_2, 2) == ["fused1_0", "fused1_1"]
    assert bench.inputs_of("fused1_1", DEPTH_2, 2) == ["leaf2", "leaf3"]
    assert bench.inputs_of("leaf3", DEPTH_2, 2) == []
    assert bench.inputs_of("root", ["leaf0", "leaf1", "root"], 1) == ["leaf0", "leaf1"]


def test_the_critical_path_is_the_slowest_chain_from_a_leaf_to_the_root():
    seconds = dict(leaf0=10, leaf1=30, leaf2=20, leaf3=5, fused1_0=7, fused1_1=25, root=4)
    # Chains: leaf0/leaf1 -> fused1_0 -> root = 30 + 7 + 4 = 41;
    # leaf2/leaf3 -> fused1_1 -> root = 20 + 25 + 4 = 49.
    assert bench.critical_path(seconds, DEPTH_2, 2) == (49, ["leaf2", "fused1_1", "root"])
    depth_1 = dict(leaf0=3, leaf1=8, root=2)
    assert bench.critical_path(depth_1, list(depth_1), 1) == (10, ["leaf1", "root"])
