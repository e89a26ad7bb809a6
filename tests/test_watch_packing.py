"""How WatchSessions packs events into responses, over random revisions and read steps.

The packer is the one place that decides response boundaries, so its rules
are checked here directly, over many shapes (the stream-level guarantees are
checked over a real server by the watch validator):

* every event comes out once, in order;
* a response carries at most the bound of events, unless one event alone is larger;
* a revision that fits in the bound is never split, whatever the read steps;
* a larger one is split into consecutive parts of that revision alone, every
  part but the last marked ``fragment``.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sessiond.v1 import event_pb2
from sessiond_server.api.sessions import Packer, Part, response_event_bytes

# A revision is a list of event sizes (session_id lengths); steps cut the
# event sequence where a read from the change log may stop.
revisions = st.lists(st.lists(st.sampled_from([1, 20, 100, 400]), min_size=1, max_size=6),
                     min_size=1, max_size=30)


def pack(shape: list[list[int]], cuts: list[int], bound: int
         ) -> tuple[list[tuple[int, event_pb2.SessionEvent]], list[Part]]:
    events = [(revision, event_pb2.SessionEvent(type=event_pb2.EVENT_TYPE_SESSION_UPDATED,
                                                revision=revision, session_id="x" * size))
              for revision, sizes in enumerate(shape, start=1) for size in sizes]
    packer = Packer(bound)
    parts: list[Part] = []
    start = 0
    for cut in [*cuts, len(events)]:
        end = min(len(events), max(start + 1, cut))
        for revision, event in events[start:end]:
            parts += packer.add(revision, event)
        ended = end == len(events) or events[end][0] != events[end - 1][0]
        parts += packer.flush(revision_ended=ended)
        start = end
        if start == len(events):
            break
    return events, parts


@settings(max_examples=300, deadline=None)
@given(shape=revisions, cuts=st.lists(st.integers(0, 200), max_size=20).map(sorted),
       bound=st.sampled_from([50, 200, 1000]))
def test_packing_keeps_order_bounds_and_splits_only_as_marked_fragments(
        shape: list[list[int]], cuts: list[int], bound: int) -> None:
    events, parts = pack(shape, cuts, bound)
    assert [e for part in parts for e in part.events] == [e for _, e in events]
    for part in parts:
        size = sum(response_event_bytes(e) for e in part.events)
        assert size <= bound or len(part.events) == 1
        assert part.revision == max(e.revision for e in part.events)
    holding: dict[int, list[int]] = {}
    for index, part in enumerate(parts):
        for revision in {e.revision for e in part.events}:
            holding.setdefault(revision, []).append(index)
    for revision, indexes in holding.items():
        whole = sum(response_event_bytes(e) for r, e in events if r == revision)
        if whole <= bound:
            assert len(indexes) == 1, f"revision {revision} ({whole} bytes) split"
        if len(indexes) > 1:
            assert indexes == list(range(indexes[0], indexes[-1] + 1))
            assert all(parts[i].fragment for i in indexes[:-1])
            assert not parts[indexes[-1]].fragment
            assert all({e.revision for e in parts[i].events} == {revision} for i in indexes)
