"""Run by tests/test_reliability.py as a child process that ``SHOPML_KILL_AT`` may SIGKILL at a named
point (``pipeline.core.faults``): one step of publishing a day, registering a run or promoting.

Usage: reliability_worker.py publish DAY | register RUN_ID | promote VERSION EXPECTED_CHAMPION
       | package MODEL VERSION
"""

import os
import sys
import time

from pipeline.core.settings import get_state_paths

op, args = sys.argv[1], sys.argv[2:]
if os.environ.get("SHOPML_TEST_START_AT"):  # several workers racing: all start at this moment
    time.sleep(max(0.0, float(os.environ["SHOPML_TEST_START_AT"]) - time.time()))
paths = get_state_paths()
if op == "publish":
    from pipeline.cli import main as cli

    sys.exit(cli(["run", "--start", args[0], "--days", "1"]))
elif op == "register":
    from pipeline.lifecycle import registry

    print(registry.register_candidate(paths, "next_item", args[0]).version)
elif op == "promote":
    from pipeline.lifecycle import registry

    try:
        registry.promote(paths, "next_item", args[0], expected_champion=args[1], reason="release " + args[0])
    except registry.ChampionMoved as exc:
        print(f"ChampionMoved: {exc}")
        sys.exit(3)
elif op == "package":
    from pipeline.serving.package import package

    print(package(paths, args[0], args[1], requests=30).bento_tag)
else:
    sys.exit(f"unknown operation {op!r}")
