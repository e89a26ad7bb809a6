"""One browser connection's event stream, bridged from one WatchSessions stream.

The page lists what it shows (each answer carries the revision it was read
at), then opens ``/api/events?since=R`` with the lowest of those revisions.
The bridge watches from ``R + 1``: list-then-watch, so nothing committed
after the listing is missed. Every event-stream message that completes a
revision carries it as its SSE ``id``, so when the connection drops
(dashboard restarted, laptop asleep) the browser reconnects with
``Last-Event-ID: R'`` on its own and the bridge resumes from ``R' + 1``: no
revision is lost or shown twice. A sessiond restart does not even reach the
browser: the client's watch reconnects and resumes by itself.

What the page receives (``data`` is one line of JSON):

* ``retry``: reconnect after ``RECONNECT_DELAY_MS``;
* ``ready`` once the watch is confirmed, with the server's time (the page
  measures turn durations on sessiond's clock, not the browser's) and, for
  a watch "from now", ``id`` = the current revision;
* ``change`` with ``id`` = revision: the events of one or more whole
  revisions (``payloads.event_dict``);
* ``progress`` with ``id`` = revision: a bookmark, nothing at or below it is
  still to come; also the stream's keep-alive;
* ``fatal``, then the stream ends: the watch cannot go on. With
  ``relist: true`` the resume point was compacted away and the page must
  list again; otherwise ``error`` says why (UNAUTHENTICATED, ...).
"""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

from sessiond.aio import AsyncClient
from sessiond.dashboard.payloads import dumps, error_dict, event_dict
from sessiond.dashboard.web import EventStreamWriter
from sessiond.errors import RelistRequired, SessiondError
from sessiond.v1 import session_service_pb2

RECONNECT_DELAY_MS = 1000

_CREATED = session_service_pb2.WATCH_RESPONSE_TYPE_CREATED
_EVENTS = session_service_pb2.WATCH_RESPONSE_TYPE_EVENTS
_PROGRESS = session_service_pb2.WATCH_RESPONSE_TYPE_PROGRESS


async def bridge_watch(
    client: AsyncClient,
    events: EventStreamWriter,
    *,
    last_revision: int,
    progress_interval_ms: int,
    max_backoff: float,
) -> None:
    """Forward the watch after ``last_revision`` (0: from now) until the browser leaves.

    The caller owns ``client`` and closes it afterwards; the watch is closed
    here, whichever way the stream ends.
    """
    await events.retry(RECONNECT_DELAY_MS)
    stream = client.watch(
        start_revision=last_revision + 1 if last_revision > 0 else 0,
        progress_interval_ms=progress_interval_ms,
        max_backoff=max_backoff,
    )
    try:
        async with aclosing(stream):
            async for response in stream:
                payload: dict[str, Any]
                time = response.time.ToJsonString() if response.HasField("time") else None
                if response.type == _CREATED:
                    # Resuming: events between last_revision and now are still
                    # to come, so the current revision is no resume point yet.
                    event_id = None if last_revision > 0 else str(response.revision)
                    payload = {"revision": response.revision, "time": time,
                               "resumed_after": last_revision}
                    await events.send(dumps(payload), event="ready", event_id=event_id)
                elif response.type == _EVENTS:
                    payload = {
                        "revision": response.revision,
                        "time": time,
                        "events": [event_dict(event) for event in response.events],
                    }
                    await events.send(
                        dumps(payload), event="change", event_id=str(response.revision)
                    )
                elif response.type == _PROGRESS:
                    payload = {"revision": response.revision, "time": time}
                    await events.send(
                        dumps(payload), event="progress", event_id=str(response.revision)
                    )
    except RelistRequired as error:
        payload = {"relist": True, "compacted_revision": error.compacted_revision,
                   **error_dict(error)}
        await events.send(dumps(payload), event="fatal")
    except SessiondError as error:
        await events.send(dumps({"relist": False, **error_dict(error)}), event="fatal")
