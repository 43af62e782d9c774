"""Batch inference, streamed: results come back as the nodes produce them.

Two local nodes (real SSH, real worker processes) score shards of a dataset with a
stand-in "model": a generator function streams its predictions back one batch at a time,
`sky.gather(..., stream=True)` hands back whole shards in the order they finish, and
`Iterator[...]` parameters take input that is still being read.

Run: python examples/streaming.py
"""

from collections.abc import Iterator

import skyward as sky

WEIGHTS = [0.5, -0.25, 2.0]


def model(row: list[float]) -> float:
    """A stand-in for a real model: a dot product."""
    return sum(w * x for w, x in zip(WEIGHTS, row, strict=True))


def rows(shard: int, count: int) -> Iterator[list[float]]:
    for i in range(count):
        yield [float(shard), float(i), float(i % 3)]


@sky.function
def predict(shard: int, batches: int, batch_size: int = 4) -> Iterator[list[float]]:
    """Yield the shard's predictions a batch at a time (a generator streams)."""
    batch: list[float] = []
    for row in rows(shard, batches * batch_size):
        batch.append(model(row))
        if len(batch) == batch_size:
            yield batch
            batch = []


@sky.function
def score_shard(shard: int) -> tuple[int, float]:
    node = sky.instance_info().node
    return node, sum(model(row) for row in rows(shard, 1000))


@sky.function
def count_words(lines: Iterator[str]) -> int:
    """The node reads `lines` as they arrive: the call starts before the input ends."""
    return sum(len(line.split()) for line in lines)


def main() -> None:
    with sky.Compute(provider=sky.Local(), nodes=2) as pool:
        # 1. One call, its batches arriving while the node is still computing.
        for number, batch in enumerate(predict(shard=7, batches=3) >> pool):
            print(f"batch {number}: {[round(p, 2) for p in batch]}")

        # 2. Eight shards over two nodes, each result as soon as it is done.
        calls = [score_shard(shard) for shard in range(8)]
        totals = []
        for node, total in sky.gather(*calls, stream=True) >> pool:
            totals.append(total)
            print(f"a shard scored {total:,.1f} on node {node}")
        print(f"all {len(totals)} shards: {sum(totals):,.1f}")

        # 3. An input streamed to the node as it is produced.
        corpus = (f"line {i} of a corpus too large to hold" for i in range(10_000))
        print("words:", count_words(corpus) >> pool)

        # 4. pool.map: many small calls batched into few messages, results in input order.
        print("map:", pool.map(model, [[1.0, 2.0, 3.0], [0.0, 0.0, 1.0]]))


if __name__ == "__main__":
    main()
