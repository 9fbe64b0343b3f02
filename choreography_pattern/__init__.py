"""The order saga as a choreography: services react to each other's events; no conductor.

Events (:mod:`.events`) are written to the outbox in the transaction of the change that caused
them (:mod:`.outbox`), published by a relay (:mod:`.relay`) onto an event bus — Redis Streams
with a consumer group per service (:mod:`.redis_bus`; each group's consumer in
:mod:`.redis_consumer`, the keys and entries in :mod:`.redis_entries`), or in process
(:mod:`.bus`) — and handled by each service (:mod:`.handlers`, running :mod:`.steps`) through
the same business operations the REST API and the orchestration call. :mod:`.runtime` runs
it in a process; :mod:`.saga` starts one.
"""

from __future__ import annotations

from choreography_pattern.bus import EventBus, InMemoryEventBus
from choreography_pattern.events import Event, MalformedEvent
from choreography_pattern.relay import OutboxRelay
from choreography_pattern.runtime import Choreography
from choreography_pattern.saga import start_order

__all__ = [
    "Choreography",
    "Event",
    "EventBus",
    "InMemoryEventBus",
    "MalformedEvent",
    "OutboxRelay",
    "start_order",
]
