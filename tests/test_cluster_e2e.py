"""The cluster path end to end on this machine: `ray start` a head, alone or with a second node
(token authentication on, as on a real cluster), `ray job submit` the pipeline with the runtime
env, read the training metrics from Ray's Prometheus endpoint while it trains, wait for the job
to succeed, call the Serve endpoint it deployed, and stop the cluster.

Two nodes keep the dataset and the run on s3:// (a local S3-compatible server), as a multi-node
cluster without a shared disk must, with one Train worker on each node. (The single-node path on
local disk is what `make demo` runs, in CI too; one cluster here keeps the suite short.)

Each node gets its own short temp dir; teardown kills exactly the processes that use them, so
other Ray instances on the machine (this test session's own) are left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from raygpt import storage
from raygpt.release.int8 import REPORT
from raygpt.train.run_log import read_metrics

from .conftest import free_port

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds its processes in /proc")

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


class LocalCluster:
    def __init__(self, nodes: int) -> None:
        # Short paths (Ray's socket paths are capped), one per node: nodes on one machine must
        # not share runtime_resources/, or one node's cleanup deletes the other's job files.
        self.nodes = nodes
        self.temp_dirs = [tempfile.mkdtemp(prefix="rgc") for _ in range(nodes)]
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.metrics_ports = [free_port() for _ in range(nodes)]
        self.serve_port = free_port()
        self.token = uuid.uuid4().hex
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        # A job's `python` is the one on the nodes' PATH: this venv's, as after `activate`.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        self.env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}
        self.dashboard = f"http://127.0.0.1:{self.dashboard_port}"

    def ray(self, *args: str, env: dict | None = None, timeout: float = 120):
        return subprocess.run(
            [RAY, *args],
            env=env or self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    @staticmethod
    def node_ports() -> list[str]:
        """Ports every node needs for itself; the defaults (52365, ...) clash with any other
        Ray on the machine, and both nodes live on this one."""
        return [
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]

    def start(self) -> None:
        head = self.ray(
            "start",
            "--head",
            f"--port={self.gcs_port}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={self.dashboard_port}",
            f"--metrics-export-port={self.metrics_ports[0]}",
            f"--temp-dir={self.temp_dirs[0]}",
            "--num-cpus=3",
            "--disable-usage-stats",
            *self.node_ports(),
        )
        assert head.returncode == 0, head.stdout + head.stderr
        if self.nodes == 1:
            return
        worker = self.ray(
            "start",
            f"--address=127.0.0.1:{self.gcs_port}",
            f"--metrics-export-port={self.metrics_ports[1]}",
            f"--temp-dir={self.temp_dirs[1]}",
            "--num-cpus=2",
            *self.node_ports(),
        )
        assert worker.returncode == 0, worker.stdout + worker.stderr

    def stop(self) -> None:
        """Kill every process of this cluster (its command line names one of our temp dirs):
        `ray stop` would stop every Ray on the machine."""
        marks = [d.encode() for d in self.temp_dirs]
        for _ in range(3):
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    cmdline = (proc / "cmdline").read_bytes()
                    if any(mark in cmdline for mark in marks):
                        os.kill(int(proc.name), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            time.sleep(1)
        for directory in self.temp_dirs:
            shutil.rmtree(directory, ignore_errors=True)

    def metrics_text(self) -> str:
        text = ""
        for port in self.metrics_ports:
            try:
                url = f"http://127.0.0.1:{port}/metrics"
                text += urllib.request.urlopen(url, timeout=10).read().decode()
            except OSError:
                pass
        return text


@pytest.fixture(scope="module")
def cluster():
    cluster = LocalCluster(nodes=2)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def test_pipeline_job_on_two_nodes_with_token_auth_and_s3(cluster, byte_shards, s3_bucket):
    dataset, out_dir = f"{s3_bucket}/e2e/bytes", f"{s3_bucket}/e2e/run"
    storage.upload(byte_shards, dataset)
    placement = [
        "scaling.placement_strategy=STRICT_SPREAD",  # one worker per node
        "--serve-proxy-location=HeadOnly",  # both nodes share 127.0.0.1: one proxy per port
    ]
    submit = [
        "job",
        "submit",
        f"--address={cluster.dashboard}",
        "--runtime-env=configs/runtime_env.yaml",
        "--no-wait",
        "--",
        "python",
        "jobs/pipeline.py",
        "--config=configs/tiny_cpu.yaml",
        f"data.dataset={dataset}",
        f"train.out_dir={out_dir}",
        "model.n_layer=2",
        "model.n_embd=64",
        "model.block_size=64",
        "train.max_iters=20",
        "train.batch_size=8",
        "train.eval_interval=10",
        "train.log_interval=5",
        "scaling.num_workers=2",
        "scaling.cpus_per_worker=0.5",
        *placement,
        f"--serve-port={cluster.serve_port}",
        "--max-tokens=16",
    ]
    for _ in range(30):  # the head's job agent comes up a little after `ray start` returns
        submitted = cluster.ray(*submit)
        if "No available agent" not in submitted.stderr:
            break
        time.sleep(2)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job_id = next(
        word.strip("'")
        for line in submitted.stdout.splitlines()
        for word in line.split()
        if word.strip("'").startswith("raysubmit_")
    )

    # Without the token the cluster refuses the same client.
    anonymous = {k: v for k, v in cluster.env.items() if k != "RAY_AUTH_TOKEN"}
    refused = cluster.ray("job", "status", f"--address={cluster.dashboard}", job_id, env=anonymous)
    assert refused.returncode != 0

    train_metrics, status, deadline = "", "", time.monotonic() + 900
    while time.monotonic() < deadline:
        text = cluster.metrics_text()
        if "ray_raygpt_train_" in text and not train_metrics:
            train_metrics = text
        info = cluster.ray("job", "status", f"--address={cluster.dashboard}", job_id)
        status = (info.stdout + info.stderr).lower()  # "Job '...' succeeded"
        if any(word in status for word in ("succeeded", "failed", "stopped")):
            break
        time.sleep(3)
    fetched = cluster.ray("job", "logs", f"--address={cluster.dashboard}", job_id)
    logs = fetched.stdout + fetched.stderr
    assert "succeeded" in status, logs[-4000:]
    assert "== [5/5 serve]" in logs and "def fibonacci(n):" in logs

    loss_lines = [
        line
        for line in train_metrics.splitlines()
        if line.startswith("ray_raygpt_train_") and not line.startswith("#")
    ]
    assert loss_lines, "no raygpt training metric reached the Prometheus endpoint"
    assert any(line.startswith("ray_raygpt_train_loss") for line in loss_lines), loss_lines

    # The job has ended; the Serve app it deployed keeps serving.
    body = json.dumps({"prompt": "def ", "max_tokens": 8, "temperature": 0}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{cluster.serve_port}/v1/completions",
        body,
        {"Content-Type": "application/json"},
    )
    answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
    assert answer["usage"]["completion_tokens"] >= 1
    assert answer["model"] == "tiny_cpu"
    assert storage.is_file(storage.join(out_dir, "int8", REPORT))
    started = [r for r in read_metrics(out_dir) if r.get("event") == "started"]
    assert len(set(started[-1]["nodes"])) == cluster.nodes  # STRICT_SPREAD: a worker per node
