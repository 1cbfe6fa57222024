"""A second device on a CPU-only machine, so that tests catch the mistakes a GPU would.

CI has no GPU, and on a CPU every tensor is on the same device, so code that forgets to move a
batch to the model's device passes every test and then fails on the first CUDA machine. This module
gives tests an *accelerator* that behaves like CUDA where it matters:

- tensors moved to it report ``device.type == "meta"`` (the one device type besides ``cpu`` that
  every PyTorch build has) but keep real values on the CPU, so training and metrics really run;
- an operation that mixes a tensor on it with a (non-scalar) CPU tensor fails with the error CUDA
  gives ("Expected all tensors to be on the same device ..."), and ``.numpy()`` on it fails;
- ``.to("cpu")`` / ``.cpu()`` bring values back, as from a GPU.

``accelerator()`` turns it on for a block and makes ``models.train.select_device("auto")`` choose
it, as a CUDA machine would. PyTorch has no public way to register a device from Python (a
``PrivateUse1`` backend needs C++), hence this wrapper subclass and a dispatch mode.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

DEVICE = torch.device("meta")
# Ops allowed to mix devices: the copies that move data between them (as on CUDA).
_TRANSFERS = {"_to_copy", "copy_"}


class OnAccelerator(torch.Tensor):
    """A tensor that lives on the simulated accelerator; ``inner`` holds its values on the CPU."""

    inner: torch.Tensor

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        return torch.Tensor._make_wrapper_subclass(
            cls,
            inner.shape,
            strides=inner.stride(),
            storage_offset=inner.storage_offset(),
            dtype=inner.dtype,
            device=DEVICE,
            requires_grad=inner.requires_grad,
        )

    def __init__(self, inner: torch.Tensor) -> None:
        self.inner = inner

    def __repr__(self) -> str:
        return f"OnAccelerator({self.inner!r})"

    def tolist(self):
        return self.inner.tolist()  # as on CUDA: a copy to the host

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


def _wrap(value):
    return OnAccelerator(value) if isinstance(value, torch.Tensor) and not isinstance(value, OnAccelerator) else value


def _unwrap(value):
    return value.inner if isinstance(value, OnAccelerator) else value


def _dispatch(func, args, kwargs):
    flat, _ = tree_flatten((args, kwargs))
    on_device = [t for t in flat if isinstance(t, OnAccelerator)]
    # 0-dim CPU tensors mix with CUDA tensors in PyTorch (they act as scalars); others do not.
    on_cpu = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, OnAccelerator) and t.dim() > 0]
    name = func.overloadpacket.__name__
    if on_device and on_cpu and name not in _TRANSFERS:
        raise RuntimeError(
            "Expected all tensors to be on the same device, but found at least two devices, "
            f"{DEVICE} and cpu! (in {func}: the simulated accelerator of tests/fake_accelerator.py)"
        )
    target = kwargs.get("device")
    target = torch.device(target) if target is not None else None
    if target is not None and target.type == DEVICE.type:
        kwargs = {**kwargs, "device": torch.device("cpu")}
    if name == "_to_copy" and target is not None:
        out = func(*tree_map(_unwrap, args), **kwargs)
        return OnAccelerator(out) if target.type == DEVICE.type else out
    if on_device or (target is not None and target.type == DEVICE.type):
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kwargs))
        return tree_map(_wrap, out)
    return func(*args, **kwargs)


class _Mode(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, args, kwargs or {})


class _Constructors(TorchFunctionMode):
    """``torch.tensor(data, device=...)`` builds its tensor below the dispatcher: build it on the
    CPU and move it, as the other factories do."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if func in (torch.tensor, torch.as_tensor) and device is not None and torch.device(device) == DEVICE:
            grad = kwargs.get("requires_grad", False)
            cpu = func(*args, **{k: v for k, v in kwargs.items() if k not in ("device", "requires_grad")})
            return OnAccelerator(cpu.detach().requires_grad_(grad))
        return func(*args, **kwargs)


@contextmanager
def accelerator(monkeypatch) -> Iterator[torch.device]:
    """Inside the block, ``select_device("auto")`` returns the simulated accelerator, as
    ``torch.device("cuda")`` on a GPU machine, and tensors on it behave as described above."""
    import models.train

    real = models.train.select_device
    monkeypatch.setattr(models.train, "select_device", lambda pref="auto": DEVICE if pref == "auto" else real(pref))
    with warnings.catch_warnings(), _Constructors(), _Mode():
        # Module.load_state_dict warns that copying into a "meta" parameter is a no-op; here the copy
        # is real (copy_ goes through _dispatch to the values), as it is on CUDA.
        warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter.*")
        yield DEVICE
    monkeypatch.setattr(models.train, "select_device", real)
