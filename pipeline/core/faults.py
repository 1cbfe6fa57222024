"""Named kill points: where a test may SIGKILL the process to prove that a rerun after a crash there
leaves a consistent state and finishes the job.

``SHOPML_KILL_AT=<name>`` arms one point; the process kills itself with SIGKILL (no cleanup, no
``finally``, exactly what an OOM kill or a lost node does) when it reaches it. Unset, as in
production, a point costs one environment lookup. ``KILL_POINTS`` lists every point, in the order
the stages reach them, and ``tests/test_reliability.py`` tries each.
"""

from __future__ import annotations

import os
import signal

KILL_POINTS: tuple[str, ...] = (
    # data.version.publish_partition: a staged day replacing its published partition
    "publish.linked",  # the new partition hard-linked as event_date=D.incoming
    "publish.moved_aside",  # the published one renamed to event_date=D.replaced
    "publish.swapped",  # the new one in place, the old one not yet removed
    # data.version.version_dataset
    "version.published",  # partitions published, `dvc add` not run
    "version.added",  # `dvc add` done, not pushed
    "version.pushed",  # pushed, the version's manifest not yet written
    # lifecycle.registry.register_candidate
    "register.created",  # the model version exists, its lineage and gate tags not yet written
    "register.tagged",  # tagged, the challenger alias not yet set
    # serving.package.package
    "package.built",  # the Bento built, the model version not yet tagged with it
    "package.serving",  # the smoke test's `bentoml serve` answering (a child of this process), no check run yet
    "package.tested",  # the smoke test passed, the version not yet tagged "passed"
    # lifecycle.registry.promote
    "promote.locked",  # the promotion lock held, the alias not yet moved
    "promote.alias_set",  # the champion alias moved, the history entry not yet written
)


def kill_point(name: str) -> None:
    """SIGKILL this process here if ``SHOPML_KILL_AT`` names this point."""
    if name not in KILL_POINTS:
        raise ValueError(f"unknown kill point {name!r}; add it to KILL_POINTS")
    if os.environ.get("SHOPML_KILL_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
