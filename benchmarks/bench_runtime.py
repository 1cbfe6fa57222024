"""Which runtime should serve the recommender's transformer on CPU (``make bench-runtime``)?

The transformer only runs for requests that send their own history (a known user's state is
packaged once, ``pipeline.families.next_item.states``), so it is measured alone: ``user_state`` of batches of
histories (50 items, the default ``max_len``), batch 1 and 64, for

* ``eager``: PyTorch as trained (what serves today);
* ``compile``: ``torch.compile`` (Inductor, C++ code generated for this CPU);
* ``torchscript``: ``torch.jit.trace``;
* ``int8``: dynamic int8 quantization of the linear layers (``torch.ao.quantization.quantize_dynamic``);
* ``onnxruntime``: exported with ``torch.onnx.export``, run by ONNX Runtime (when ``onnxruntime``
  and ``onnxscript`` are installed: they are not in the lock file, see docs/benchmarks/serving.md).

Each runtime's answers are compared with eager's on 1,024 histories through the full ranking
(user state, scores over the catalog, top-10): the share of identical top-10 lists and the largest
score difference. A runtime is acceptable only if every top-10 is identical and scores stay within
the packaging parity tolerance (1e-4); ``--model-uri`` measures a trained model (e.g. the champion:
``models:/next_item@champion`` with ``MLFLOW_TRACKING_URI`` set) and, with ``--home``, also the
offline NDCG@10 and Recall@10 of its run's test set under each runtime, the accuracy cost of
quantization.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

TOLERANCE = 1e-4


class StateModule(nn.Module):
    """``user_state`` as a module's forward, for tracing and export."""

    def __init__(self, sasrec) -> None:
        super().__init__()
        self.sasrec = sasrec

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        return self.sasrec.user_state(seq)


def random_sasrec(items: int):
    from models.sasrec import SASRec, SASRecConfig
    from pipeline.core.params import TrainRecommenderParams

    p = TrainRecommenderParams()
    torch.manual_seed(0)
    return SASRec(
        SASRecConfig(n_items=items + 2, max_len=p.max_len, dim=p.dim, heads=p.heads, layers=p.layers, dropout=p.dropout)
    ).eval()


def histories(n: int, items: int, max_len: int, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    out = np.zeros((n, max_len), dtype=np.int64)
    for row in range(n):
        length = int(rng.integers(5, max_len + 1))
        out[row, -length:] = np.minimum(rng.zipf(1.2, length), items) + 1
    return torch.from_numpy(out)


def runtimes(sasrec, example: torch.Tensor) -> dict[str, object]:
    """name -> a callable seq -> user states, or the reason it is not available."""
    module = StateModule(sasrec).eval()
    out: dict[str, object] = {"eager": module}
    try:
        compiled = torch.compile(StateModule(sasrec).eval(), dynamic=True)
        with torch.no_grad():
            compiled(example)
        out["compile"] = compiled
    except Exception as exc:
        out["compile"] = f"unavailable: {type(exc).__name__}: {str(exc)[:120]}"
    try:
        with torch.no_grad():
            out["torchscript"] = torch.jit.trace(StateModule(sasrec).eval(), example, check_trace=False)
    except Exception as exc:
        out["torchscript"] = f"unavailable: {type(exc).__name__}: {str(exc)[:120]}"
    quantized = torch.ao.quantization.quantize_dynamic(
        copy.deepcopy(StateModule(sasrec)).eval(), {nn.Linear}, dtype=torch.qint8
    )

    def int8(seq: torch.Tensor) -> torch.Tensor:
        # The transformer layers' fused fast path reads the linear layers' weights as tensors,
        # which quantized layers do not have: the int8 model runs the layers' plain path.
        enabled = torch.backends.mha.get_fastpath_enabled()
        torch.backends.mha.set_fastpath_enabled(False)
        try:
            return quantized(seq)
        finally:
            torch.backends.mha.set_fastpath_enabled(enabled)

    out["int8"] = int8
    try:
        import onnxruntime as ort

        path = Path(tempfile.mkdtemp()) / "state.onnx"
        torch.onnx.export(
            StateModule(sasrec).eval(),
            (example,),
            str(path),
            input_names=["seq"],
            output_names=["state"],
            dynamic_shapes={"seq": {0: torch.export.Dim("batch")}},
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out["onnxruntime"] = lambda seq: torch.from_numpy(session.run(None, {"seq": seq.numpy()})[0])
    except ImportError:
        out["onnxruntime"] = "unavailable: pip install onnxruntime onnxscript"
    except Exception as exc:
        out["onnxruntime"] = f"unavailable: {type(exc).__name__}: {str(exc)[:160]}"
    return out


def rows_per_second(fn, batch: torch.Tensor, seconds: float) -> float:
    with torch.no_grad():
        fn(batch)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            fn(batch)
            done += len(batch)
    return done / (time.perf_counter() - start)


def top10(model, states: torch.Tensor, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        scores = model.score_states(states, seq)
    scores[:, :2] = -torch.inf
    return scores.topk(10, dim=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=50_000, help="catalog size of the random model")
    parser.add_argument("--model-uri", help="an MLflow next_item model (default: a random SASRec)")
    parser.add_argument("--home", help="with --model-uri: the state folder, to score the run's test set")
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    pyfunc = None
    if args.model_uri:
        import mlflow.pyfunc

        pyfunc = mlflow.pyfunc.load_model(args.model_uri)
        model = pyfunc.unwrap_python_model().model
        sasrec = getattr(model, "sasrec", model)
        n_items = sasrec.config.n_items - 2
    else:
        model = sasrec = random_sasrec(args.items)
        n_items = args.items
    max_len = sasrec.config.max_len
    probe = histories(1024, n_items, max_len, seed=1)
    found = runtimes(sasrec, probe[:64])
    with torch.no_grad():
        reference_states = sasrec.user_state(probe)
    ref_scores, ref_top = top10(model, reference_states, probe)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; SASRec over {n_items:,} items, "
        f"dim {sasrec.config.dim}, {sasrec.config.layers} layers, histories of {max_len}"
    )
    print(f"{'runtime':<12} {'batch 1 rows/s':>15} {'batch 64 rows/s':>16} {'same top-10':>12} {'max |diff|':>11}")
    report = {}
    for name, fn in found.items():
        if isinstance(fn, str):
            print(f"{name:<12} {fn}")
            report[name] = {"available": False, "reason": fn}
            continue
        one = rows_per_second(fn, probe[:1], args.seconds)
        many = rows_per_second(fn, probe[:64], args.seconds)
        with torch.no_grad():
            states = torch.cat([fn(probe[i : i + 64]) for i in range(0, len(probe), 64)])
        scores, top = top10(model, states, probe)
        same = float((top == ref_top).all(dim=1).float().mean())
        worst = float((scores - ref_scores).abs().max())
        report[name] = {
            "available": True,
            "batch1_rows_per_s": one,
            "batch64_rows_per_s": many,
            "same_top10": same,
            "max_abs_diff": worst,
            "passes_parity": same == 1.0 and worst <= TOLERANCE,
        }
        print(
            f"{name:<12} {one:>15,.0f} {many:>16,.0f} {same:>12.1%} {worst:>11.2e}"
            f"{'' if report[name]['passes_parity'] else '  (fails parity)'}",
            flush=True,
        )

    if pyfunc is not None and args.home:
        from pipeline.core.settings import get_state_paths
        from pipeline.core.tracking import mlflow_client
        from pipeline.families.next_item.evaluation import score
        from pipeline.lifecycle.evaluate import build_test_set

        paths = get_state_paths({**os.environ, "SHOPML_HOME": args.home})
        run = mlflow_client(paths).get_run(pyfunc.metadata.run_id)
        test = build_test_set(paths, "next_item", run)
        inner = pyfunc.unwrap_python_model()
        for name in ("eager", "int8"):
            states_fn = found[name]
            # The runtime under test computes the user states (eager is the model itself: its
            # StateModule calls sasrec.user_state, which must not be replaced by itself).
            if name != "eager":
                sasrec.user_state = lambda seq, fn=states_fn: fn(seq)
            try:
                metrics = score(inner_wrapper(inner), test).metrics
            finally:
                sasrec.__dict__.pop("user_state", None)
            report[name]["ndcg_at_10"], report[name]["recall_at_10"] = metrics["ndcg_at_10"], metrics["recall_at_10"]
            print(
                f"offline test set, {name}: NDCG@10 {metrics['ndcg_at_10']:.4f}, Recall@10 "
                f"{metrics['recall_at_10']:.4f}"
            )
    fastest = max(
        (n for n, r in report.items() if r.get("passes_parity")), key=lambda n: report[n]["batch64_rows_per_s"]
    )
    print(
        f"fastest runtime that passes parity: {fastest} "
        f"({report[fastest]['batch64_rows_per_s'] / report['eager']['batch64_rows_per_s']:.2f}x eager at batch 64)"
    )
    print(json.dumps(report))


def inner_wrapper(inner):
    """The recommender pyfunc's Python model as ``score`` calls it (``predict(frame)``)."""

    class Wrapped:
        def predict(self, frame):
            return inner.predict(None, frame)

    return Wrapped()


if __name__ == "__main__":
    main()
