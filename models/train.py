"""One training loop for every model: read it top to bottom.

* device: CUDA, else Apple MPS, else CPU (or the one asked for); the training rows move to the
  device once when they fit, else batch by batch;
* precision: bf16 autocast on CUDA, float32 elsewhere (``precision``); ``torch.compile`` on CUDA
  (``compile``), where both pay off; the model's weights and validation stay in float32;
* multi-GPU: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP and each rank
  trains on its own shard of every epoch;
* early stopping on a validation metric (higher is better), keeping the best weights;
* a checkpoint that describes itself (model, optimizer, config, epoch, step, best metric, RNG
  states) after every epoch, so a killed run resumes where it stopped and, on CPU, ends with the
  same weights as a run that was never interrupted. Its tensors are CPU copies, so a checkpoint
  written on a GPU loads anywhere; under DDP every rank resumes from the same one;
* a progress bar with samples per second.

The loop knows nothing of the model's task: ``loss_fn(model, batch)`` returns the loss and
``evaluate_fn(model)`` returns the validation metric.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 20
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 3  # epochs without improvement before stopping
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N, mps
    precision: str = "auto"  # auto (bf16 on CUDA, else fp32), bf16, fp32
    compile: bool | str = "auto"  # auto (on CUDA only), True, False
    grad_clip: float = 1.0
    progress: bool = True

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision={self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.compile not in ("auto", True, False):
            raise ValueError(f"compile={self.compile!r}: expected auto, true or false")

    def to_dict(self) -> dict:
        return asdict(self)


PRECISIONS = ("auto", "bf16", "fp32")
# Training rows smaller than this move to the accelerator once instead of batch by batch.
RESIDENT_DATA_BYTES = 1 << 30


@dataclass
class TrainResult:
    best_metric: float
    best_epoch: int
    epochs_run: int
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    samples_per_second: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"
    compiled: bool = False
    stopped_early: bool = False
    resumed_from_epoch: int = 0  # the first epoch this call trained (0: a fresh start)


def select_device(preference: str = "auto") -> torch.device:
    """The best available device, or the one asked for."""
    if preference != "auto":
        return torch.device(preference)
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return torch.device("cuda", local_rank)
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def model_device(module: object) -> torch.device:
    """The device of a module's weights (CPU for anything without weights, e.g. a baseline scorer).

    Every evaluation, scoring and calibration call moves its inputs here, so the same code runs
    with the model on a GPU during training and on the CPU of a serving host.
    """
    if isinstance(module, nn.Module):
        for tensor in (*module.parameters(), *module.buffers()):
            return tensor.device
    return torch.device("cpu")


def resolve_precision(preference: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``preference`` on ``device``, or None for plain float32."""
    if preference == "fp32":
        return None
    if preference == "bf16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def resolve_compile(preference: bool | str, device: torch.device) -> bool:
    """Whether to ``torch.compile`` the model: on CUDA under ``auto`` (on a CPU, small models spend
    longer compiling than they save)."""
    return device.type == "cuda" if preference == "auto" else bool(preference)


def to_cpu(value: Any) -> Any:
    """A copy of a (nested) state dict whose tensors are on the CPU: checkpoints load on any host.

    Always a copy, also of CPU tensors: a snapshot of the best weights must not follow training.
    """
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_cpu(v) for v in value)
    return value


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def init_distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def _rng_state() -> dict[str, Any]:
    """The random generators' states, in types ``torch.load(weights_only=True)`` reads back (numpy's
    key array as a list of ints)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    numpy_state = (name, [int(k) for k in keys], int(pos), int(has_gauss), float(cached))
    state = {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _load_checkpoint(checkpoint_dir: Path | None, rank: int, world: int) -> dict | None:
    """The checkpoint to resume from, or None; under DDP every rank gets the same one or none.

    Rank 0 decides whether there is one and tells the others, which read the same file (the folder
    must be shared by the ranks, as the state folder is); a rank that cannot see it fails loudly
    instead of training from another epoch than the others.
    """
    last = checkpoint_dir / "last.pt" if checkpoint_dir is not None else None
    found = last is not None and last.exists()
    if world > 1:
        flag = [found if rank == 0 else None]
        torch.distributed.broadcast_object_list(flag, src=0)
        if flag[0] and not found:
            raise FileNotFoundError(
                f"rank {rank}: rank 0 resumes from {last}, which this rank cannot read; "
                "the checkpoint folder must be shared by every rank"
            )
        found = bool(flag[0])
    if not found:
        return None
    # Tensors and plain values only: a checkpoint that holds any other object is refused, not run.
    try:
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        log.warning(
            "rank %d: %s holds more than tensors and plain values (%s); training from the start", rank, last, exc
        )
        return None
    if world > 1:
        epochs = [None] * world
        torch.distributed.all_gather_object(epochs, ckpt["epoch"])
        if len(set(epochs)) != 1:
            raise RuntimeError(f"the ranks read checkpoints of different epochs {epochs} from {last}")
        log.info("rank %d resumes from epoch %d", rank, ckpt["epoch"] + 1)
    return ckpt


def train(
    model: nn.Module,
    train_data: torch.Tensor,
    loss_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    evaluate_fn: Callable[[nn.Module], float],
    config: TrainConfig,
    checkpoint_dir: Path | None = None,
    model_args: dict | None = None,
    stop_after_epochs: int | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train ``model`` on the rows of ``train_data`` and keep its best weights (in place).

    Args:
        model: the module to train; on return it holds the best validation weights.
        train_data: one training example per row, on the CPU.
        loss_fn: mean loss of a batch of rows.
        evaluate_fn: validation metric, higher is better (called on rank 0's model).
        config: the loop's settings.
        checkpoint_dir: where ``last.pt`` and ``best.pt`` go; an existing ``last.pt`` is resumed.
        model_args: the model's constructor arguments, stored in the checkpoint.
        stop_after_epochs: end after this many epochs of this call (simulates a kill, for tests).
        on_epoch: called on rank 0 with each epoch's figures (for experiment tracking).

    Returns:
        The best metric and epoch, per-epoch history and throughput.
    """
    rank, world = init_distributed()
    device = select_device(config.device)
    seed_everything(config.seed)
    model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    amp_dtype = resolve_precision(config.precision, device)
    compiled = resolve_compile(config.compile, device)
    result = TrainResult(
        best_metric=-math.inf,
        best_epoch=-1,
        epochs_run=0,
        steps=0,
        device=str(device),
        precision="bf16" if amp_dtype == torch.bfloat16 else "fp32",
        compiled=compiled,
    )
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch, bad_epochs = 0, 0

    ckpt = _load_checkpoint(checkpoint_dir, rank, world)
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, bad_epochs = ckpt["epoch"] + 1, ckpt["bad_epochs"]
        result.best_metric, result.best_epoch = ckpt["best_metric"], ckpt["best_epoch"]
        result.steps, result.history = ckpt["step"], ckpt["history"]
        result.epochs_run, result.stopped_early = start_epoch, ckpt.get("stopped_early", False)
        best_state = ckpt["best_model"]
        _set_rng_state(ckpt["rng"])
        if rank == 0:
            log.info("resuming from the checkpoint of epoch %d/%d in %s", start_epoch, config.epochs, checkpoint_dir)
    result.resumed_from_epoch = start_epoch

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compiled:
        net = torch.compile(net)
    autocast = (
        torch.autocast(device_type=device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    )
    # Small enough: move the rows to the device once, and index them there (no copy per batch).
    if device.type != "cpu" and train_data.element_size() * train_data.nelement() <= RESIDENT_DATA_BYTES:
        train_data = train_data.to(device)

    samples, busy = 0, 0.0
    # A resumed run never trains past an early stop (nor past the last epoch: start_epoch says so).
    for epoch in range(start_epoch, config.epochs if not result.stopped_early else start_epoch):
        if stop_after_epochs is not None and epoch - start_epoch >= stop_after_epochs:
            break
        net.train()
        # The order of an epoch depends on the seed and the epoch only: resuming replays it exactly.
        order = torch.randperm(train_data.shape[0], generator=torch.Generator().manual_seed(config.seed + epoch))
        # Equal shares: a rank with one batch more would wait forever for the others' gradients.
        order = order[: order.numel() // world * world][rank::world]
        batches = range(0, order.numel(), config.batch_size)
        bar = None
        if config.progress and rank == 0:
            from tqdm.auto import tqdm

            # disable=None: a live bar on a terminal, nothing in Airflow or CI logs (the epoch line says it).
            bar = tqdm(batches, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, unit="batch", disable=None)
        started = time.perf_counter()
        total = 0.0
        for i in bar if bar is not None else batches:
            batch = train_data[order[i : i + config.batch_size].to(train_data.device)].to(device, non_blocking=True)
            with autocast:
                loss = loss_fn(net, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            total += loss.item() * batch.shape[0]
            samples += batch.shape[0]
            result.steps += 1
            if bar is not None:
                bar.set_postfix(
                    loss=f"{loss.item():.4f}",
                    samples_s=f"{samples / max(busy + time.perf_counter() - started, 1e-9):.0f}",
                )
        elapsed = time.perf_counter() - started
        busy += elapsed
        if bar is not None:
            bar.close()

        net.eval()
        with torch.no_grad():
            metric = float(evaluate_fn(model)) if rank == 0 else 0.0
        if world > 1:
            # Every rank must take the same early-stopping decision, or one waits forever for the others.
            shared = torch.tensor([metric], dtype=torch.float64, device=device)
            torch.distributed.broadcast(shared, src=0)
            metric = float(shared.item())
        train_loss = total / max(order.numel(), 1)
        result.history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "valid_metric": metric,
                "samples_per_second": order.numel() * world / elapsed if elapsed else 0.0,
            }
        )
        result.epochs_run = epoch + 1
        if rank == 0:
            log.info(
                "epoch %d/%d: train loss %.4f, validation %.4f, %.0f samples/s",
                epoch + 1,
                config.epochs,
                train_loss,
                metric,
                samples / busy if busy else 0.0,
            )
            if on_epoch is not None:
                on_epoch(result.history[-1])
        if metric > result.best_metric:
            result.best_metric, result.best_epoch, bad_epochs = metric, epoch, 0
            best_state = to_cpu(model.state_dict())
        else:
            bad_epochs += 1
        result.stopped_early = bad_epochs >= config.patience
        if checkpoint_dir is not None and rank == 0:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            ckpt = {
                "model": to_cpu(model.state_dict()),
                "optimizer": to_cpu(optimizer.state_dict()),
                "best_model": best_state,
                "model_args": model_args or {},
                "config": config.to_dict(),
                "epoch": epoch,
                "step": result.steps,
                "best_metric": result.best_metric,
                "best_epoch": result.best_epoch,
                "bad_epochs": bad_epochs,
                "history": result.history,
                "rng": _rng_state(),
                "world_size": world,
                "stopped_early": result.stopped_early,
            }
            tmp = checkpoint_dir / "last.pt.tmp"
            torch.save(ckpt, tmp)
            tmp.replace(checkpoint_dir / "last.pt")
        if result.stopped_early:
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    if checkpoint_dir is not None and rank == 0 and best_state is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        torch.save(
            {
                "model": best_state,
                "model_args": model_args or {},
                "config": config.to_dict(),
                "best_metric": result.best_metric,
                "best_epoch": result.best_epoch,
            },
            checkpoint_dir / "best.pt",
        )
    result.samples_per_second = samples / busy if busy else 0.0
    return result
