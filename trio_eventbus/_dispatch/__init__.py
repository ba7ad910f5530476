"""Dispatch: the bounded queue, keyed lanes, the worker pool, one router, and the handler pipeline."""
