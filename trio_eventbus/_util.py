"""Two helpers of the public face (both after trio's ``_util``): a class without a public constructor, and the
module metadata fix that makes every public name report the module users import it from."""

from __future__ import annotations

import types
from typing import Any, NoReturn, TypeVar

__all__ = ["NoPublicConstructor", "fixup_module_metadata"]

T = TypeVar("T")


class NoPublicConstructor(type):
    """Metaclass of classes that only a factory of the package may instantiate (with ``cls._create(...)``).

    Calling the class raises ``TypeError`` naming the factory given as ``factory=`` in the class statement::

        class EventBus(metaclass=NoPublicConstructor, factory="trio_eventbus.open_bus(config)"): ...
    """

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> Any:
        factory = kwargs.pop("factory", None)
        cls = super().__new__(mcs, name, bases, namespace, **kwargs)
        cls._factory = factory  # type: ignore[attr-defined]
        return cls

    def __init__(cls, name: str, bases: tuple[type, ...], namespace: dict[str, Any], **kwargs: Any) -> None:
        kwargs.pop("factory", None)
        super().__init__(name, bases, namespace, **kwargs)

    def __call__(cls, *args: object, **kwargs: object) -> NoReturn:
        factory = getattr(cls, "_factory", None)
        hint = f": use {factory}" if factory else ""
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} has no public constructor{hint}")

    def _create(cls: type[T], *args: object, **kwargs: object) -> T:
        return super().__call__(*args, **kwargs)  # type: ignore[misc, no-any-return]


def fixup_module_metadata(module_name: str, namespace: dict[str, Any]) -> None:
    """Make every public class and function of ``namespace`` (its ``__all__``) defined in another module of
    ``module_name``'s package report ``module_name`` as its ``__module__`` (classes: their methods too), as
    trio does. Objects that already report a shorter public module (``trio_eventbus``) keep it.

    Tracebacks, ``repr`` and documentation then show ``trio_eventbus.Envelope`` rather than
    ``trio_eventbus._envelope.Envelope``; pickle finds classes under the public name.
    """
    package = module_name.split(".")[0] + "."
    seen: set[int] = set()

    def fix_one(qualname: str, name: str, obj: object) -> None:
        if id(obj) in seen or not isinstance(obj, type | types.FunctionType):
            return  # classes and functions only (instances, such as class-level constants, keep theirs)
        seen.add(id(obj))
        mod = getattr(obj, "__module__", None)
        if not isinstance(mod, str) or not mod.startswith(package) or mod == module_name:
            return
        obj.__module__ = module_name
        if hasattr(obj, "__name__") and "." not in obj.__name__:
            obj.__name__ = name
            if hasattr(obj, "__qualname__"):
                obj.__qualname__ = qualname
        if isinstance(obj, type):
            for attr_name, attr_value in obj.__dict__.items():
                fix_one(f"{qualname}.{attr_name}", attr_name, attr_value)

    names = namespace.get("__all__", [n for n in namespace if not n.startswith("_")])
    for name in names:
        fix_one(name, name, namespace[name])
