"""The public data samples the tests and benchmarks read, found through one setting and downloadable.

``SHOPML_DATA_DIR`` names the folder (default: ``../shared/data`` beside the checkout). ``make data``
(``python -m benchmarks.data``) downloads every sample that is missing there from its original public
source, at a pinned commit, and checks its SHA-256 before moving it into place; a file whose checksum
differs is refused and nothing is overwritten. ``python -m benchmarks.data --check`` only checks.

Written by hand (urllib) because no library fetches files by checksum without a server of its own
(pooch would, but it is one more dependency for seven files).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "SHOPML_DATA_DIR"
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
GITHUB = "https://raw.githubusercontent.com"
UCI_REPO, UCI_COMMIT = "databricks/Spark-The-Definitive-Guide", "4ba5601eb9b9aed1d01ab79775e3af228216ff6f"


def data_dir() -> Path:
    """Where the samples are: ``$SHOPML_DATA_DIR``, else ``../shared/data`` beside the checkout."""
    return Path(os.environ.get(DATA_ENV) or DEFAULT_DATA_DIR)


def sample(*parts: str) -> Path:
    """A sample's path under ``data_dir()`` (it may not exist: see ``make data``)."""
    return data_dir().joinpath(*parts)


@dataclass(frozen=True)
class Sample:
    path: str  # under the data folder
    sha256: str
    url: str  # the original public file, at a pinned commit ("" : assembled, see ``_uci``)
    source: str  # who publishes it, and its license


SAMPLES = (
    Sample(
        "uci_online_retail/online_retail_by_day_concat.csv",
        "c35975c40d0e1e105090fbb11188a409393055f873841bd012915475fc84e69f",
        "",
        f"UCI Online Retail (CC BY 4.0), the 305 daily files of github.com/{UCI_REPO}@{UCI_COMMIT[:7]} "
        "data/retail-data/by-day concatenated in date order, one header",
    ),
    Sample(
        "amazon_beauty/Beauty.txt",
        "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
        f"{GITHUB}/RUCAIBox/CIKM2020-S3Rec/2a81540ae18615d88ef88227b0c066e5b74781e5/data/Beauty.txt",
        "Amazon review data (McAuley et al.), 5-core sequences as in S3-Rec/ICLRec",
    ),
    Sample(
        "amazon_beauty/Beauty_item2attributes.json",
        "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4",
        f"{GITHUB}/RUCAIBox/CIKM2020-S3Rec/2a81540ae18615d88ef88227b0c066e5b74781e5/data/Beauty_item2attributes.json",
        "the same release's item attributes",
    ),
    Sample(
        "raw_samples/diginetica_sample/sample_train-item-views.csv",
        "98da96e05c87ef12b739e4bfd9bc7b4864106ee77371f1db9eb4413e3f78d37e",
        f"{GITHUB}/CRIPAC-DIG/SR-GNN/e21cfa431f74c25ae6e4ae9261deefe11d1cb488/datasets/sample_train-item-views.csv",
        "DIGINETICA (CIKM Cup 2016) sample shipped with SR-GNN",
    ),
    Sample(
        "raw_samples/yoochoose_clicks_100k/yoochoose-clicks-100k_train_full.txt",
        "9842c90358298ee784fcf0c9dccb2eeb283ab04368e53bdeee896747f4c03e1e",
        f"{GITHUB}/rn5l/session-rec/5dcd583cbd8d44703a5248b9a308945f24b91390/data/rsc15/prepared/"
        "yoochoose-clicks-100k_train_full.txt",
        "RecSys Challenge 2015 sample shipped with session-rec",
    ),
    Sample(
        "raw_samples/yoochoose_clicks_100k/yoochoose-clicks-100k_test.txt",
        "380410c606403531019e1ec0b4d192ef90492d594b9b5a91633b860618dd7136",
        f"{GITHUB}/rn5l/session-rec/5dcd583cbd8d44703a5248b9a308945f24b91390/data/rsc15/prepared/"
        "yoochoose-clicks-100k_test.txt",
        "the same sample's test clicks",
    ),
)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=60) as answer:
        return answer.read()


def _uci(out: Path) -> None:
    """The daily files of the UCI copy, concatenated in file-name (date) order with one header."""
    listing = json.loads(
        _get(f"https://api.github.com/repos/{UCI_REPO}/contents/data/retail-data/by-day?ref={UCI_COMMIT}")
    )
    names = sorted(entry["name"] for entry in listing if entry["name"].endswith(".csv"))
    with open(out, "wb") as f:
        for i, name in enumerate(names):
            lines = _get(f"{GITHUB}/{UCI_REPO}/{UCI_COMMIT}/data/retail-data/by-day/{name}").splitlines(keepends=True)
            f.writelines(lines if i == 0 else lines[1:])


def fetch(root: Path, check_only: bool = False) -> tuple[list[str], int]:
    """Download what is missing under ``root``: every sample's line (present, fetched or a problem),
    and how many samples are missing or different."""
    lines, problems = [], 0
    for s in SAMPLES:
        target = root / s.path
        if target.exists():
            ok = sha256(target) == s.sha256
            problems += not ok
            lines.append(
                f"{'ok     ' if ok else 'DIFFERS'} {s.path}" + ("" if ok else f" (expected sha256 {s.sha256})")
            )
            continue
        if check_only:
            problems += 1
            lines.append(f"MISSING {s.path}")
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            part = Path(tmp) / target.name
            if s.url:
                part.write_bytes(_get(s.url))
            else:
                _uci(part)
            got = sha256(part)
            if got != s.sha256:
                problems += 1
                lines.append(f"REFUSED {s.path}: sha256 {got}, expected {s.sha256} (from {s.url or s.source})")
                continue
            part.rename(target)
        lines.append(f"fetched {s.path} ({s.source})")
    if problems:
        lines.append(f"{problems} sample(s) missing or different under {root}")
    return lines, problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only check what is there; download nothing")
    parser.add_argument("--dir", type=Path, help=f"the data folder (default: ${DATA_ENV}, else {DEFAULT_DATA_DIR})")
    args = parser.parse_args(argv)
    root = args.dir or data_dir()
    lines, problems = fetch(root, args.check)
    print("\n".join(lines))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
