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


# Left empty on purpose where the keys come from a credentials file (docker/compose.debian.yaml): an
# empty key in the environment makes botocore read AWS_SHARED_CREDENTIALS_FILE.
FROM_CREDENTIALS_FILE = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def placeholders(env: Mapping[str, str]) -> list[str]:
    """The names of the variables that hold a placeholder, or an empty secret (an empty AWS key is
    fine where ``AWS_SHARED_CREDENTIALS_FILE`` names a file that exists)."""
    keys_file = env.get("AWS_SHARED_CREDENTIALS_FILE", "")
    from_file = FROM_CREDENTIALS_FILE if keys_file and os.path.isfile(keys_file) else set()
    return sorted(
        name
        for name, value in env.items()
        if PLACEHOLDER in value or (SECRET_NAME.search(name) and not value.strip() and name not in from_file)
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
