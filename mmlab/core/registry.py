"""One registry style for every named family, as timm's: a decorator registers a factory,
`create(name, **options)` builds from it (refusing options it does not take), `names()` lists
them; an unknown name reads "unknown fusion method 'x'; valid names: a, b" everywhere."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any


class RegistryError(KeyError, ValueError):
    """An unknown name or option. A KeyError (a lookup that failed) and a ValueError (a bad
    value in a batch file); its message is shown as written, without KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry:
    """Factories of one kind by name. `kind` names the family in errors; `modules` are imported on
    first lookup, so members load only when used; `error` is the exception type for unknown names
    or options."""

    def __init__(
        self, kind: str, modules: Iterable[str] = (), error: type[Exception] = RegistryError
    ):
        self.kind = kind
        self.error = error
        self._modules = list(modules)
        self._factories: dict[str, Callable[..., Any]] = {}

    def register(self, *names: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: make `factory` buildable as `create(name, ...)` (default name: its `__name__`); a
        factory under several names that takes `name` receives the one asked for."""

        def wrap(factory: Callable[..., Any]) -> Callable[..., Any]:
            for name in names or (factory.__name__,):
                if name in self._factories and self._factories[name] is not factory:
                    raise ValueError(f"{self.kind} {name!r} is registered twice")
                self._factories[name] = factory
            return factory

        return wrap

    def _load(self) -> dict[str, Callable[..., Any]]:
        for module in list(self._modules):
            # dropped only once imported: a module that failed (a missing extra) fails again
            # on the next lookup instead of leaving the family silently empty
            importlib.import_module(module)
            if module in self._modules:
                self._modules.remove(module)
        return self._factories

    def names(self) -> list[str]:
        return sorted(self._load())

    def __contains__(self, name: object) -> bool:
        return name in self._load()

    def get(self, name: str) -> Callable[..., Any]:
        """The factory registered as `name`; an unknown name lists the valid ones."""
        factories = self._load()
        if name not in factories:
            raise self.error(
                f"unknown {self.kind} {name!r}; valid names: {', '.join(sorted(factories))}"
            )
        return factories[name]

    def options(self, name: str) -> list[str] | None:
        """The keyword options `name`'s factory takes; None when it takes any (`**options`)."""
        parameters = inspect.signature(self.get(name)).parameters.values()
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
            return None
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return [p.name for p in parameters if p.kind in named and p.name != "name"]

    def check(self, name: str, options: Iterable[str]) -> None:
        """Raise if `name` is unknown or its factory takes none of some `options`, naming each."""
        accepted = self.options(name)
        if accepted is None:
            return
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            valid = ", ".join(sorted(accepted)) or "none"
            raise self.error(
                f"{self.kind} {name!r} takes no option {', '.join(map(repr, unknown))}; "
                f"its options: {valid}"
            )

    def create(self, name: str, *args: Any, **options: Any) -> Any:
        """Build `name` with `options`, after checking that its factory takes them all."""
        factory = self.get(name)
        self.check(name, options)
        if "name" in inspect.signature(factory).parameters:
            options["name"] = name
        return factory(*args, **options)
