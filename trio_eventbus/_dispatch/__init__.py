"""Dispatch: one router in front of keyed lanes and the worker pool, and the handler pipeline behind them.

Modules: :mod:`.router` (the one routing path), :mod:`.lanes` and :mod:`.workers` (the tasks), the pipeline
steps :mod:`.decode`, :mod:`.middleware`, :mod:`.retry`, :mod:`.dead_letter`, :mod:`.park`, :mod:`.settle`,
their composition :mod:`.pipeline`, and :mod:`.dispatcher` (what the bus holds).

Policies are per subscription: ``subscribe*(..., retry=, dead_letter=)``, else ``BusOptions.retry`` /
``BusOptions.dead_letter``.

Routing: a delivery with a key goes to lane ``fnv1a_32(key) % lanes``, where one task handles one delivery at
a time in arrival order (per-key order); keyless deliveries go to the worker pool (no order). Full queues make
the backend's fetcher wait (backpressure).

Per delivery, on its lane or worker:

0. With ``DeadLetterPolicy(after="park")``, a delivery whose key is parked goes to the dead-letter topic
   unhandled (reason ``parked``) and is settled; the lane moves on (:mod:`.park`).
1. Envelope subscriptions decode the body; an undecodable body is dead-lettered at once (no retries).
2. The handler is awaited (inside ``BusOptions.middleware``, if any; ``handler(value, ctx)`` with
   ``context=True``). Returning = handled: the delivery is acked (only now, never before).
3. Raising an ``Exception`` is a failed attempt. A non-retryable one (``NonRetryableError``,
   ``RetryPolicy.non_retryable``) is dead-lettered at once. With ``RetryPolicy.strategy == "in_place"`` the task sleeps
   the backoff and tries again, holding its lane (per-key order is kept; other lanes keep running). With
   ``"redeliver"`` the delivery is nak'ed with the backoff delay and the lane moves on.
4. After ``max_attempts`` failed attempts the failure is logged at ERROR with its traceback, the message is
   published to the dead-letter topic (parking its key, with ``after="park"``) and waits for the broker's
   ack of that publish; then the original is settled with ``TERM``. If the dead-letter publish fails,
   the original is nak'ed (redelivered later) — a message is never acked unless handled or dead-lettered.

Cancellation (hard stop, or the close deadline): the handler is cancelled and the delivery nak'ed, as is
everything still queued on the lane, so the broker redelivers them.
"""
