"""Data-parallel training with several ranks per node: 2 nodes x 2 ranks, one per subprocess.

Runs on sky.Local() with the PyTorch installed here (CPU, the gloo backend):

    .venv/bin/pip install torch && .venv/bin/python examples/torch_ranks.py

On rented GPUs, one rank per GPU: ask for 8 GPUs a node and 8 subprocesses, and use nccl:

    sky.Compute(provider=sky.AWS(), accelerator=sky.accelerators.H100(count=8), nodes=2,
                plugins=[sky.plugins.torch(backend="nccl")],
                options=sky.Options(worker=sky.Worker(executor="process", concurrency=8)))
"""

from __future__ import annotations

import os

import skyward as sky

RANKS_PER_NODE = 2


@sky.function
def train(steps: int) -> dict[str, float]:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    info = sky.instance_info()  # info.worker: this rank's slot on its node
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # each rank its own GPU
    dist.init_process_group("gloo")  # RANK, WORLD_SIZE (4), LOCAL_RANK: set by the plugin
    try:
        torch.manual_seed(info.global_worker_index)  # each rank sees its own data
        true_weights = torch.tensor([[2.0], [-3.0]])
        model = DistributedDataParallel(torch.nn.Linear(2, 1, bias=False))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        for _ in range(steps):
            x = torch.randn(64, 2)
            loss = torch.nn.functional.mse_loss(model(x), x @ true_weights)
            optimizer.zero_grad()
            loss.backward()  # gradients are averaged across all 4 ranks here
            optimizer.step()
        # Every rank takes part in this sum, so it proves all 4 ran and met.
        ranks = torch.tensor([1.0])
        dist.all_reduce(ranks)
        learned = model.module.weight.detach().flatten().tolist()
        return {
            "rank": float(dist.get_rank()),
            "world": ranks.item(),
            "loss": loss.item(),
            "w0": learned[0],
            "w1": learned[1],
        }
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    # version=None: use the torch installed here (a Local node shares this machine's packages).
    torch_plugin = sky.plugins.torch(backend="gloo", version=None)
    worker = sky.Worker(executor="process", concurrency=RANKS_PER_NODE)
    with sky.Compute(
        provider=sky.Local(), nodes=2, plugins=[torch_plugin], options=sky.Options(worker=worker)
    ) as pool:
        # Every rank of every node trains; the result of each node is its local rank 0's.
        for node, result in enumerate(train(200) @ pool):
            print(
                f"node {node} (rank {result['rank']:.0f} of {result['world']:.0f}): loss "
                f"{result['loss']:.5f}, weights [{result['w0']:.3f}, {result['w1']:.3f}]"
            )
