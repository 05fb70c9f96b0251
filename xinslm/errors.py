"""The one error type the project raises for bad input, and how stage scripts report it."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable


class XinslmError(Exception):
    """A problem with the user's input or setup: shown as one line, never as a traceback."""


def run_main(main: Callable[[], None]) -> None:
    """Run a stage's or the CLI's main(): a XinslmError becomes one line on stderr and exit 1."""
    try:
        main()
    except XinslmError as e:
        rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", 1)) > 1 else None
        print(f"error{f' (rank {rank})' if rank else ''}: {e}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 1))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
