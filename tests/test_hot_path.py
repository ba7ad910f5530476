"""Values the per-message paths build without their constructors are the values the constructors build."""

from __future__ import annotations

import datetime as dt

import attrs

import trio_eventbus as teb
from trio_eventbus._publish.results import new_result


def test_new_result_builds_the_same_value_as_the_constructor() -> None:
    names = [f.name for f in attrs.fields(teb.PublishResult)]
    assert names == ["event_id", "topic", "aggregate_id", "event_type", "success", "error", "timestamp"]
    stamp = dt.datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=dt.UTC)
    error = teb.PublishError("no")
    for args in (("e-1", "t", "agg", "Created", True, None, stamp), ("e-2", "t", None, None, False, error, stamp)):
        built = new_result(*args)
        expected = teb.PublishResult(**dict(zip(names, args, strict=True)))
        assert type(built) is teb.PublishResult
        assert built == expected
        assert hash(built) == hash(expected)
        assert repr(built) == repr(expected)
        assert all(getattr(built, name) is getattr(expected, name) for name in names)
