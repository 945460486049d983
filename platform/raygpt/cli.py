"""Shared plumbing for the entrypoints in jobs/: one clear line on user errors."""

from __future__ import annotations

import sys
from collections.abc import Callable

from raygpt.errors import RaygptError


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
