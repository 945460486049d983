"""Shared plumbing for the entrypoints in jobs/ (and bench/): one flag spelling, one clear
line on user errors."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from raygpt.errors import RaygptError


class JobParser(argparse.ArgumentParser):
    """argparse with one flag spelling, `--max-new-tokens`. nanoGPT's `--max_new_tokens`
    is accepted too (commands people already have keep working) but never shown."""

    def parse_known_args(self, args=None, namespace=None):
        args = sys.argv[1:] if args is None else list(args)
        return super().parse_known_args([self._canonical(a) for a in args], namespace)

    def _canonical(self, arg: str) -> str:
        if not arg.startswith("--") or "_" not in arg:
            return arg
        flag, sep, value = arg.partition("=")
        kebab = flag.replace("_", "-")
        known = self._option_string_actions
        return kebab + sep + value if kebab in known and flag not in known else arg


def run_cli(main: Callable[[], int | None]) -> None:
    """Run an entrypoint; a RaygptError becomes `error: ...` on stderr and exit code 2."""
    try:
        code = main()
    except RaygptError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """--config and its `section.key=value` overrides, for the jobs that run an experiment."""
    parser.add_argument("--config", required=True, help="experiment YAML or nanoGPT .py config")
    parser.add_argument("overrides", nargs="*", help="section.key=value")


def add_ray_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the job's Ray is: the flags init_ray takes."""
    parser.add_argument("--address", help="Ray cluster (default: $RAY_ADDRESS or a local Ray)")
    parser.add_argument("--num-cpus", type=float, help="logical CPUs of a local Ray")
    parser.add_argument(
        "--verbose", action="store_true", help="show Ray's own logs and the workers' output"
    )
