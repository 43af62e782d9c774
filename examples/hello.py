"""Hello, Skyward: two local nodes, real SSH, real worker processes.

Run: python examples/hello.py
"""

import socket

import skyward as sky


@sky.function
def whoami(greeting: str) -> str:
    info = sky.instance_info()
    address = info.peers[info.node].private_ip
    host = socket.gethostname()
    return f"{greeting} from node {info.node}/{info.total_nodes} at {address} on {host}"


@sky.function
def square_sum(numbers: list[int]) -> int:
    mine = sky.shard(numbers)  # this node's disjoint slice
    return sum(n * n for n in mine)


def main() -> None:
    with sky.Compute(provider=sky.Local(), nodes=2) as pool:
        print(whoami("hello") >> pool)  # one node, round-robin
        for line in whoami("hi") @ pool:  # every node
            print(line)
        partial = square_sum(list(range(1000))) @ pool
        print("sum of squares 0..999 =", sum(partial), "(per node:", partial, ")")
        print("map:", pool.map(lambda x: x * 10, range(8)))


if __name__ == "__main__":
    main()
