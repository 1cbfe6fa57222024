"""Where the policy file is and how it is read: the gate's rules per model, ``monitoring``,
``pricing`` (each section parsed by its reader: ``pipeline.lifecycle.gate``,
``pipeline.lifecycle.monitor``, ``pipeline.families.price.pricing``)."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.core.config import read_yaml
from pipeline.core.errors import BadInput
from pipeline.core.tracking import REPO_ROOT

POLICY_FILE = REPO_ROOT / "policy.yaml"
POLICY_ENV = "SHOPML_POLICY"  # another policy file, e.g. a shop's own, without editing the repository's


class PolicyError(BadInput):
    """The policy file is missing a model, or a rule has a wrong value."""


def read_policy_file(path: Path | None = None) -> tuple[Path, dict]:
    """The policy file (``path``, else ``$SHOPML_POLICY``, else ``policy.yaml`` at the repo root) and
    its parsed sections: the gate's per model, ``monitoring`` and ``pricing``."""
    path = Path(path or os.environ.get(POLICY_ENV) or POLICY_FILE)
    return path, read_yaml(path, PolicyError)
