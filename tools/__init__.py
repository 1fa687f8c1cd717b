"""Command-line scripts: `python -m tools.train`, `tools.fuse`, `tools.export`, `tools.evaluate`."""

import sys

from absl import flags

TRUE_WORDS = ("true", "t", "1", "yes", "y")
FALSE_WORDS = ("false", "f", "0", "no", "n")


class AutoBoolParser(flags.ArgumentParser):
    """Parses "auto", or a boolean word, to "auto", "true" or "false"."""

    syntactic_help = "one of auto, true or false"

    def parse(self, argument):
        if isinstance(argument, bool):
            return "true" if argument else "false"
        word = str(argument).strip().lower()
        if word == "auto":
            return "auto"
        if word in TRUE_WORDS:
            return "true"
        if word in FALSE_WORDS:
            return "false"
        raise ValueError(f"{argument!r} is not auto, true or false")

    def flag_type(self):
        return "auto|true|false"


def define_auto_bool(name, default, help, flag_values=flags.FLAGS):
    """A flag that is "auto", "true" or "false", written the way users write
    booleans: `--name` (true), `--noname` (false) or `--name=auto|true|false`.

    absl's enum flag takes the next argument as its value when written bare
    (`--jit_compile --steps_per_execution=4` failed with "value should be
    one of <auto|true|false>"); this one is a boolean flag to the parser.

    Example:

    ```python
    define_auto_bool("jit_compile", "auto", "XLA for the train step.")
    # --jit_compile -> "true", --nojit_compile -> "false", default "auto"
    ```
    """
    flag = flags.Flag(
        AutoBoolParser(), flags.ArgumentSerializer(), name, default, help, boolean=True
    )
    return flags.DEFINE_flag(flag, flag_values)


def or_exit(function, *args, **kwargs):
    """`function(*args, **kwargs)`; a `ValueError` (bad input) becomes one
    line "error: ..." on stderr and exit status 2, the scripts' contract."""
    try:
        return function(*args, **kwargs)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
