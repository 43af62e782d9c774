"""Data-parallel training with PyTorch DDP on two nodes, through sky.plugins.torch.

Runs on sky.Local() with the PyTorch installed here (CPU, the gloo backend):

    .venv/bin/pip install torch && .venv/bin/python examples/torch_ddp.py

On rented GPUs, swap the provider and backend, and let the plugin install PyTorch:

    sky.Compute(provider=sky.RunPod(), accelerator=sky.accelerators.A100(), nodes=2,
                plugins=[sky.plugins.torch(backend="nccl")])
"""

from __future__ import annotations

import skyward as sky


@sky.function
def train(steps: int) -> dict[str, float]:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    info = sky.instance_info()
    dist.init_process_group("gloo")  # MASTER_ADDR, RANK, WORLD_SIZE: set by the plugin
    try:
        torch.manual_seed(info.node)  # each rank sees its own data
        true_weights = torch.tensor([[2.0], [-3.0]])
        model = DistributedDataParallel(torch.nn.Linear(2, 1, bias=False))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(steps):
            x = torch.randn(64, 2)
            loss = torch.nn.functional.mse_loss(model(x), x @ true_weights)
            optimizer.zero_grad()
            loss.backward()  # gradients are averaged across the ranks here
            optimizer.step()
        learned = model.module.weight.detach().flatten().tolist()
        return {"rank": float(info.node), "loss": loss.item(), "w0": learned[0], "w1": learned[1]}
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    # version=None: use the torch installed here (a Local node shares this machine's packages).
    torch_plugin = sky.plugins.torch(backend="gloo", version=None)
    with sky.Compute(provider=sky.Local(), nodes=2, plugins=[torch_plugin]) as pool:
        for result in train(200) @ pool:  # every rank trains; DDP keeps their weights equal
            print(
                f"rank {result['rank']:.0f}: loss {result['loss']:.5f}, "
                f"weights [{result['w0']:.3f}, {result['w1']:.3f}]"
            )
