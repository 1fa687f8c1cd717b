"""Command-line scripts: `python -m tools.train`, `tools.fuse`, `tools.export`, `tools.evaluate`."""

import sys


def or_exit(function, *args, **kwargs):
    """`function(*args, **kwargs)`; a `ValueError` (bad input) becomes one
    line "error: ..." on stderr and exit status 2, the scripts' contract."""
    try:
        return function(*args, **kwargs)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
