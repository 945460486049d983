"""Connecting to Ray: the cluster a job was submitted to, or a local one started here."""

from __future__ import annotations

import logging
import os
from pathlib import Path

# A local Ray on a small machine gets more logical CPUs than cores: Ray Train workers and
# Ray Data tasks each reserve CPUs, and with one per core Ray Data starves and hangs.
MIN_LOCAL_CPUS = 4
DATA_LOGGING = Path(__file__).parent / "data" / "logging.yaml"


def init_ray(address: str | None = None, num_cpus: float | None = None, quiet: bool = True) -> None:
    """Connect to `address` (or $RAY_ADDRESS, set by `ray job submit`), else start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    # Workers inherit this from the process that starts Ray: quiet Ray Data everywhere.
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG", str(DATA_LOGGING))
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = {"logging_level": logging.WARNING} if quiet else {}
    if address:
        ray.init(address=address, **kwargs)
        return
    cpus = num_cpus if num_cpus is not None else max(MIN_LOCAL_CPUS, os.cpu_count() or 1)
    # address="local": a private Ray for this process, even if `ray start` runs on this machine.
    ray.init(address="local", num_cpus=cpus, **kwargs)


def cluster_cpus() -> int:
    """Whole logical CPUs of the connected cluster (at least 1): how wide to fan work out."""
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))
