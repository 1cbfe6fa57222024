"""The command lines that messages tell a person to run, built in one place.

Every hint a message prints is ``command(...)``: ``shopml`` and its arguments, quoted for a shell.
``tests/test_cli.py`` finds every call in the sources and parses it with the real command line
parser, so a hint never names a subcommand or an option that does not exist. Placeholders a person
fills in are upper case (``VERSION``) or ``YYYY-MM-DD``.
"""

from __future__ import annotations

import shlex

PROGRAM = "shopml"  # installed with the package; ``python -m pipeline`` is the same command


def command(*args: object) -> str:
    """``shopml ARGS...`` as one shell-quoted line."""
    return shlex.join([PROGRAM, *(str(a) for a in args)])
