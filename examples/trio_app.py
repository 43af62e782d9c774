"""The trio face: a pool inside a trio program, with structured concurrency.

`skyward_trio` is the same library for trio apps: calls are awaited, and a cancel scope
around them reaches the nodes (a cancelled call is dropped there, never run twice).

Run: python examples/trio_app.py
"""

import time

import trio

import skyward_trio as sky


@sky.function
def slow_square(x: int, seconds: float) -> int:
    time.sleep(seconds)
    return x * x


def square(x: int) -> int:
    return x * x


async def main() -> None:
    async with sky.Compute(provider=sky.Local(), nodes=2) as pool:
        print("one call:", await (slow_square(3, 0.0) >> pool))
        print("on every node:", await (slow_square(2, 0.0) @ pool))

        # Calls in a nursery run at once, over both nodes.
        results: dict[int, int] = {}

        async def one(x: int) -> None:
            results[x] = await (slow_square(x, 0.2) >> pool)

        async with trio.open_nursery() as nursery:
            for x in range(6):
                nursery.start_soon(one, x)
        print("in a nursery:", [results[x] for x in range(6)])

        # A call that takes too long is cancelled, here and on its node.
        with trio.move_on_after(0.5) as scope:
            await (slow_square(9, 30.0) >> pool)
        print("cancelled after 0.5 s:", scope.cancelled_caught)

        print("map:", await pool.map(square, range(8)))


if __name__ == "__main__":
    trio.run(main)
