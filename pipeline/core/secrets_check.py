"""Refuse to start with a placeholder secret: ``python -m pipeline.core.secrets_check`` exits 1
naming every environment variable whose value still holds ``CHANGE-ME`` (``docker/.env.example``'s
marker), or whose name says it is a secret and whose value is empty. The compose stack's
``airflow-init`` runs it first, so no Airflow component starts with a secret left as shipped."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping

PLACEHOLDER = "CHANGE-ME"
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|FERNET|_KEY$|TOKEN)", re.I)


def placeholders(env: Mapping[str, str]) -> list[str]:
    """The names of the variables that hold a placeholder, or an empty secret."""
    return sorted(
        name for name, value in env.items() if PLACEHOLDER in value or (SECRET_NAME.search(name) and not value.strip())
    )


def main() -> int:
    bad = placeholders(os.environ)
    if bad:
        print(f"refusing to start: {', '.join(bad)} still hold {PLACEHOLDER} or nothing; set them in docker/.env")
        return 1
    print("no placeholder secret in the environment")
    return 0


if __name__ == "__main__":
    sys.exit(main())
