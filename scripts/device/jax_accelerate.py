"""``sky.plugins.jax`` and ``sky.plugins.accelerate`` against a real GPU: run on a
machine with an NVIDIA GPU, JAX, PyTorch and accelerate.

    python scripts/device/jax_accelerate.py

The test suite runs both plugins on CPU nodes; this script is the check on real hardware,
on one ``sky.Local`` node with the packages already installed (``version=None``; one GPU
cannot hold two NCCL ranks, so the pools have one node):

- ``jax``: the function sees a GPU among ``jax.devices()`` and computes on it;
- ``accelerate`` with ``mixed_precision="bf16"``: ``Accelerator()`` picks the GPU, is not
  distributed (one rank: ``NO``, as ``accelerate launch`` with one process) and a
  training step under its autocast runs there, twice (the worker keeps accelerate's
  state for the next function).

It prints what the functions returned and exits non-zero on any mismatch.
"""

from __future__ import annotations

import sys
from typing import Any

from _verdict import verdict

import skyward as sky


@sky.function
def on_jax() -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    x = jax.device_put(jnp.ones((1024, 1024), dtype=jnp.float32), gpus[0]) if gpus else None
    total = float((x @ x).sum()) if x is not None else None
    return {"platforms": sorted({d.platform for d in jax.devices()}), "sum": total}


@sky.function
def accelerated_step() -> dict[str, Any]:
    import torch
    from accelerate import Accelerator

    accelerator = Accelerator()
    model = torch.nn.Linear(64, 64)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    x = torch.randn(32, 64, device=accelerator.device)
    with accelerator.autocast():
        loss = model(x).pow(2).mean()
    accelerator.backward(loss)
    optimizer.step()
    return {
        "device": str(accelerator.device),
        "mixed_precision": accelerator.mixed_precision,
        "distributed_type": accelerator.distributed_type.value,
        "loss_finite": bool(torch.isfinite(loss).item()),
    }


def main() -> int:
    problems: list[str] = []
    options = sky.Options(console="silent")
    image = sky.Image(env={"XLA_PYTHON_CLIENT_PREALLOCATE": "false"})
    jax_plugin = sky.plugins.jax(version=None)
    with sky.Compute(
        provider=sky.Local(), nodes=1, image=image, plugins=[jax_plugin], options=options
    ) as pool:
        seen = on_jax() >> pool
    print("jax:", seen)
    if "gpu" not in seen["platforms"] or seen["sum"] != 1024.0**3:
        problems.append(f"jax: a GPU computing 1024**3, got {seen}")
    accelerate = sky.plugins.accelerate({"mixed_precision": "bf16"}, version=None)
    with sky.Compute(provider=sky.Local(), nodes=1, plugins=[accelerate], options=options) as pool:
        steps = [accelerated_step() >> pool for _ in range(2)]
    print("accelerate:", steps)
    for step in steps:
        if not step["device"].startswith("cuda") or step["mixed_precision"] != "bf16":
            problems.append(f"accelerate: a bf16 step on the GPU, got {step}")
        if step["distributed_type"] != "NO":  # one rank, as `accelerate launch` gives it
            problems.append(f"accelerate: one node is not distributed, got {step}")
        if not step["loss_finite"]:
            problems.append(f"accelerate: the loss is not finite: {step}")
    return verdict(problems)


if __name__ == "__main__":
    sys.exit(main())
