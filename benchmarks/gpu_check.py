"""The GPU path of both models' training, run for real: what CI (no GPU) can only simulate.

``tests/fake_accelerator.py`` catches a tensor left on the wrong device; this script checks what
only a GPU shows: that bf16 autocast and ``torch.compile`` train models as good as float32 on the
CPU, that a run interrupted on the GPU resumes from its checkpoint, and that a model trained on the
GPU loads and ranks identically on a host without one. It trains on a real feature set of the
pipeline, exported here (``export``: needs the project's environment) into one ``.npz`` that the
GPU host reads with torch, numpy, scikit-learn and PyYAML alone (``run``: the project's MLflow and
Polars are not needed there):

    python -m benchmarks.gpu_check export --next-item FEATURES --propensity FEATURES --out .gpu/demo.npz
    python -m benchmarks.gpu_check run --data .gpu/demo.npz --out-dir OUT     # on the GPU host
    python -m benchmarks.gpu_check verify --data .gpu/demo.npz --out-dir OUT  # back here, CPU only

``run`` trains each model on the GPU (``params.yaml``'s settings: bf16 autocast and compile on
CUDA) and on the CPU (float32, eager) from the same seed, prints one PASS/FAIL line per check
with its figures, writes them to ``OUT/gpu_check.json`` and exits 1 if a check fails. ``verify``
loads the GPU's checkpoint the way the served pyfunc does (on the CPU) and compares its top-10
lists with the ones the GPU wrote.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from models.baselines import CooccurrenceRecommender, PopularityRecommender
from models.blend import BlendedRecommender, choose_beta
from models.metrics import scorer_metrics
from models.propensity import DCNConfig, DCNv2, packed_loss
from models.sasrec import SASRec, SASRecConfig
from models.train import TrainConfig, model_device, select_device, train

ROOT = Path(__file__).resolve().parents[1]
NDCG_TOLERANCE = 0.02  # GPU test NDCG@10 at least the CPU's minus this (seed-to-seed spread on the demo: ~0.01)
AUC_TOLERANCE = 0.01
TOP_K, VERIFY_USERS = 10, 200


def export(args) -> int:
    """One .npz with both models' training, validation and test tensors, encoded by the pipeline."""
    from pipeline.families.next_item.features import load_features as next_item_features
    from pipeline.families.purchase_propensity.features import load_features as propensity_features
    from pipeline.families.purchase_propensity.train import _propensity_tensors

    f = next_item_features(args.next_item)
    p = propensity_features(args.propensity)
    arrays = {
        "ni_windows": f.windows,
        "ni_valid_h": f.valid.histories,
        "ni_valid_t": f.valid.targets,
        "ni_test_h": f.test.histories,
        "ni_test_t": f.test.targets,
        "ni_train_items": f.train_items,
        "ni_n_items": np.int64(f.vocab.size),
        "ni_max_len": np.int64(f.windows.shape[1] - 1),
    }
    for name, seqs in (("ni_train_seqs", f.train_sequences), ("ni_test_seqs", f.test_sequences)):
        arrays[name] = np.concatenate(seqs)
        arrays[name + "_ends"] = np.cumsum([len(s) for s in seqs])
    for part, rows in (("train", p.train_rows), ("valid", p.valid_rows), ("test", p.test_rows)):
        ids, dense, labels = _propensity_tensors(rows, p.vocabs)
        arrays.update(
            {f"pp_{part}_ids": ids.numpy(), f"pp_{part}_dense": dense.numpy(), f"pp_{part}_y": labels.numpy()}
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **arrays)
    print(
        f"wrote {args.out} ({args.out.stat().st_size / 2**20:.1f} MiB): {len(f.windows):,} training windows, "
        f"{len(p.train_rows):,} propensity training rows"
    )
    return 0


def _load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as a:
        return {k: a[k] for k in a.files}


def _sequences(d: dict, name: str) -> list[np.ndarray]:
    return np.split(d[name], d[name + "_ends"][:-1])


def _loop(section: str, device: str, **overrides) -> TrainConfig:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())[section]
    precision, compile_ = ("auto", "auto") if device != "cpu" else ("fp32", False)
    config = TrainConfig(
        epochs=p["epochs"],
        batch_size=p["batch_size"],
        lr=p["lr"],
        weight_decay=p.get("weight_decay", 0.0),
        patience=p["patience"],
        seed=p["seed"],
        device=device,
        precision=precision,
        compile=compile_,
        progress=False,
    )
    return dataclasses.replace(config, **overrides)


def ndcg(scorer, histories: np.ndarray, targets: np.ndarray) -> float:
    return scorer_metrics(scorer, histories, targets)["ndcg_at_10"]


def sasrec_config(d: dict) -> SASRecConfig:
    p = yaml.safe_load((ROOT / "params.yaml").read_text())["train_recommender"]
    return SASRecConfig(
        n_items=int(d["ni_n_items"]),
        max_len=int(d["ni_max_len"]),
        dim=p["dim"],
        heads=p["heads"],
        layers=p["layers"],
        dropout=p["dropout"],
        loss=p["loss"],
        n_negatives=p["n_negatives"],
    )


def fit_sasrec(d: dict, device: str, checkpoints: Path | None = None, **overrides):
    """SASRec as the pipeline's trainer fits it (the next_item family's train), then its blend."""
    config = sasrec_config(d)
    torch.manual_seed(0)
    model = SASRec(config)
    loop = _loop("train_recommender", device, **overrides)
    started = time.perf_counter()
    result = train(
        model,
        torch.from_numpy(d["ni_windows"]),
        lambda m, b: m(b[:, :-1], b[:, 1:]),
        lambda m: ndcg(m, d["ni_valid_h"], d["ni_valid_t"]),
        loop,
        checkpoint_dir=checkpoints,
        model_args=config.to_dict(),
    )
    wall = time.perf_counter() - started
    model.eval()
    beta, _ = choose_beta(
        model,
        CooccurrenceRecommender(config.n_items, _sequences(d, "ni_train_seqs")),
        lambda m: ndcg(m, d["ni_valid_h"], d["ni_valid_t"]),
    )
    served = BlendedRecommender(model, CooccurrenceRecommender(config.n_items, _sequences(d, "ni_test_seqs")), beta)
    figures = {
        "device": result.device,
        "precision": result.precision,
        "compiled": result.compiled,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "best_valid_ndcg_at_10": result.best_metric,
        "samples_per_second": result.samples_per_second,
        "wall_s": wall,
        "test_sasrec_ndcg_at_10": ndcg(model, d["ni_test_h"], d["ni_test_t"]),
        "blend_beta": beta,
        "test_blend_ndcg_at_10": ndcg(served, d["ni_test_h"], d["ni_test_t"]),
        "history": result.history,
        "resumed_from_epoch": result.resumed_from_epoch,
    }
    return model, figures


def top_lists(model, histories: np.ndarray) -> list[list[int]]:
    with torch.no_grad():
        scores = model(torch.from_numpy(histories).to(model_device(model))).float()
        scores[:, :2] = -torch.inf
        return scores.topk(TOP_K, dim=1).indices.cpu().tolist()


def fit_dcn(d: dict, device: str, **overrides) -> dict:
    """DCN-v2 as the propensity family fits it: train, Platt-calibrate on validation, score the test."""
    from sklearn.metrics import log_loss, roc_auc_score

    p = yaml.safe_load((ROOT / "params.yaml").read_text())["train_propensity"]
    t = {k: torch.from_numpy(v) for k, v in d.items() if k.startswith("pp_")}
    n_ids = t["pp_train_ids"].shape[1]
    config = DCNConfig(
        n_dense=t["pp_train_dense"].shape[1],
        id_cardinalities=(),
        embedding_dim=p["embedding_dim"],
        cross_layers=p["cross_layers"],
        hidden=p["hidden"],
        dropout=p["dropout"],
        wide=p["wide"],
        constant_inputs=p["constant_inputs"],
    )
    assert not p["id_embeddings"], "params.yaml turned id embeddings on: export the vocab sizes too"
    torch.manual_seed(0)
    model = DCNv2(config)
    model.fit_scaler(t["pp_train_dense"])
    packed = torch.cat([t["pp_train_ids"].float(), t["pp_train_dense"], t["pp_train_y"][:, None]], dim=1)

    def valid_auc(m) -> float:
        dev = model_device(m)
        out = m(t["pp_valid_ids"].to(dev), t["pp_valid_dense"].to(dev)).float().cpu().numpy()
        return float(roc_auc_score(t["pp_valid_y"].numpy(), out))

    started = time.perf_counter()
    result = train(model, packed, packed_loss(n_ids), valid_auc, _loop("train_propensity", device, **overrides))
    model.eval()
    model.calibrate(t["pp_valid_ids"], t["pp_valid_dense"], t["pp_valid_y"])
    dev = model_device(model)
    with torch.no_grad():
        prob = model.predict_proba(t["pp_test_ids"].to(dev), t["pp_test_dense"].to(dev)).cpu().numpy()
    y = t["pp_test_y"].numpy()
    return {
        "device": result.device,
        "precision": result.precision,
        "compiled": result.compiled,
        "epochs_run": result.epochs_run,
        "samples_per_second": result.samples_per_second,
        "wall_s": time.perf_counter() - started,
        "best_valid_auc": result.best_metric,
        "test_auc": float(roc_auc_score(y, prob)),
        "test_log_loss": float(log_loss(y, prob, labels=[0, 1])),
        "mean_probability": float(prob.mean()),
        "positive_rate": float(y.mean()),
    }


def _cpu_only_load(checkpoint: Path, d: dict) -> float:
    """Test NDCG@10 of a checkpoint loaded in a process that cannot see a GPU, as a CPU host serves it."""
    code = (
        "import json,sys,numpy as np,torch; sys.path.insert(0, sys.argv[3]);"
        "from benchmarks.gpu_check import _load, ndcg; from models.sasrec import SASRec, SASRecConfig;"
        "assert not torch.cuda.is_available();"
        "c = torch.load(sys.argv[1], map_location='cpu', weights_only=True);"
        "m = SASRec(SASRecConfig(**c['model_args'])); m.load_state_dict(c['model']); m.eval();"
        "d = _load(sys.argv[2]); print(json.dumps(ndcg(m, d['ni_test_h'], d['ni_test_t'])))"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", code, str(checkpoint), str(d["__path__"]), str(ROOT)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(args) -> int:
    d = _load(args.data)
    d["__path__"] = args.data
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    device = select_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"torch {torch.__version__} on {name}; {len(d['ni_windows']):,} SASRec windows, "
        f"{len(d['pp_train_y']):,} DCN-v2 rows",
        flush=True,
    )
    report: dict = {"device_name": name, "torch": torch.__version__, "checks": {}}
    failed = []

    def check(label: str, ok: bool, text: str) -> None:
        report["checks"][label] = {"pass": bool(ok), "text": text}
        print(f"{'PASS' if ok else 'FAIL'} {label}: {text}", flush=True)
        if not ok:
            failed.append(label)

    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))  # checkpoints: a rerun trains afresh
    full_dir, resumed_dir = work / "full", work / "resumed"
    caps = {"epochs": args.max_epochs} if args.max_epochs else {}
    # The float32 CPU comparison trains both models again on the CPU: pointless when the device
    # under test is the CPU (CI's run of this script), so it is left out there.
    compare = args.cpu and device.type != "cpu"
    if args.cpu and not compare:
        print("the device is the CPU: no separate float32 CPU comparison", flush=True)
    gpu_model, gpu = fit_sasrec(d, str(device), checkpoints=full_dir, **caps)
    cpu = fit_sasrec(d, "cpu", **caps)[1] if compare else None
    report["sasrec"] = {"gpu": gpu, "cpu": cpu}
    popularity = ndcg(
        PopularityRecommender(int(d["ni_n_items"]), d["ni_train_items"]).score, d["ni_test_h"], d["ni_test_t"]
    )
    versus = (
        ""
        if cpu is None
        else (
            f" vs fp32 on the CPU {cpu['test_sasrec_ndcg_at_10']:.4f} (blend {cpu['test_blend_ndcg_at_10']:.4f}, "
            f"{cpu['epochs_run']} epochs, {cpu['samples_per_second']:,.0f} windows/s, {cpu['wall_s']:.0f} s)"
        )
    )
    check(
        "sasrec quality",
        (cpu is None or gpu["test_blend_ndcg_at_10"] >= cpu["test_blend_ndcg_at_10"] - NDCG_TOLERANCE)
        and gpu["test_sasrec_ndcg_at_10"] > popularity,
        f"test NDCG@10 {gpu['precision']}{' compiled' if gpu['compiled'] else ''} on {gpu['device']} "
        f"{gpu['test_sasrec_ndcg_at_10']:.4f} (blend {gpu['test_blend_ndcg_at_10']:.4f}, {gpu['epochs_run']} "
        f"epochs, {gpu['samples_per_second']:,.0f} windows/s, {gpu['wall_s']:.0f} s){versus}; popularity "
        f"{popularity:.4f}",
    )

    # Interrupted after 2 epochs (as a killed worker would be), then resumed from last.pt on the GPU.
    config_epochs = gpu["epochs_run"]
    torch.manual_seed(0)
    model = SASRec(sasrec_config(d))
    loop = _loop("train_recommender", str(device), epochs=config_epochs, patience=10**6)
    first = train(
        model,
        torch.from_numpy(d["ni_windows"]),
        lambda m, b: m(b[:, :-1], b[:, 1:]),
        lambda m: ndcg(m, d["ni_valid_h"], d["ni_valid_t"]),
        loop,
        checkpoint_dir=resumed_dir,
        model_args=model.config.to_dict(),
        stop_after_epochs=2,
    )
    model = SASRec(sasrec_config(d))  # a new process: fresh weights, the checkpoint restores them
    second = train(
        model,
        torch.from_numpy(d["ni_windows"]),
        lambda m, b: m(b[:, :-1], b[:, 1:]),
        lambda m: ndcg(m, d["ni_valid_h"], d["ni_valid_t"]),
        loop,
        checkpoint_dir=resumed_dir,
        model_args=model.config.to_dict(),
    )
    straight = [h["train_loss"] for h in gpu["history"]]
    resumed = [h["train_loss"] for h in second.history]
    gaps = [abs(a - b) / a for a, b in zip(straight, resumed, strict=False)]
    check(
        "resume",
        first.epochs_run == 2
        and second.resumed_from_epoch == 2
        and second.epochs_run == config_epochs
        and max(gaps) < 0.02,
        f"stopped after epoch {first.epochs_run}, resumed from epoch {second.resumed_from_epoch + 1} to "
        f"{second.epochs_run}; train loss per epoch {', '.join(f'{x:.4f}' for x in resumed)} vs uninterrupted "
        f"{', '.join(f'{x:.4f}' for x in straight)} (largest gap {max(gaps):.2%}; CUDA kernels are not bitwise "
        f"deterministic)",
    )

    best = full_dir / "best.pt"
    on_gpu = ndcg(gpu_model, d["ni_test_h"], d["ni_test_t"])
    on_cpu = _cpu_only_load(best, d)
    check(
        "gpu checkpoint on a cpu host",
        abs(on_gpu - on_cpu) < 1e-3,
        f"test NDCG@10 of best.pt {on_cpu:.4f} in a process without CUDA vs {on_gpu:.4f} on the GPU",
    )
    (out / "top10.json").write_text(json.dumps(top_lists(gpu_model, d["ni_test_h"][:VERIFY_USERS])))
    (out / "sasrec_best.pt").write_bytes(best.read_bytes())

    gpu_dcn = fit_dcn(d, str(device), **caps)
    cpu_dcn = fit_dcn(d, "cpu", **caps) if compare else None
    report["dcn"] = {"gpu": gpu_dcn, "cpu": cpu_dcn}
    versus = (
        ""
        if cpu_dcn is None
        else (
            f" vs fp32 on the CPU {cpu_dcn['test_auc']:.4f} (log loss {cpu_dcn['test_log_loss']:.4f}, "
            f"{cpu_dcn['samples_per_second']:,.0f} rows/s, {cpu_dcn['wall_s']:.0f} s)"
        )
    )
    check(
        "dcn-v2 quality",
        (cpu_dcn is None or gpu_dcn["test_auc"] >= cpu_dcn["test_auc"] - AUC_TOLERANCE)
        and abs(gpu_dcn["mean_probability"] - gpu_dcn["positive_rate"]) < 0.05,
        f"test AUC {gpu_dcn['precision']} on {gpu_dcn['device']} {gpu_dcn['test_auc']:.4f} (log loss "
        f"{gpu_dcn['test_log_loss']:.4f}, {gpu_dcn['samples_per_second']:,.0f} rows/s, {gpu_dcn['epochs_run']} "
        f"epochs, {gpu_dcn['wall_s']:.0f} s){versus}; calibrated mean probability "
        f"{gpu_dcn['mean_probability']:.4f} vs positive rate {gpu_dcn['positive_rate']:.4f}",
    )

    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    print(f"{len(report['checks']) - len(failed)}/{len(report['checks'])} checks passed")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


def verify(args) -> int:
    """Here, without a GPU: the GPU-trained checkpoint ranks the same top-10 on the CPU."""
    d = _load(args.data)
    ckpt = torch.load(args.out_dir / "sasrec_best.pt", map_location="cpu", weights_only=True)
    model = SASRec(SASRecConfig(**ckpt["model_args"]))
    model.load_state_dict(ckpt["model"])
    model.eval()
    gpu_lists = json.loads((args.out_dir / "top10.json").read_text())
    cpu_lists = top_lists(model, d["ni_test_h"][: len(gpu_lists)])
    overlap = np.mean([len(set(a) & set(b)) / TOP_K for a, b in zip(gpu_lists, cpu_lists, strict=True)])
    same = np.mean([a == b for a, b in zip(gpu_lists, cpu_lists, strict=True)])
    ok = overlap >= 0.99
    print(
        f"{'PASS' if ok else 'FAIL'} gpu-trained top-{TOP_K} on this CPU: {overlap:.2%} of items shared, "
        f"{same:.0%} of {len(gpu_lists)} lists identical in order"
    )
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("export")
    e.add_argument("--next-item", type=Path, required=True, help="a next_item feature set folder")
    e.add_argument("--propensity", type=Path, required=True, help="a purchase_propensity feature set folder")
    e.add_argument("--out", type=Path, required=True)
    for name in ("run", "verify"):
        s = sub.add_parser(name)
        s.add_argument("--data", type=Path, required=True)
        s.add_argument("--out-dir", type=Path, required=True)
        s.add_argument("--device", default="auto")
        s.add_argument("--max-epochs", type=int, help="cap params.yaml's epochs (large data, short leases)")
        s.add_argument("--no-cpu", dest="cpu", action="store_false", help="skip the float32 CPU comparison")
    args = parser.parse_args()
    return {"export": export, "run": run, "verify": verify}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
