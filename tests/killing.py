"""Run ``tests/reliability_worker.py`` in a child process, optionally armed to SIGKILL itself at a
kill point (``pipeline.core.faults``); shared by the fault-injection tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

WORKER = Path(__file__).with_name("reliability_worker.py")


def run_worker(home: Path, *args: str, kill_at: str | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHOPML_HOME": str(home), "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("SHOPML_KILL_AT", None)
    if kill_at:
        env["SHOPML_KILL_AT"] = kill_at
    return subprocess.run(
        [sys.executable, str(WORKER), *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
