"""Events through the pool server: one JSON line each, rebuilt as the same record."""

from __future__ import annotations

import pytest

import skyward_trio as st
from skyward_trio._serverwire import event_from_json, event_json

EVENTS = [
    st.ClusterRequested(job_id="j", time=1.5, provider="local", nodes=st.Nodes(desired=2, max=4)),
    st.Error(job_id="j", time=2.0, message="it broke", node=None),
    st.Error(job_id="j", time=2.0, message="it broke", node=3),
    st.Metric(job_id="j", time=3.0, node=1, name="gpu", value=97.5, unit="%", gpu=0),
    st.Log(job_id="j", time=4.0, node=0, stream="stdout", text="hello\n"),
    st.TaskCompleted(
        job_id="j", time=5.0, node=1, task="f", task_id=7, ok=False, seconds=0.25, count=1
    ),
    st.WorkSubmitted(job_id="j", time=6.0, task="map", count=None),
    st.InstanceInterrupting(
        job_id="j", time=7.0, node=1, instance_id="i-0abc", action="terminate", at=127.0
    ),
    st.InstanceAtRisk(job_id="j", time=8.0, node=0, instance_id="i-0abc", at=7.5, replaced=True),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda e: type(e).__name__)
def test_an_event_comes_back_as_it_went(event: st.Event) -> None:
    line = event_json(event)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert event_from_json(line) == event


@pytest.mark.parametrize(
    "line",
    [b'{"type": "Compute"}', b'{"type": "Nope"}', b"{}", b'{"type": "Error", "time": 1}'],
)
def test_a_line_that_is_not_an_event_is_refused(line: bytes) -> None:
    with pytest.raises(ValueError, match="not a"):
        event_from_json(line)
