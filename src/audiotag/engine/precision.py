"""Device and numeric precision: chosen by measurement when set to ``auto``, once per machine.

bf16 autocast doubled a CNN's training speed on one 2-core CPU kind (AMD Zen 4, MACHINE_NOTES) and
made it slower on another (Intel Xeon model 207, fp32 + channels_last fastest; BENCHMARKS.md), so
on a CPU ``auto`` times a few steps of both and keeps the faster. A timing taken while other work
loads the cores can come out either way, so the choice is remembered (``precision.json`` in the
feature cache folder, keyed by CPU, torch, thread count, model and input shape): the same command
on the same machine then always trains in the same precision and gives the same result. On CUDA it
is bf16 where supported, else fp16 with loss scaling.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn

from .. import fsutil
from ..errors import AudiotagError

MEMORY_FILE = "precision.json"


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


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timing_key(model: nn.Module, example: torch.Tensor) -> str:
    """What a CPU timing of fp32 against bf16 depends on: the CPU, torch, threads, model and input."""
    parts = {"cpu": _cpu_model(), "torch": torch.__version__, "threads": torch.get_num_threads(),
             "model": type(model).__name__, "parameters": [list(p.shape) for p in model.parameters()],
             "input": list(example.shape)}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def _remembered(memory: Path | None) -> dict:
    if memory is None or not memory.is_file():
        return {}
    try:
        found = json.loads(memory.read_text())
    except (OSError, ValueError):
        return {}  # unreadable: time again and write it anew
    return found if isinstance(found, dict) else {}


def resolve_precision(requested: str, *, device: torch.device, model: nn.Module | None = None,
                      example: torch.Tensor | None = None, memory: Path | None = None) -> str:
    """The precision to train with. ``auto`` on a CPU measures fp32 against bf16 on ``example``
    once, and remembers the choice in the JSON file ``memory`` (when given) for the next run."""
    if requested != "auto":
        if requested == "fp16" and device.type == "cpu":
            raise AudiotagError("train.precision = fp16 is for CUDA devices", hint="use bf16 or fp32 on a CPU")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if model is None or example is None or not torch.backends.mkldnn.is_available():
        return "fp32"
    key = timing_key(model, example)
    known = _remembered(memory)
    if known.get(key) in ("fp32", "bf16"):
        return known[key]
    state = torch.get_rng_state()  # the timing must not change the caller's random stream
    try:
        fp32 = _time_steps(model, example, device, "fp32")
        bf16 = _time_steps(model, example, device, "bf16")
    finally:
        torch.set_rng_state(state)
    choice = "bf16" if bf16 < 0.9 * fp32 else "fp32"
    if memory is not None:
        try:
            fsutil.write_text(memory, json.dumps({**_remembered(memory), key: choice}, indent=2))
        except AudiotagError:
            pass  # a read-only cache folder: the choice holds for this run, and run.json records it
    return choice


def inference_precision(trained: str, device: torch.device) -> str:
    """The precision to predict with on ``device`` for a model trained in ``trained`` (a GPU run's
    fp16 becomes fp32 on a CPU, which has no fast fp16)."""
    return "fp32" if device.type == "cpu" and trained == "fp16" else trained
