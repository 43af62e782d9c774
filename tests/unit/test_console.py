"""What the consoles make of events: the tally (nodes, tasks, progress, cost) and the lines."""

from __future__ import annotations

import io
import re
from collections.abc import Callable

import attrs
import pytest
from rich.console import Console

import skyward_trio as st
from skyward_trio import _console
from skyward_trio._console import Tally, describe, plain

JOB = "abcd1234"


def _feed(tally: Tally, *events: st.Event) -> list[tuple[str, str]]:
    lines: list[tuple[str, str]] = []
    for event in events:
        lines.extend(describe(event, tally))
        tally.update(event)
    return lines


def _started(task_id: int, count: int, at: float, node: int = 0) -> st.TaskStarted:
    return st.TaskStarted(job_id=JOB, time=at, node=node, task="map", task_id=task_id, count=count)


def _completed(task_id: int, count: int, at: float, ok: bool = True) -> st.TaskCompleted:
    return st.TaskCompleted(
        job_id=JOB, time=at, node=0, task="map", task_id=task_id, ok=ok, seconds=1.0, count=count
    )


def test_progress_counts_items_against_the_submitted_total() -> None:
    tally = Tally()
    _feed(
        tally,
        st.WorkSubmitted(job_id=JOB, time=10.0, task="map", count=100),
        _started(1, 60, 10.0),
        _started(2, 40, 10.0),
        _completed(1, 60, 11.0),
    )
    assert tally.in_flight == 40
    assert tally.progress(now=12.0) == (60, 100, 30.0)
    # Batch 2's node was lost: it is sent again under the same id, and ends once.
    _feed(tally, _started(2, 40, 12.0, node=1), _completed(2, 40, 14.0, ok=False))
    assert (tally.in_flight, tally.done, tally.failed) == (0, 60, 40)
    # Idle: the rate is the work's (100 items in 4 s), not one that decays afterwards.
    assert tally.progress(now=100.0) == (100, 100, 25.0)
    # The next submission opens a new window; a map over a generator has no total.
    _feed(tally, st.WorkSubmitted(job_id=JOB, time=200.0, task="map", count=None))
    assert tally.progress(now=201.0) == (0, None, 0.0)


def test_single_calls_count_toward_a_total_of_what_is_known() -> None:
    tally = Tally()
    _feed(tally, _started(7, 1, 0.0), _started(8, 1, 0.0))
    assert tally.progress(now=1.0) == (0, 2, 0.0)
    _feed(tally, _completed(7, 1, 1.0))
    assert tally.progress(now=1.0) == (1, 2, 1.0)


def test_node_states_follow_a_node_through_loss_and_replacement() -> None:
    tally = Tally()
    nodes = st.Nodes(desired=2)
    lines = _feed(
        tally,
        st.ClusterRequested(job_id=JOB, time=0.0, provider="local", nodes=nodes),
        st.InstanceProvisioned(job_id=JOB, time=1.0, node=1, instance_id="a", hourly_price=3.6),
        st.BootstrapProgress(job_id=JOB, time=2.0, node=1, instance_id="a", phase="ssh"),
    )
    assert (tally.nodes[0].state, tally.nodes[1].state) == ("provisioning", "connecting")
    assert lines == [
        ("pool", f"requested 2 node(s) from local (job {JOB})"),
        ("node 1", "instance a provisioned ($3.60/h)"),
        ("node 1", "connecting"),
    ]
    lines = _feed(
        tally,
        st.InstanceBootstrapped(job_id=JOB, time=3.0, node=1, instance_id="a", seconds=2.0),
        st.InstancePreempted(job_id=JOB, time=4.0, node=1, instance_id="a", reason="gone"),
        st.InstanceDestroyed(job_id=JOB, time=1001.0, node=1, instance_id="a"),
    )
    assert tally.nodes[1].state == "lost"
    assert lines == [
        ("node 1", "ready (2.0 s)"),
        ("node 1", "lost (gone)"),
        ("node 1", "instance a terminated"),
    ]
    lines = _feed(
        tally,
        st.InstanceProvisioned(job_id=JOB, time=1002.0, node=1, instance_id="b", hourly_price=0),
        st.InstanceBootstrapped(job_id=JOB, time=1003.0, node=1, instance_id="b", seconds=1.0),
        st.InstanceReplaced(job_id=JOB, time=1003.0, node=1, old_instance_id="a", instance_id="b"),
    )
    assert lines[0] == ("node 1", "replacement instance b provisioned ($0.00/h)")
    assert (tally.nodes[1].state, tally.nodes[1].replaced, tally.ready) == ("ready", 1, 1)
    assert tally.cost(now=5000.0) == pytest.approx(1.0)  # $3.60/h for 1,000 s
    _feed(tally, st.InstanceDestroyed(job_id=JOB, time=1010.0, node=1, instance_id="b"))
    assert tally.nodes[1].state == "terminated"


def test_lines_for_failures_scaling_errors_and_the_close() -> None:
    tally = Tally()
    assert _feed(
        tally,
        _completed(3, 250, 1.0, ok=False),
        st.TaskCompleted(
            job_id=JOB, time=1.0, node=2, task="train", task_id=9, ok=False, seconds=0.5
        ),
        st.TaskCompleted(
            job_id=JOB,
            time=1.0,
            node=1,
            task="train",
            task_id=10,
            ok=False,
            seconds=2.0,
            failure="cancelled",
        ),
        st.ClusterScaled(job_id=JOB, time=1.0, previous=1, target=3, reason="4 call(s) waiting"),
        st.Error(job_id=JOB, time=1.0, message="node 2 failed during ssh: refused", node=2),
        st.Error(job_id=JOB, time=1.0, message="a reader fell behind"),
        st.ClusterDestroyed(job_id=JOB, time=1.0, instances=3, instance_seconds=90.0, cost=0.5),
        st.Log(job_id=JOB, time=1.0, node=0, stream="stdout", text="one\n\x1b[31mtwo\x1b[0m\n"),
        _completed(4, 1, 1.0),
    ) == [
        ("node 0", "a map batch of 250 item(s) failed after 1.00 s"),
        ("node 2", "train() failed after 0.50 s"),
        ("node 1", "train() cancelled after 2.00 s"),
        ("pool", "scaling from 1 to 3 node(s): 4 call(s) waiting"),
        ("node 2", "node 2 failed during ssh: refused"),
        ("pool", "a reader fell behind"),
        ("pool", "closed: 3 instance(s) up 1.5 min in all, cost about $0.50"),
        ("node 0", "one"),
        ("node 0", "two"),
    ]
    assert list(tally.output) == [(0, "one"), (0, "two")]
    assert tally.target == 3


def test_plain_strips_terminal_codes() -> None:
    assert plain("\x1b[1;32mok\x1b[0m 100%\x1b[K") == "ok 100%"
    assert plain("no codes") == "no codes"


@pytest.mark.parametrize("value", ["0", "-1", "soon", "inf", "nan", ""])
def test_heartbeat_interval_refuses_what_is_not_a_positive_number(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(_console.INTERVAL_ENV, value)
    with pytest.raises(ValueError, match=r"SKYWARD_LOG_METRICS_INTERVAL=.*must be a number"):
        _console.heartbeat_interval()


def test_heartbeat_interval_default_and_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_console.INTERVAL_ENV, raising=False)
    assert _console.heartbeat_interval() == 30.0
    monkeypatch.setenv(_console.INTERVAL_ENV, "2.5")
    assert _console.heartbeat_interval() == 2.5


def _metric(node: int, name: str, value: float, gpu: int | None = None) -> st.Metric:
    return st.Metric(job_id=JOB, time=5.0, node=node, name=name, value=value, gpu=gpu)


def _two_nodes_sampled(tally: Tally) -> None:
    _feed(
        tally,
        st.ClusterRequested(job_id=JOB, time=0.0, provider="local", nodes=st.Nodes(desired=2)),
        _metric(0, "cpu", 20.0),
        _metric(0, "cpu", 30.0),  # the latest value counts
        _metric(0, "memory_used", 2048.0),
        _metric(0, "memory_total", 8192.0),
        _metric(0, "gpu", 90.0, gpu=0),
        _metric(0, "gpu", 70.0, gpu=1),
        _metric(0, "gpu_memory", 1024.0, gpu=0),
        _metric(0, "gpu_memory", 3072.0, gpu=1),
        _metric(0, "gpu_memory_total", 40960.0, gpu=0),
        _metric(0, "gpu_memory_total", 40960.0, gpu=1),
        _metric(0, "gpu_temp", 61.0, gpu=0),
        _metric(0, "gpu_temp", 66.0, gpu=1),
        _metric(1, "cpu", 50.0),
        _metric(1, "memory", 75.0),
        _metric(1, "queue_depth", 3.0),  # a Custom metric: kept, not summed up
    )


def test_metrics_make_no_line_and_sum_up_per_node() -> None:
    tally = Tally()
    _two_nodes_sampled(tally)
    assert describe(_metric(0, "cpu", 1.0), tally) == []
    zero = tally.usage(0)
    assert zero is not None
    assert (zero.cpu, zero.memory, zero.memory_used, zero.memory_total) == (30.0, 25.0, 2048, 8192)
    assert (zero.gpus, zero.gpu, zero.gpu_memory, zero.gpu_memory_total) == (2, 80.0, 4096, 81920)
    assert zero.gpu_temp == 66.0  # the hottest
    one = tally.usage(1)
    assert one is not None
    assert (one.cpu, one.memory, one.memory_used, one.gpus, one.gpu) == (50.0, 75.0, None, 0, None)
    assert tally.usage(2) is None
    assert tally.usage_summary() == "cpu 40%, mem 50%, gpu 80%"  # means over the nodes


def test_the_heartbeat_adds_the_nodes_mean_use_once_there_is_any() -> None:
    tally = Tally()
    _feed(
        tally,
        st.ClusterRequested(job_id=JOB, time=0.0, provider="local", nodes=st.Nodes(desired=1)),
    )
    plain_beat = "0/1 nodes ready, 0 running, 0 done, 0 failed, 0.0 tasks/s, $0.00 so far"
    assert tally.heartbeat(0.0, now=1.0) == plain_beat
    _two_nodes_sampled(tally)
    assert tally.heartbeat(0.0, now=1.0) == (
        "0/2 nodes ready, 0 running, 0 done, 0 failed, 0.0 tasks/s, $0.00 so far; "
        "node mean cpu 40%, mem 50%, gpu 80%"
    )


def test_a_lost_or_terminated_node_drops_its_figures() -> None:
    tally = Tally()
    _two_nodes_sampled(tally)
    _feed(
        tally,
        st.InstanceProvisioned(job_id=JOB, time=1.0, node=1, instance_id="b", hourly_price=0.0),
        st.InstancePreempted(job_id=JOB, time=6.0, node=0, instance_id="a", reason="gone"),
        st.InstanceDestroyed(job_id=JOB, time=7.0, node=1, instance_id="b"),
    )
    assert tally.usage(0) is None
    assert tally.usage(1) is None
    assert tally.usage_summary() == ""


def _drawn(mode: str, tally_events: Callable[[Tally], None]) -> str:
    console = Console(record=True, file=io.StringIO(), force_terminal=True, width=140)
    live = _console.LiveConsole(mode, console, defaulted_to_local=False)  # type: ignore[arg-type]
    tally_events(live.tally)
    live.close()
    return console.export_text()


def test_rich_shows_each_nodes_cpu_memory_and_gpus() -> None:
    text = _drawn("rich", _two_nodes_sampled)
    header = next(line for line in text.splitlines() if "instance" in line)
    assert header.split() == ["│", "node", "instance", "state", "for", "cpu", "mem", "gpu", "│"]
    assert re.search(
        r"│ +0 +- +provisioning +\S+ +30% +25% 2\.0/8\.0 GiB +2× 80% 4\.0/80\.0 GiB 66°C", text
    )
    assert re.search(r"│ +1 +- +provisioning +\S+ +50% +75% +- +│", text)


def test_rich_without_metrics_draws_no_usage_columns_and_minimal_a_compact_form() -> None:
    def requested(tally: Tally) -> None:
        tally.update(
            st.ClusterRequested(job_id=JOB, time=0.0, provider="local", nodes=st.Nodes(desired=1))
        )

    header = next(line for line in _drawn("rich", requested).splitlines() if "instance" in line)
    assert header.split() == ["│", "node", "instance", "state", "for", "│"]
    minimal = _drawn("minimal", _two_nodes_sampled)
    assert (
        "0/2 nodes ready · 0 running · 0 done · 0 failed · $0.00 · cpu 40% · mem 50% · gpu 80%"
        in (minimal)
    )


# An AWS pool of two ready nodes, whose node 1 is told it will be reclaimed.
RECLAIMED: tuple[st.Event, ...] = (
    st.ClusterRequested(job_id=JOB, time=0.0, provider="aws", nodes=st.Nodes(desired=2)),
    st.InstanceProvisioned(job_id=JOB, time=1.0, node=0, instance_id="i-0a", hourly_price=0),
    st.InstanceBootstrapped(job_id=JOB, time=1.0, node=0, instance_id="i-0a", seconds=1.0),
    st.InstanceProvisioned(job_id=JOB, time=1.0, node=1, instance_id="i-1b", hourly_price=0),
    st.InstanceBootstrapped(job_id=JOB, time=2.0, node=1, instance_id="i-1b", seconds=1.0),
    st.InstanceInterrupting(
        job_id=JOB, time=3.0, node=1, instance_id="i-1b", action="terminate", at=123.0
    ),
)


def test_the_log_console_prints_when_and_how_a_node_is_reclaimed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = _console.LogConsole(interval=30.0, defaulted_to_local=False)
    for event in RECLAIMED:
        log.on_event(event)
    lines = capsys.readouterr().err.splitlines()
    stamp = _console._stamp  # local time, as every line's own stamp
    assert lines[-1] == (
        f"{stamp(3.0)}  node 1  AWS reclaims spot instance i-1b at {stamp(123.0)} "
        "(terminate); draining"
    )
    tally = log.tally
    assert (tally.nodes[0].state, tally.nodes[1].state, tally.ready) == ("ready", "draining", 1)


def test_the_log_console_says_what_a_rebalance_recommendation_does(
    capsys: pytest.CaptureFixture[str],
) -> None:
    log = _console.LogConsole(interval=30.0, defaulted_to_local=False)
    for event in RECLAIMED[:-1]:
        log.on_event(event)
    risk = st.InstanceAtRisk(
        job_id=JOB, time=3.0, node=1, instance_id="i-1b", at=2.5, replaced=True
    )
    log.on_event(risk)
    log.on_event(st.Error(job_id=JOB, time=4.0, message="not launched ahead", node=1))
    lines = capsys.readouterr().err.splitlines()
    stamp = _console._stamp
    assert lines[-2] == (
        f"{stamp(3.0)}  node 1  EC2 recommends replacing spot instance i-1b (high risk of "
        "interruption); replacing it: the node is handed over once its replacement is ready"
    )
    # An at-risk node still serves: it counts as ready, and an error does not fail it.
    assert (log.tally.nodes[1].state, log.tally.ready) == ("at risk", 2)
    kept = attrs.evolve(risk, replaced=False)
    assert _console.describe(kept, log.tally)[0][1].endswith(
        "kept until a notice comes: this node cannot be handed over (a collective pool's, "
        "or node 0 holding the collections)"
    )


def test_a_notice_names_no_cloud_but_aws_and_gcp_and_spares_a_replaced_instance() -> None:
    tally = Tally()
    _feed(
        tally,
        st.ClusterRequested(job_id=JOB, time=0.0, provider="ssh", nodes=st.Nodes(desired=1)),
        st.InstanceProvisioned(job_id=JOB, time=1.0, node=0, instance_id="new", hourly_price=0),
        st.InstanceBootstrapped(job_id=JOB, time=1.0, node=0, instance_id="new", seconds=1.0),
    )
    late = st.InstanceInterrupting(
        job_id=JOB, time=2.0, node=0, instance_id="old", action="stop", at=60.0
    )
    tally.update(late)
    assert tally.nodes[0].state == "ready"  # the notice was an earlier instance's
    notice = attrs.evolve(late, instance_id="new")
    assert _feed(tally, notice) == [
        (
            "node 0",
            f"the provider reclaims instance new at {_console._stamp(60.0)} (stop); draining",
        )
    ]
    assert tally.nodes[0].state == "draining"
    gcp = Tally()
    _feed(
        gcp,
        st.ClusterRequested(job_id=JOB, time=0.0, provider="gcp", nodes=st.Nodes(desired=1)),
        st.InstanceProvisioned(job_id=JOB, time=1.0, node=0, instance_id="vm", hourly_price=0),
    )
    preempted = attrs.evolve(notice, instance_id="vm", action="terminate", at=32.0)
    assert _feed(gcp, preempted) == [
        (
            "node 0",
            f"Compute Engine preempts spot VM vm at {_console._stamp(32.0)} (terminate); draining",
        )
    ]


def test_rich_shows_a_draining_node_and_minimal_prints_the_notice() -> None:
    def reclaimed(tally: Tally) -> None:
        _feed(tally, *RECLAIMED)

    rich = _drawn("rich", reclaimed)
    assert re.search(r"│ +1 +i-1b +draining +", rich)
    assert "1/2 nodes ready" in rich
    console = Console(record=True, file=io.StringIO(), force_terminal=True, width=140)
    minimal = _console.LiveConsole("minimal", console, defaulted_to_local=False)
    for event in RECLAIMED:
        minimal.on_event(event)
    minimal.close()
    text = console.export_text()
    assert "node 1  AWS reclaims spot instance i-1b at " in text
    assert "1/2 nodes ready" in text


def test_rich_shows_a_lost_node_until_its_replacement_is_provisioned() -> None:
    # On Local the replacement comes within milliseconds, too soon for a redraw: here the
    # drawing itself is checked.
    def lost(tally: Tally) -> None:
        _feed(
            tally,
            *RECLAIMED[:5],
            st.InstancePreempted(job_id=JOB, time=3.0, node=1, instance_id="i-1b", reason="gone"),
        )

    rich = _drawn("rich", lost)
    assert re.search(r"│ +1 +i-1b +lost +", rich)
    assert "1/2 nodes ready" in rich


def test_a_replacement_launched_ahead_bills_at_once_and_shows_when_it_takes_over() -> None:
    tally = Tally()
    _feed(tally, *RECLAIMED)
    ahead = st.InstanceProvisioned(
        job_id=JOB, time=4.0, node=1, instance_id="i-1c", hourly_price=3.6, ahead=True
    )
    assert _feed(tally, ahead) == [
        (
            "node 1",
            "replacement instance i-1c launched ahead ($3.60/h); it takes over when this node goes",
        )
    ]
    node = tally.nodes[1]
    assert (node.state, node.instance_id) == ("draining", "i-1b")  # the old one still serves
    assert tally.ledger.cost(3604.0) == pytest.approx(3.6)  # billed from its launch
    _feed(
        tally,
        st.InstancePreempted(job_id=JOB, time=5.0, node=1, instance_id="i-1b", reason="retired"),
        st.InstanceDestroyed(job_id=JOB, time=5.0, node=1, instance_id="i-1b"),
        st.BootstrapProgress(job_id=JOB, time=6.0, node=1, instance_id="i-1c", phase="ssh"),
    )
    assert tally.nodes[1].instance_id == "i-1c"
    _feed(
        tally,
        st.InstanceBootstrapped(job_id=JOB, time=7.0, node=1, instance_id="i-1c", seconds=3.0),
    )
    assert (tally.nodes[1].state, tally.ready) == ("ready", 2)
