"""Write the hashed locks from an environment's pins: ``python tools/lock.py PINS`` (``make lock``).

PINS is ``pip freeze`` of an environment with every extra installed. uv (pinned by the Makefile)
adds the sha256 of every file PyPI has for each pinned version, every platform's, so that
``pip install --require-hashes --no-deps`` installs those files and nothing else. Three files:

- ``requirements.lock``: every pinned package but torch.
- ``requirements-torch-cpu.lock``: the CPU build of torch that pip finds here (its find-links), by
  its hash. ``make install`` tries it first: a CPU machine never downloads the CUDA runtime.
- ``requirements-torch.lock``: PyPI's torch of the same version and what it loads beside it on
  Linux (the CUDA runtime, triton; markers keep them off macOS), for a machine with no CPU build.

Two torch files, not one with both hashes: given both, pip takes PyPI's build.
uv, not pip-tools: it reads the hashes from the index without downloading every file.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEADER = """\
# Exact versions of every package but torch (requirements-torch*.lock), for Python 3.11, each with the
# sha256 of every file PyPI has for it: `pip install --require-hashes --no-deps` installs these files
# and nothing else. Regenerate: `make lock`.
"""
TORCH_CPU_HEADER = """\
# The CPU build of torch, by the hash of the file pip finds on the machine that ran `make lock` (its
# find-links); `make install` tries it first, then requirements-torch.lock. Regenerate: `make lock`.
"""
TORCH_HEADER = """\
# PyPI's torch, and on Linux the CUDA runtime and triton it loads, hashed like requirements.lock: what
# `make install` takes where no CPU build is found, and docker/train.Dockerfile. Regenerate: `make lock`.
"""


def _name(requirement: str) -> str:
    """The PEP 503 normal form of a requirement's name (``zc.lockfile`` -> ``zc-lockfile``)."""
    return re.sub(r"[-_.]+", "-", re.split(r"[=<>!~ ;\[]", requirement, maxsplit=1)[0]).lower()


def compile_hashed(requirements: list[str], python: str, *options: str) -> dict[str, str]:
    """Each requirement (and what it needs) -> its hashed block, as uv writes it."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as f:
        f.write("\n".join(requirements) + "\n")
        f.flush()
        out = subprocess.run(
            [
                str(Path(python).parent / "uv"),
                "pip",
                "compile",
                f.name,
                "--generate-hashes",
                "--no-header",
                "--no-annotate",
                "--python-version",
                "3.11.7",
                "--index-url",
                "https://pypi.org/simple",
                "--native-tls",
                *options,
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    blocks: dict[str, str] = {}
    for block in re.split(r"\n(?=\S)", out.strip()):
        if block and not block.startswith("#"):
            blocks[_name(block)] = block
    return blocks


def local_torch(python: str, version: str) -> tuple[str, str]:
    """The version and sha256 of the torch file pip itself takes here (find-links first)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [
                python,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--only-binary",
                ":all:",
                f"torch=={version}",
                "-d",
                tmp,
            ],
            check=True,
        )
        (wheel,) = Path(tmp).glob("torch-*.whl")
        return wheel.name.split("-")[1], hashlib.sha256(wheel.read_bytes()).hexdigest()


def main(pins_file: str, python: str) -> None:
    pins = [
        re.sub(r"^(torch==[0-9.]+)\+\w+$", r"\1", line.strip())  # 2.13.0+cpu -> 2.13.0
        for line in Path(pins_file).read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pinned = {_name(p) for p in pins}
    torch = next(p for p in pins if _name(p) == "torch").split("==")[1]
    # Linux's resolution, every file's hash: the same packages install on macOS.
    blocks = compile_hashed(pins, python, "--python-platform", "x86_64-manylinux_2_28")
    missing = pinned - blocks.keys()
    if missing:
        sys.exit(f"uv did not lock {sorted(missing)}")
    # torch alone, for every platform, the other pins as constraints: its extra packages with markers.
    with tempfile.NamedTemporaryFile("w", suffix=".txt") as constraints:
        constraints.write("\n".join(p for p in pins if _name(p) != "torch") + "\n")
        constraints.flush()
        torch_blocks = compile_hashed([f"torch=={torch}"], python, "--universal", "-c", constraints.name)
    cpu_version, cpu_hash = local_torch(python, torch)
    files = {
        "requirements.lock": (HEADER, [blocks[n] for n in sorted(pinned - {"torch"})]),
        "requirements-torch-cpu.lock": (TORCH_CPU_HEADER, [f"torch=={cpu_version} \\\n    --hash=sha256:{cpu_hash}"]),
        "requirements-torch.lock": (
            TORCH_HEADER,
            [b for n, b in sorted(torch_blocks.items()) if n not in pinned or n == "torch"],
        ),
    }
    for name, (header, entries) in files.items():
        (ROOT / name).write_text(header + "\n".join(entries) + "\n")
        print(f"{name}: {len(entries)} packages")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else sys.executable)
