"""What can go wrong that is not a bug, in a few kinds, each with its exit code.

The command line (``pipeline.cli``) ends with the code of the kind an error belongs to and one line
that names the problem; any other exception is a bug, and ends with its traceback and exit code 1.
Each domain error subclasses one kind (``IngestError`` is a ``BadInput``, ``UnknownDatasetVersion`` a
``NotFound``), so the mapping is by kind, never by message. The table is the reference page's
(``docs/reference/exit-codes.md``, generated from ``EXIT_CODES``).
"""

from __future__ import annotations


class BadInput(ValueError):
    """The input is wrong: a setting, a file, an option's value, data too small for the split."""


class NotFound(LookupError):
    """What was named does not exist: a dataset version, a model version or alias, a file."""


class Refused(RuntimeError):
    """The request is valid, but the rules or the current state do not allow it now."""


# exit code -> (what it means, the kinds that end with it); the CLI tries them in this order.
EXIT_CODES: dict[int, str] = {
    0: "done",
    1: "a bug: the traceback says where (please report it)",
    2: "bad input: a setting, a file, an option's value, or data too small for the split",
    3: "not found: a dataset version, a model version or alias, a Bento, a file",
    4: "the data failed validation (the summary names the expectations), or a day was not validated",
    5: "the champion moved since the candidate's evaluation: evaluate again",
    6: "the Bento failed its smoke test or parity check",
    7: "another live process is training the same run; rerun once it is gone to resume it",
    8: "refused by the rules: the gate, the online gate, a promotion the registry does not allow, "
    "replayed requests that failed",
}
