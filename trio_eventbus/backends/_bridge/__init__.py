"""The asyncio bridge: the only package that drives an asyncio event loop, with batched crossings both ways.

Trio → asyncio: :meth:`Bridge.run`, :func:`run_batch`, :class:`LoopInbox`; asyncio → Trio: :class:`BatchPipe`.
"""

from .bridge import (
    BatchPipe,
    Bridge,
    BridgeError,
    BridgeStatistics,
    PipeStatistics,
    application_loop,
    open_bridge,
    run_batch,
)
from .inbox import LoopInbox

__all__ = [
    "BatchPipe",
    "Bridge",
    "BridgeError",
    "BridgeStatistics",
    "LoopInbox",
    "PipeStatistics",
    "application_loop",
    "open_bridge",
    "run_batch",
]
