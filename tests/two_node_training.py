"""Run by test_train.py: a two-node Ray cluster on this machine, training with one worker per node."""

import json
import sys

import ray
from ray.cluster_utils import Cluster

from raygpt.config import experiment_from_dict
from raygpt.train.launch import plan_training, run_training

data_dir, out_dir = sys.argv[1], sys.argv[2]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
cluster.add_node(num_cpus=2)
ray.init(address=cluster.address)
try:
    config = experiment_from_dict(
        {
            "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
            "data": {"dataset": data_dir, "tokenizer": "byte"},
            "train": {
                "out_dir": out_dir,
                "max_iters": 6,
                "batch_size": 4,
                "eval_interval": 3,
                "eval_iters": 2,
                "log_interval": 3,
                "shuffle_buffer": 64,
                "dtype": "float32",
            },
            "scaling": {
                "num_workers": 2,
                "cpus_per_worker": 1,
                "placement_strategy": "STRICT_SPREAD",
            },
        }
    )
    result = run_training(plan_training(config))
    print(json.dumps({"steps": result.steps, "final_model": str(result.final_model)}))
finally:
    ray.shutdown()
    cluster.shutdown()
