"""The asyncio bridge: the only package that drives an asyncio event loop, with batched crossings both ways.

Trio → asyncio: :meth:`Bridge.run` (one crossing per call, given a whole batch) and :class:`LoopInbox`;
asyncio → Trio: :class:`BatchPipe`. Modules: :mod:`.bridge` (the loop, its strategies, :func:`open_bridge`),
:mod:`.inbox`, :mod:`.pipe`.
"""

from .bridge import Bridge, BridgeError, BridgeStatistics, application_loop, open_bridge
from .inbox import LoopInbox
from .pipe import BatchPipe, PipeStatistics

__all__ = [
    "BatchPipe",
    "Bridge",
    "BridgeError",
    "BridgeStatistics",
    "LoopInbox",
    "PipeStatistics",
    "application_loop",
    "open_bridge",
]
