"""Benchmark harnesses and their plain-asyncio baselines (not part of the wheel).

Run from a source checkout: ``python -m bench --backend memory|nats|kafka [--json]``.
"""
