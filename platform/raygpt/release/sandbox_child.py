"""The child side of raygpt.release.sandbox: confine this process, then run the program.

Run as `python -I sandbox_child.py PROGRAM VERDICT_FD TIMEOUT_S MEMORY_MB FILE_MB PROCESSES
OPEN_FILES PIDS_CGROUP` from the sandbox's working directory. Standard library only, and
nothing of the program runs until every limit is in place:

- resource limits: CPU time, address space, file size, open files, no core dumps;
- processes: a pids cgroup the parent made (PIDS_CGROUP, "-" when there is none), else
  RLIMIT_NPROC (which the kernel does not apply to root);
- namespaces of its own, where the kernel allows them (root, or a user namespace): a network
  namespace (no interfaces: no network) and a mount namespace in which every filesystem is
  read-only but the working directory;
- a socket guard, for where namespaces are not allowed.

The word "passed" goes to VERDICT_FD only after the program's last line ran; "crashed" when
it ran out of memory.
"""

import contextlib
import ctypes
import os
import resource
import socket
import sys
import traceback

CLONE_NEWNS, CLONE_NEWNET, CLONE_NEWUSER = 0x00020000, 0x40000000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
KEPT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC}


def limit(kind: int, value: int) -> None:
    # a limit this kernel does not have, or one already lower, is left as it is
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(kind, (value, value))


def own_processes() -> int:
    uid, count = os.getuid(), 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                count += os.stat(f"/proc/{entry}").st_uid == uid
    return count


def join_cgroup(path: str) -> bool:
    if path == "-":
        return False
    try:
        with open(os.path.join(path, "cgroup.procs"), "w") as procs:
            procs.write(str(os.getpid()))
        return True
    except OSError:
        return False


def own_namespaces(libc) -> bool:
    """A network and a mount namespace of this process's own; False where not allowed."""
    flags = CLONE_NEWNS | CLONE_NEWNET
    if os.geteuid() != 0:
        flags |= CLONE_NEWUSER
    return libc.unshare(flags) == 0


def read_only_but_here(libc) -> None:
    """Every mount read-only, except the working directory (bound onto itself first)."""
    here = os.getcwd().encode()
    libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None)
    libc.mount(here, here, None, MS_BIND, None)
    os.chdir(here)  # the working directory, as reached through the new mount
    with open("/proc/self/mountinfo") as info:
        mounts = [line.split() for line in info]
    for fields in mounts:
        point, options = fields[4], fields[5].split(",")
        if point.encode() == here:
            continue
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY
        flags |= sum(bit for name, bit in KEPT_FLAGS.items() if name in options)
        libc.mount(None, point.encode(), None, flags, None)


def no_sockets() -> None:
    def refuse(*_args, **_kwargs):
        raise OSError("network access is disabled in the sandbox")

    for method in ("connect", "connect_ex", "bind", "sendto"):
        setattr(socket.socket, method, refuse)


def confine(timeout_s, memory_mb, file_mb, processes, open_files, cgroup) -> None:
    limit(resource.RLIMIT_CPU, int(float(timeout_s)) + 1)
    limit(resource.RLIMIT_AS, int(memory_mb) << 20)
    limit(resource.RLIMIT_FSIZE, int(file_mb) << 20)
    limit(resource.RLIMIT_NOFILE, int(open_files))
    limit(resource.RLIMIT_CORE, 0)
    if not join_cgroup(cgroup):  # before the filesystems turn read-only
        limit(resource.RLIMIT_NPROC, own_processes() + int(processes))
    libc = ctypes.CDLL(None, use_errno=True)
    if own_namespaces(libc):
        read_only_but_here(libc)
    no_sockets()


def main() -> None:
    program_path, verdict_fd, *limits = sys.argv[1:9]
    verdict_fd = int(verdict_fd)
    with open(program_path) as f:
        source = f.read()
    os.unlink(program_path)
    confine(*limits)
    try:
        exec(compile(source, "program.py", "exec"), {})  # a fresh namespace, as HumanEval's
    except MemoryError:
        os.write(verdict_fd, b"crashed")
        print("MemoryError", file=sys.stderr)
        os._exit(1)
    except SystemExit as stop:
        print(f"the program exited early: sys.exit({stop.code!r})", file=sys.stderr)
        os._exit(1)
    except BaseException as error:
        frames = [
            f for f in traceback.extract_tb(error.__traceback__) if f.filename == "program.py"
        ]
        print("".join(traceback.format_list(frames[-3:])), end="", file=sys.stderr)
        print("".join(traceback.format_exception_only(error)), end="", file=sys.stderr)
        os._exit(1)
    os.write(verdict_fd, b"passed")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
