"""One training loop for every model: read it top to bottom.

* device: CUDA, else Apple MPS, else CPU; bf16 autocast on CUDA;
* ``torch.compile`` when asked (it pays off on GPUs, not for small CPU runs);
* multi-GPU: under ``torchrun`` (``WORLD_SIZE`` > 1) the model is wrapped in DDP and each rank
  trains on its own shard of every epoch;
* early stopping on a validation metric (higher is better), keeping the best weights;
* a checkpoint that describes itself (model, optimizer, config, epoch, step, best metric, RNG
  states) after every epoch, so a killed run resumes where it stopped and, on CPU, ends with the
  same weights as a run that was never interrupted;
* a progress bar with samples per second.

The loop knows nothing of the model's task: ``loss_fn(model, batch)`` returns the loss and
``evaluate_fn(model)`` returns the validation metric.
"""

from __future__ import annotations

import logging
import math
import os
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
    patience: int = 3            # epochs without improvement before stopping
    seed: int = 0
    device: str = "auto"         # auto, cpu, cuda, mps
    compile: bool = False
    grad_clip: float = 1.0
    progress: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    best_metric: float
    best_epoch: int
    epochs_run: int
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    samples_per_second: float = 0.0
    device: str = "cpu"
    stopped_early: bool = False


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
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


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
    result = TrainResult(best_metric=-math.inf, best_epoch=-1, epochs_run=0, steps=0, device=str(device))
    best_state: dict[str, torch.Tensor] | None = None
    start_epoch, bad_epochs = 0, 0

    last = checkpoint_dir / "last.pt" if checkpoint_dir else None
    if last is not None and last.exists():
        ckpt = torch.load(last, map_location=device, weights_only=False)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start_epoch, bad_epochs = ckpt["epoch"] + 1, ckpt["bad_epochs"]
        result.best_metric, result.best_epoch = ckpt["best_metric"], ckpt["best_epoch"]
        result.steps, result.history = ckpt["step"], ckpt["history"]
        best_state = ckpt["best_model"]
        _set_rng_state(ckpt["rng"])

    net: nn.Module = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if config.compile:
        net = torch.compile(net)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda" \
        else torch.autocast(device_type="cpu", enabled=False)

    samples, busy = 0, 0.0
    for epoch in range(start_epoch, config.epochs):
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
            batch = train_data[order[i:i + config.batch_size]].to(device, non_blocking=True)
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
                bar.set_postfix(loss=f"{loss.item():.4f}",
                                samples_s=f"{samples / max(busy + time.perf_counter() - started, 1e-9):.0f}")
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
        result.history.append({"epoch": epoch, "train_loss": train_loss, "valid_metric": metric,
                               "samples_per_second": order.numel() * world / elapsed if elapsed else 0.0})
        result.epochs_run = epoch + 1
        if rank == 0:
            log.info("epoch %d/%d: train loss %.4f, validation %.4f, %.0f samples/s", epoch + 1, config.epochs,
                     train_loss, metric, samples / busy if busy else 0.0)
            if on_epoch is not None:
                on_epoch(result.history[-1])
        if metric > result.best_metric:
            result.best_metric, result.best_epoch, bad_epochs = metric, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            bad_epochs += 1
        if checkpoint_dir is not None and rank == 0:
            checkpoint_dir.mkdir(parents=True, exist_ok=True)
            ckpt = {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "best_model": best_state,
                "model_args": model_args or {}, "config": config.to_dict(), "epoch": epoch,
                "step": result.steps, "best_metric": result.best_metric, "best_epoch": result.best_epoch,
                "bad_epochs": bad_epochs, "history": result.history, "rng": _rng_state(),
            }
            tmp = checkpoint_dir / "last.pt.tmp"
            torch.save(ckpt, tmp)
            tmp.replace(checkpoint_dir / "last.pt")
        if bad_epochs >= config.patience:
            result.stopped_early = True
            break

    if best_state is not None:
        model.load_state_dict(best_state)
    if checkpoint_dir is not None and rank == 0 and best_state is not None:
        torch.save({"model": best_state, "model_args": model_args or {}, "config": config.to_dict(),
                    "best_metric": result.best_metric, "best_epoch": result.best_epoch},
                   checkpoint_dir / "best.pt")
    result.samples_per_second = samples / busy if busy else 0.0
    return result
