"""`--address`: a search joins an existing Ray cluster and its trials use every node.

The cluster is two Ray nodes on this machine (``ray.cluster_utils.Cluster``, loopback),
one CPU each; with one CPU per trial and two at a time (the first two wait for each
other), trials must run on both nodes, and ``trials.csv`` records the node of each trial.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from search.experiment import ExperimentFolder
from search.runner import run_search
from search.space import SpaceConfig
from search.worker import load_trainable

FAKES = Path(__file__).resolve().parent / "search_fakes.py"


@pytest.fixture
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_trials_run_on_both_nodes_of_a_cluster(two_node_cluster, tmp_path):
    import ray

    space = SpaceConfig.from_dict(
        {
            "name": "cluster",
            "objective": {"metric": "val/auroc"},
            "parameters": {
                "lr": {"type": "range", "bounds": [1e-4, 1e-1], "scale": "log"},
                "lambda_u": {"type": "range", "bounds": [0.0, 2.0]},
                "sleep_s": 1.0,  # each epoch of the fake trial takes this long
                # the first two trials wait for each other: they run at the same time,
                # however slowly a loaded machine starts their workers
                "barrier_dir": str(tmp_path / "barrier"),
                "barrier_n": 2,
            },
            "budget": {
                "trials": 4,
                "concurrency": 2,
                "epochs": 3,
                "scheduler": "none",
                "initial_trials": 4,
            },
            "tracking": {"mode": "disabled"},
        },
        source="cluster.yaml",
        check_names=False,
    )
    result = run_search(
        space,
        name="c",
        results_dir=tmp_path,
        trainable=load_trainable(f"{FAKES}:quadratic"),
        address=two_node_cluster.address,
        progress=False,
    )
    assert not ray.is_initialized(), "the search disconnects from the cluster it joined"
    assert result.status == "finished" and result.concurrency == 2
    with open(result.path / "trials.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["completed"] * 4
    nodes = {r["node"] for r in rows}
    assert len(nodes) == 2, nodes
    # the address names a machine: recorded in the local folder, not the shared one
    local = ExperimentFolder(result.path).local_dir / "sessions.json"
    assert two_node_cluster.address in local.read_text(), "the session records the cluster"
    assert two_node_cluster.address not in (result.path / "experiment.json").read_text()
