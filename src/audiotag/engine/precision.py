"""Device and numeric precision: chosen by measurement when set to ``auto``.

bf16 autocast doubled a CNN's training speed on one 2-core CPU kind (AMD Zen 4, MACHINE_NOTES) and
made it slower on another (Intel Xeon model 207, fp32 + channels_last fastest; BENCHMARKS.md), so
on a CPU ``auto`` times a few steps of both and keeps the faster. On CUDA it is bf16 where
supported, else fp16 with loss scaling.
"""

from __future__ import annotations

import contextlib
import copy
import time

import torch
from torch import nn

from ..errors import AudiotagError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise AudiotagError("train.device = cuda but no CUDA device is available",
                            hint="use train.device=auto (falls back to the CPU) or cpu")
    return torch.device(name)


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def _time_steps(model: nn.Module, x: torch.Tensor, device: torch.device, precision: str, steps: int = 3) -> float:
    model = copy.deepcopy(model).to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    target = torch.zeros(x.shape[0], model(x[:2])["logits"].shape[1], device=device)

    def step():
        with autocast(device, precision):
            logits = model(x)["logits"]
        loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def resolve_precision(requested: str, *, device: torch.device, model: nn.Module | None = None,
                      example: torch.Tensor | None = None) -> str:
    """The precision to train with. ``auto`` on a CPU measures fp32 against bf16 on ``example``."""
    if requested != "auto":
        if requested == "fp16" and device.type == "cpu":
            raise AudiotagError("train.precision = fp16 is for CUDA devices", hint="use bf16 or fp32 on a CPU")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if model is None or example is None or not torch.backends.mkldnn.is_available():
        return "fp32"
    state = torch.get_rng_state()  # the timing must not change the caller's random stream
    try:
        fp32 = _time_steps(model, example, device, "fp32")
        bf16 = _time_steps(model, example, device, "bf16")
    finally:
        torch.set_rng_state(state)
    return "bf16" if bf16 < 0.9 * fp32 else "fp32"


def inference_precision(trained: str, device: torch.device) -> str:
    """The precision to predict with on ``device`` for a model trained in ``trained`` (a GPU run's
    fp16 becomes fp32 on a CPU, which has no fast fp16)."""
    return "fp32" if device.type == "cpu" and trained == "fp16" else trained
