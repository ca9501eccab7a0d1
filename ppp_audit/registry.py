"""One registry pattern for everything a user or a plugin can add: padding schemes, baselines, figures, page sections.

A :class:`Registry` maps names to objects. Code registers with a decorator, as timm's ``register_model``::

    RUNNERS = Registry("baseline", entry_point_group="ppp_audit.baselines", metadata={"per_scheme": True})

    @RUNNERS.register("uneven", per_scheme=False)
    def run_uneven(...): ...

Installed distributions register through the registry's entry-point group; those are discovered on first lookup, not
at import. A plugin that fails to load (any exception, ``SystemExit`` included; only ``KeyboardInterrupt`` goes
through) is skipped with a ``RuntimeWarning`` naming it and its distribution; looking its name up then says that it
failed to load and why, not that the name is unknown. ``PPP_AUDIT_DISABLE_PLUGINS=1`` loads none (an unknown name
then says so). Entry points of ppp-audit's own distribution are ignored: its built-ins register in code, so an older
install's metadata cannot shadow or break them.
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from types import MappingProxyType
from typing import Any, Callable, Generic, Iterator, Mapping, TypeVar

from .errors import PPPAuditError, describe_error
from .launch import env_flag

DISABLE_PLUGINS_ENV = "PPP_AUDIT_DISABLE_PLUGINS"
OWN_DISTRIBUTION = "ppp-audit"
RUN_TIME = "(registered at run time)"
"""The distribution shown for objects registered in code outside ppp-audit (tests, notebooks, scripts)."""

T = TypeVar("T")


@dataclass(frozen=True)
class RegistryEntry(Generic[T]):
    """One registered object."""

    name: str
    obj: T
    distribution: str
    """``ppp-audit`` for built-ins, the installing distribution for entry points, else ``(registered at run time)``."""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PluginFailure:
    """An entry point that failed to load, as a lookup of its name reports it."""

    name: str
    distribution: str
    error: str
    """The exception's type and the first line of its text: ``ModuleNotFoundError: No module named 'x'``."""


def plugins_disabled() -> bool:
    """Whether ``PPP_AUDIT_DISABLE_PLUGINS`` asks to load no third-party plugins."""
    return env_flag(DISABLE_PLUGINS_ENV)


def _distribution_of(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or ""
    return OWN_DISTRIBUTION if module == "ppp_audit" or module.startswith("ppp_audit.") else RUN_TIME


class Registry(Generic[T]):
    """Named objects of one kind, registered in code or through an entry-point group.

    Registering a name again replaces the object in place (the entry keeps its position). Names registered in code
    win over entry points; an entry point whose name is taken by another object is skipped with a warning.

    Args:
        kind: What is registered, for messages (``"padding scheme"`` gives "unknown padding scheme 'x'").
        error: Raised by :meth:`get` for an unknown name, as ``error(message, hint)``.
        hint: The hint of that error; ``{available}`` is replaced by the registered names.
        entry_point_group: Where installed distributions register; ``None`` for code-only registries.
        plugin_noun: How warnings name a broken entry point (default ``"<kind> plugin"``).
        metadata: The metadata every entry has, with defaults; :meth:`register` accepts only these keys when given.
        check: Called on each object an entry point loads; raises ``TypeError`` when it is not of the right kind.
        sort_names: List entries by name instead of in registration order.
    """

    def __init__(self, kind: str, *, error: Callable[[str, str], Exception] = PPPAuditError,
                 hint: str = "choose from {available}", entry_point_group: str | None = None,
                 plugin_noun: str | None = None, metadata: Mapping[str, Any] | None = None,
                 check: Callable[[Any], None] | None = None, sort_names: bool = False) -> None:
        self.kind = kind
        self.error = error
        self.hint = hint
        self.entry_point_group = entry_point_group
        self.plugin_noun = plugin_noun or f"{kind} plugin"
        self.defaults = dict(metadata or {})
        self.check = check
        self.sort_names = sort_names
        self._registered: dict[str, RegistryEntry[T]] = {}
        self._plugins: dict[str, RegistryEntry[T]] | None = None
        self._failed: dict[str, PluginFailure] = {}

    # -- registering -------------------------------------------------------------------------------------------------

    def register(self, name: str | T | None = None, **metadata: Any) -> Any:
        """Decorator registering its object under ``name`` with ``metadata``; usable bare (``@registry.register``).

        ``name`` defaults to the object's ``name`` attribute, else its ``__name__``.
        """
        if name is not None and not isinstance(name, str):  # used bare: @registry.register
            return self.add(None, name)

        def decorator(obj: T) -> T:
            return self.add(name, obj, **metadata)

        return decorator

    def add(self, name: str | None, obj: T, **metadata: Any) -> T:
        """Register ``obj`` (the non-decorator form of :meth:`register`); returns it."""
        name = name or _default_name(obj)
        if not name:
            raise ValueError(f"cannot register {obj!r} as a {self.kind} without a name: pass one or set `name`")
        unknown = sorted(set(metadata) - set(self.defaults)) if self.defaults else []
        if unknown:
            raise TypeError(f"unknown {self.kind} metadata {', '.join(unknown)} (known: {', '.join(self.defaults)})")
        entry = RegistryEntry(name, obj, _distribution_of(obj), MappingProxyType({**self.defaults, **metadata}))
        self._registered[name] = entry
        return obj

    def pop(self, name: str) -> T:
        """Remove a name registered in code and return its object (tests use it to clean up)."""
        return self._registered.pop(name).obj

    # -- looking up --------------------------------------------------------------------------------------------------

    def entries(self) -> list[RegistryEntry[T]]:
        """Every entry: code registrations, then discovered plugins (or all by name with ``sort_names``)."""
        plugins = [entry for name, entry in self._discover().items() if name not in self._registered]
        found = [*self._registered.values(), *plugins]
        return sorted(found, key=lambda entry: entry.name) if self.sort_names else found

    def entry(self, name: str) -> RegistryEntry[T]:
        """The entry of ``name``; raises the registry's error, with the closest name, when there is none."""
        plugins = self._discover(asked=name)  # first: loading a plugin may register it in code (the decorator)
        if name in self._registered:
            return self._registered[name]
        if name in plugins:
            return plugins[name]
        failed = self._failed.get(name)
        if failed is not None:  # the name exists, its plugin is broken: "unknown" would send the user to the spelling
            dist = failed.distribution
            raise self.error(f"{self.plugin_noun} '{name}' from distribution '{dist}' failed to load: {failed.error}",
                             f"reinstall '{dist}' (pip install --force-reinstall {dist}) or uninstall it, or set "
                             f"{DISABLE_PLUGINS_ENV}=1 to skip third-party plugins")
        names = self.names()
        close = difflib.get_close_matches(name, names, n=1)
        disabled = self.entry_point_group is not None and plugins_disabled()
        off = f" (plugins are disabled by {DISABLE_PLUGINS_ENV})" if disabled else ""
        raise self.error(f"unknown {self.kind} '{name}'" + (f" (did you mean '{close[0]}'?)" if close else "") + off,
                         self.hint.format(available=", ".join(names) or "none"))

    def get(self, name: str) -> T:
        """The object registered under ``name`` (see :meth:`entry` for the error)."""
        return self.entry(name).obj

    def names(self) -> list[str]:
        return [entry.name for entry in self.entries()]

    def items(self) -> list[tuple[str, T]]:
        return [(entry.name, entry.obj) for entry in self.entries()]

    def values(self) -> list[T]:
        return [entry.obj for entry in self.entries()]

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.entries())

    def __contains__(self, name: object) -> bool:
        plugins = self._discover()
        return name in self._registered or name in plugins

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()})"

    # -- entry points ------------------------------------------------------------------------------------------------

    def reset_discovery(self) -> None:
        """Forget discovered entry points (for tests that install plugins or toggle the env var)."""
        self._plugins = None
        self._failed = {}

    def _discover(self, asked: str | None = None) -> dict[str, RegistryEntry[T]]:
        """Load the entry points once; a broken one is warned about, unless it is the name ``asked`` (whose lookup
        raises the error that says the same, in one line)."""
        if self._plugins is not None:
            return self._plugins
        self._plugins, self._failed = {}, {}
        if self.entry_point_group is None or plugins_disabled():
            return self._plugins
        for ep in entry_points(group=self.entry_point_group):
            dist = ep.dist.name if ep.dist is not None else "unknown"
            if dist == OWN_DISTRIBUTION:  # built-ins register in code; these are an older install's metadata
                continue
            try:
                obj = ep.load()
                if self.check is not None:
                    self.check(obj)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # a broken plugin must never take the tool down, not even by sys.exit()
                self._failed[ep.name] = PluginFailure(ep.name, dist, describe_error(exc))
                if ep.name == asked and asked not in self._registered:
                    continue
                self._warn(f"{self.plugin_noun} '{ep.name}' from distribution '{dist}' failed to load and is skipped: "
                           f"{exc!r}")
                continue
            self._add_plugin(ep.name, obj, dist)
        return self._plugins

    def _add_plugin(self, name: str, obj: T, dist: str) -> None:
        assert self._plugins is not None
        taken = self._registered.get(name)
        if taken is not None:
            if taken.obj is not obj:
                self._warn(f"{self.plugin_noun} '{name}' from distribution '{dist}' is skipped: the name is taken by "
                           f"'{taken.distribution}'")
            elif taken.distribution == RUN_TIME:  # the plugin's module registered it with the decorator as it loaded
                self._registered[name] = replace(taken, distribution=dist)
            return
        same = next((entry for entry in self._registered.values() if entry.obj is obj), None)
        metadata = same.metadata if same is not None else MappingProxyType(dict(self.defaults))
        self._plugins[name] = RegistryEntry(name, obj, dist, metadata)

    @staticmethod
    def _warn(message: str) -> None:
        warnings.warn(f"{message} (set {DISABLE_PLUGINS_ENV}=1 to skip third-party plugins)", RuntimeWarning,
                      stacklevel=3)


def _default_name(obj: Any) -> str:
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) and name else getattr(obj, "__name__", "")


__all__ = ["DISABLE_PLUGINS_ENV", "OWN_DISTRIBUTION", "RUN_TIME", "PluginFailure", "Registry", "RegistryEntry",
           "plugins_disabled"]
