"""Connecting to Ray: the cluster a job was submitted to, or a local one started here.

Quiet by default: a job's console shows the job's own lines (progress, summaries, errors),
not Ray's internal logging (worker start-up warnings, C++ core-worker lines, controller INFO,
Serve's and Ray Data's chatter). Workers' output stays in their log files (the dashboard's
Logs tab); a local Ray started quiet keeps only fatal lines in its C++ logs. `verbose` (the
jobs' --verbose) brings all of it back, workers' output on the console included.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

# A local Ray on a small machine gets more logical CPUs than cores: Ray Train workers and
# Ray Data tasks each reserve CPUs, and with one per core Ray Data starves and hangs.
MIN_LOCAL_CPUS = 4
DATA_LOGGING = Path(__file__).parent / "data" / "logging.yaml"
QUIET_LOGGERS = ("ray", "ray.serve", "ray.data", "ray.train", "ray.tune")
# Ray Serve's high-throughput mode: HAProxy (bundled with ray[serve]) takes the HTTP port and
# forwards to the ingress replicas' own HTTP servers, replicas call each other over gRPC, and
# user code runs on the replica's event loop. The Python proxy actor's hop was most of what
# serving added to each decode step (SmolLM2 fp32, 32 streams on 2 cores: 138-150 -> 116-122
# ms a step; BENCHMARKS.md). cluster.yaml and configs/k8s set the same on every node; set
# either to 0 in the environment to keep Serve's defaults. A stopping ingress replica waits
# out a draining period (default 30 s) for load balancers to forget it; a local Ray's only
# balancer is its own HAProxy, which Serve reconfigures and which retries a refused
# connection.
SERVE_FAST_PATH = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"}
LOCAL_SERVE_FAST_PATH = {**SERVE_FAST_PATH, "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}

_worker_logs_shown = True  # Ray's default, until init_ray decides


def init_ray(
    address: str | None = None, num_cpus: float | None = None, verbose: bool = False
) -> None:
    """Connect to `address` (or $RAY_ADDRESS, set by `ray job submit`), else start a local Ray."""
    import ray

    global _worker_logs_shown
    if ray.is_initialized():
        return
    # Workers inherit these from the process that starts Ray (and a job's driver passes
    # them on): quiet Ray Data and the C++ core workers everywhere.
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(DATA_LOGGING))
    if not verbose:
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        for name in QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
    _worker_logs_shown = verbose
    kwargs = {
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,
    }
    address = address or os.environ.get("RAY_ADDRESS")
    quiet = contextlib.nullcontext() if verbose else _c_stderr_muted()
    if address:
        with quiet:
            ray.init(address=address, **kwargs)
        return
    for name, value in LOCAL_SERVE_FAST_PATH.items():  # read by Serve's processes at start
        os.environ.setdefault(name, value)
    cpus = num_cpus if num_cpus is not None else max(MIN_LOCAL_CPUS, os.cpu_count() or 1)
    if not verbose:
        # The raylet warns each time the workers it has started pass 4x, 8x, ... this many
        # (default: the cores); Ray Data, Train and Serve together start ~20 on a laptop.
        kwargs["_system_config"] = {"worker_maximum_startup_concurrency": 2 * int(cpus)}
    # address="local": a private Ray for this process, even if `ray start` runs on this machine.
    with quiet:
        ray.init(address="local", num_cpus=cpus, **kwargs)


@contextlib.contextmanager
def _c_stderr_muted():
    """Ray's C++ core worker starts up inside ray.init and writes its own lines straight to
    file descriptor 2 (with RAY_BACKEND_LOG_LEVEL set, one saying so): mute that descriptor
    while it starts. Python's errors are raised after it, onto the real stderr."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def worker_logs_shown() -> bool:
    """Whether workers' output reaches this process's console (init_ray's `verbose`)."""
    return _worker_logs_shown


def cluster_cpus() -> int:
    """Whole logical CPUs of the connected cluster (at least 1): how wide to fan work out."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))
