"""Multi-process training with torchrun (DDP on CPU with gloo): the same code path as multi-GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO


@pytest.mark.slow
def test_torchrun_two_processes_share_the_data_and_stay_in_sync(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(REPO / "tests" / "ddp_worker.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world"] == 2 for r in ranks)
    # Each rank trained on its own half of every epoch (301 rows: 150 each, one left out).
    assert ranks[0]["rows_seen"] == ranks[1]["rows_seen"] == 150 * ranks[0]["epochs_run"]
    # All ranks took the same early-stopping decision and ended with identical weights.
    assert ranks[0]["epochs_run"] == ranks[1]["epochs_run"]
    assert ranks[0]["stopped_early"] == ranks[1]["stopped_early"]
    assert ranks[0]["checksum"] == pytest.approx(ranks[1]["checksum"], rel=0, abs=1e-9)
