"""Running untrusted code: a model's completion and its tests, in a process of their own.

Each program runs in a fresh `python -I` child (sandbox_child.py) that confines itself
before the program's first line: its own session (the whole process group is killed at the
time limit), a temporary working directory that is removed afterwards, an environment with
nothing in it (no API keys, no PYTHONPATH), limits on CPU time, memory, file size and open
files, a process limit (a pids cgroup where one can be made, else RLIMIT_NPROC), and, where
the kernel allows, namespaces of its own: no network, and every filesystem read-only but its
directory. The verdict travels on a pipe only the child writes, after the program's last
line ran: a program that exits early (sys.exit, os._exit) has not passed.

No Ray here: raygpt.release.code_eval runs these as Ray tasks, each program still in its
own child process, never inside a Ray worker.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PASSED, FAILED, TIMED_OUT, CRASHED = "passed", "failed", "timed out", "crashed"
OUTCOMES = (PASSED, FAILED, TIMED_OUT, CRASHED)
DETAIL_CHARS = 400  # of the program's output kept with a failure


@dataclass(frozen=True)
class Limits:
    timeout_s: float = 10.0  # wall clock; the CPU limit is set just above it
    memory_mb: int = 1024  # address space
    file_mb: int = 16  # any one file written
    processes: int = 32  # a fork bomb ends here (enforced for a non-root user)
    open_files: int = 64


@dataclass(frozen=True)
class Execution:
    outcome: str  # one of OUTCOMES
    detail: str  # the last lines of the program's output, or why it was stopped
    seconds: float


CHILD = Path(__file__).with_name("sandbox_child.py")  # confines itself, then runs it


def run_untrusted(program: str, limits: Limits = Limits()) -> Execution:
    """Run `program` (Python source) confined; PASSED only if its last line ran."""
    workdir = tempfile.mkdtemp(prefix="raygpt-sandbox-")
    program_path = os.path.join(workdir, ".program.py")
    with open(program_path, "w") as f:
        f.write(program)
    cgroup = _pids_cgroup(limits.processes)
    read_end, write_end = os.pipe()
    # The output lands outside workdir, where the program cannot replace it (closed below).
    output = tempfile.TemporaryFile()  # noqa: SIM115
    args = [
        sys.executable,
        "-I",  # no PYTHON* variables, no user site, not the caller's sys.path
        str(CHILD),
        program_path,
        str(write_end),
        str(limits.timeout_s),
        str(limits.memory_mb),
        str(limits.file_mb),
        str(limits.processes),
        str(limits.open_files),
        cgroup or "-",
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8"}
    start = time.perf_counter()
    try:
        child = subprocess.Popen(
            args,
            cwd=workdir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            pass_fds=(write_end,),
            start_new_session=True,  # its own process group: killed whole at the limit
        )
        os.close(write_end)
        write_end = -1
        timed_out = False
        try:
            child.wait(timeout=limits.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(child.pid)  # whatever it left running, too
        child.wait()
        seconds = time.perf_counter() - start
        verdict = _read_all(read_end)
        output.seek(0)
        text = output.read().decode("utf-8", errors="replace")
    finally:
        if write_end >= 0:
            os.close(write_end)
        os.close(read_end)
        output.close()
        shutil.rmtree(workdir, ignore_errors=True)
        if cgroup:
            _remove_cgroup(cgroup)
    tail = text[-DETAIL_CHARS:].strip()
    code = child.returncode
    if timed_out or (code == -signal.SIGKILL and seconds >= limits.timeout_s):
        return Execution(TIMED_OUT, f"ran past {limits.timeout_s:g} s", seconds)
    if code == -signal.SIGXCPU:
        return Execution(TIMED_OUT, f"used more than {limits.timeout_s:g} s of CPU", seconds)
    if verdict == PASSED and code == 0:
        return Execution(PASSED, tail, seconds)
    if verdict == CRASHED:
        return Execution(CRASHED, tail, seconds)
    if code < 0:
        return Execution(CRASHED, tail or f"killed by {signal.Signals(-code).name}", seconds)
    return Execution(FAILED, tail, seconds)


PIDS_ROOTS = ("/sys/fs/cgroup/pids", "/sys/fs/cgroup")  # cgroup v1's controller, or v2


def _pids_cgroup(processes: int) -> str | None:
    """A cgroup that lets the child's whole tree have `processes` processes, where this
    process may make one (root, usually); None elsewhere."""
    for root in PIDS_ROOTS:
        if not os.path.isfile(os.path.join(root, "cgroup.procs")):
            continue
        path = (
            tempfile.mkdtemp(prefix="raygpt-sandbox-", dir=root)
            if os.access(root, os.W_OK)
            else None
        )
        if path is None:
            continue
        try:
            with open(os.path.join(path, "pids.max"), "w") as f:
                f.write(str(processes))
            return path
        except OSError:
            _remove_cgroup(path)
    return None


def _remove_cgroup(path: str) -> None:
    with contextlib.suppress(OSError):  # a cgroup goes with rmdir once its processes are gone
        os.rmdir(path)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _read_all(fd: int) -> str:
    chunks = []
    while chunk := os.read(fd, 64):
        chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")
