"""A shared work queue: nodes pull jobs until it is empty, and report through shared state.

The pool's collections (a queue, a counter, a dict, a lock, a barrier) are named state
every task of the pool reaches; the client reaches them too, through the pool.

Run: python examples/work_queue.py
"""

import skyward as sky


@sky.function
def worker() -> int:
    """Take jobs from the queue until it is empty; return how many this node did."""
    jobs, done, results = sky.queue("jobs"), sky.counter("done"), sky.dict("results")
    node = sky.instance_info().node
    mine = 0
    while True:
        try:
            job = jobs.get(timeout=0.5)
        except TimeoutError:  # nothing more to take
            break
        results[job] = (node, job * job)
        done.increment()
        mine += 1
    # Every node reaches this point before any goes on: the work is complete.
    sky.barrier("drained", sky.instance_info().total_nodes).wait()
    with sky.lock("report"):  # one node at a time
        best = sky.dict("best")
        if best.get("count", 0) < mine:
            best["count"] = mine
    return mine


def main() -> None:
    with sky.Compute(provider=sky.Local(), nodes=2) as pool:
        jobs = pool.queue("jobs")
        for job in range(40):
            jobs.put(job)
        per_node = worker() @ pool  # every node runs the loop
        print("jobs done per node:", per_node)
        print("counter:", pool.counter("done").value)
        results = pool.dict("results")
        print("job 7 ->", results[7], "(node, result)")
        print("most by one node:", pool.dict("best")["count"])


if __name__ == "__main__":
    main()
