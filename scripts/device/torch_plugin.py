"""``sky.plugins.torch`` against a real GPU: run on a machine with an NVIDIA GPU and PyTorch.

    python scripts/device/torch_plugin.py

The test suite checks the plugin's environment and its backend check on machines without
a GPU; this script is the check on real hardware. On ``sky.Local`` nodes, with the
PyTorch already installed (``version=None``):

- one node, ``backend="nccl"``: a function broadcast with ``@`` calls
  ``dist.init_process_group("nccl")`` with nothing else and all-reduces a tensor on the
  GPU;
- two nodes, ``backend="gloo"``: the two ranks rendezvous through the head node's address
  and port and all-reduce on the CPU (one GPU cannot hold two NCCL ranks), each seeing
  the GPU.

It prints what each rank returned and exits non-zero on any mismatch.
"""

from __future__ import annotations

import sys
from typing import Any

from _verdict import verdict

import skyward as sky


@sky.function
def nccl_rank() -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    dist.init_process_group("nccl")
    try:
        torch.cuda.set_device(0)
        tensor = torch.full((1024,), float(dist.get_rank() + 1), device="cuda")
        dist.all_reduce(tensor)
        return {
            "rank": dist.get_rank(),
            "world": dist.get_world_size(),
            "device": torch.cuda.get_device_name(0),
            "sum": float(tensor[0].item()),
        }
    finally:
        dist.destroy_process_group()


@sky.function
def gloo_rank() -> dict[str, Any]:
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        tensor = torch.tensor([float(dist.get_rank() + 1)])
        dist.all_reduce(tensor)
        return {
            "rank": dist.get_rank(),
            "world": dist.get_world_size(),
            "cuda": torch.cuda.is_available(),
            "sum": float(tensor.item()),
        }
    finally:
        dist.destroy_process_group()


def main() -> int:
    problems: list[str] = []
    options = sky.Options(console="silent")
    nccl = sky.plugins.torch(backend="nccl", version=None)
    with sky.Compute(provider=sky.Local(), nodes=1, plugins=[nccl], options=options) as pool:
        ranks = nccl_rank() @ pool
    print("nccl:", ranks)
    if [(r["rank"], r["world"], r["sum"]) for r in ranks] != [(0, 1, 1.0)]:
        problems.append(f"nccl: one rank all-reducing 1.0 should give 1.0, got {ranks}")
    gloo = sky.plugins.torch(backend="gloo", version=None)
    with sky.Compute(provider=sky.Local(), nodes=2, plugins=[gloo], options=options) as pool:
        ranks = gloo_rank() @ pool
    print("gloo:", ranks)
    if [(r["rank"], r["world"], r["sum"], r["cuda"]) for r in ranks] != [
        (0, 2, 3.0, True),
        (1, 2, 3.0, True),
    ]:
        problems.append(f"gloo: two ranks all-reducing 1 and 2 should give 3.0, got {ranks}")
    return verdict(problems)


if __name__ == "__main__":
    sys.exit(main())
