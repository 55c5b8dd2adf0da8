"""Norm registry: short names, the ``smallbatch.norms`` entry-point group, and class paths.

A *norm factory* is any callable ``factory(num_features, **kwargs) -> nn.Module`` (a class
is the usual case). A *norm spec* names one, in any of three forms:

* a registered short name: ``"brn"``;
* a dotted import path: ``"my_pkg.layers.MyNorm"``;
* a jsonargparse-style mapping: ``{"class_path": "brn" | "my_pkg.MyNorm", "init_args": {...}}``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from ..errors import UserError, closest, did_you_mean, error_summary, first_line, where_raised
from ..timeouts import TimeLimitExceeded

ENTRY_POINT_GROUP = "smallbatch.norms"
# Comma-separated norm names that plugins may replace (e.g. "gn"); any other clash is an error.
OVERRIDE_ENV = "SMALLBATCH_NORM_OVERRIDES"

NormFactory = Callable[..., nn.Module]
NormSpecLike = str | Mapping[str, Any] | NormFactory


class NormConfigError(UserError, ValueError):
    """A norm was named or configured in a way that cannot work; the message says how to fix it."""


@dataclass(frozen=True)
class NormEntry:
    """One registered norm: its factory, a one-line description and where it came from."""

    name: str
    factory: NormFactory
    description: str
    source: str = "built-in"
    defaults: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, NormEntry] = {}
_PLUGINS_LOADED = False
# plugin entry points that failed to load: name -> (entry point value, distribution, reason)
_PLUGIN_FAILURES: dict[str, tuple[str, str, str]] = {}


def _first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def factory_defaults(factory: NormFactory) -> dict[str, Any]:
    """Keyword defaults of a factory, without ``num_features`` (what ``smallbatch norms`` shows)."""
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return {}
    return {
        name: p.default
        for name, p in sig.parameters.items()
        if name != "num_features"
        and p.default is not inspect.Parameter.empty
        and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def register_norm(
    name: str,
    factory: NormFactory | None = None,
    *,
    description: str | None = None,
    source: str = "code",
    overwrite: bool = False,
) -> Any:
    """Register ``factory`` under ``name``; usable directly or as a class/function decorator."""

    def _register(f: NormFactory) -> NormFactory:
        if not callable(f):
            raise NormConfigError(f"norm {name!r}: factory must be callable, got {f!r}")
        key = name.lower()
        if key in _REGISTRY and not overwrite and _REGISTRY[key].factory is not f:
            raise NormConfigError(
                f"norm name {name!r} is already registered ({_REGISTRY[key].source}); "
                "pass overwrite=True to replace it"
            )
        _REGISTRY[key] = NormEntry(
            name=key,
            factory=f,
            description=description or _first_doc_line(f) or key,
            source=source,
            defaults=factory_defaults(f),
        )
        return f

    return _register if factory is None else _register(factory)


def unregister_norm(name: str) -> None:
    """Remove a registered norm (mainly for tests and interactive sessions)."""
    _REGISTRY.pop(name.lower(), None)


def load_plugins(force: bool = False) -> list[str]:
    """Register every norm advertised in the ``smallbatch.norms`` entry-point group.

    Each entry point's name becomes the norm's short name; its object is the factory. A plugin
    that fails to import is reported with a warning and skipped, so one broken package cannot
    hide the others. A plugin name that is already registered from another source (a built-in
    or another plugin) raises :class:`NormConfigError` naming both, unless the name is listed in
    ``$SMALLBATCH_NORM_OVERRIDES``. Returns the names registered by this call.
    """
    global _PLUGINS_LOADED
    if _PLUGINS_LOADED and not force:
        return []
    _PLUGINS_LOADED = True
    allowed = {n.strip().lower() for n in os.environ.get(OVERRIDE_ENV, "").split(",")}
    added, clashes = [], []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or ep.value.split(":")[0]
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break the suite
            reason = error_summary(exc)
            _PLUGIN_FAILURES[ep.name.lower()] = (ep.value, dist, reason)
            warnings.warn(
                f"smallbatch: norm plugin {ep.name!r} ({ep.value}) failed to load: {reason}",
                stacklevel=2,
            )
            continue
        source, key = f"plugin: {dist}", ep.name.lower()
        existing = _REGISTRY.get(key)
        if existing is not None and existing.source != source and key not in allowed:
            clashes.append(f"{key!r} from {source} ({ep.value}) clashes with {existing.source}")
            continue
        register_norm(ep.name, obj, source=source, overwrite=True)
        added.append(key)
    if clashes:
        _PLUGINS_LOADED = False  # every later lookup says so again
        raise NormConfigError(
            "norm plugin names already registered: "
            + "; ".join(clashes)
            + f". Rename the plugin's entry point, or set {OVERRIDE_ENV}=<name>[,<name>...] "
            "to let the plugin replace that norm"
        )
    return added


def available_norms(order: str = "name") -> dict[str, NormEntry]:
    """Every registered norm (built-in, plugins, code), sorted by name, or with
    ``order="registration"`` in the order registered (built-ins first, in the table of
    ``smallbatch.norms``: the suite's display order)."""
    load_plugins()
    return dict(_REGISTRY) if order == "registration" else dict(sorted(_REGISTRY.items()))


def import_object(path: str) -> Any:
    """Import ``package.module.Name`` (or ``package.module:Name``) with a clear error."""
    module_name, sep, attr = path.replace(":", ".").rpartition(".")
    if not sep or not module_name:
        raise NormConfigError(
            f"norm class_path {path!r} is not a dotted import path; expected "
            "'package.module.ClassName' or a registered name "
            f"({', '.join(available_norms())})"
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(f"{missing}."):
            raise NormConfigError(
                f"norm class_path {path!r}: no module named {missing!r}. Expected "
                "'package.module.ClassName' importable in this environment: install the package "
                "(pip install -e <folder>) or put its folder on PYTHONPATH"
            ) from exc
        raise _import_failed(path, module_name, exc) from exc
    except TimeLimitExceeded:
        raise  # the import hung: said by the limit, as it is
    except Exception as exc:  # noqa: BLE001 - the module's own code failed while importing
        raise _import_failed(path, module_name, exc) from exc
    except SystemExit as exc:  # an import that exits would end the whole command unsaid
        raise NormConfigError(
            f"norm class_path {path!r}: importing {module_name!r} called sys.exit({exc.code!r}); "
            "a module that defines a norm must not exit when imported"
        ) from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        names = [n for n, v in vars(module).items() if isinstance(v, type) or callable(v)]
        raise NormConfigError(
            f"norm class_path {path!r}: module {module_name!r} has no attribute {attr!r}"
            f"{did_you_mean(attr, [n for n in names if not n.startswith('_')])}"
        ) from exc


def _import_failed(path: str, module_name: str, exc: BaseException) -> NormConfigError:
    """The module exists but its own import raised: say what, where, and that the fix is there."""
    where = where_raised(exc)
    at = f" at {where}" if where else ""
    return NormConfigError(
        f"norm class_path {path!r}: importing {module_name!r} failed{at}: "
        f"{type(exc).__name__}: {first_line(exc)}. The module was found; fix that error in it"
    )


def resolve_norm(spec: NormSpecLike) -> tuple[NormFactory, dict[str, Any], str]:
    """Turn a norm spec into ``(factory, init_args, display_name)``."""
    init_args: dict[str, Any] = {}
    if isinstance(spec, Mapping):
        unknown = set(spec) - {"class_path", "init_args"}
        if "class_path" not in spec or unknown:
            raise NormConfigError(
                f"norm mapping {dict(spec)!r} must have the keys 'class_path' and optionally "
                "'init_args' (jsonargparse convention)"
            )
        init_args = dict(spec.get("init_args") or {})
        spec = spec["class_path"]
    if callable(spec):
        return spec, init_args, getattr(spec, "__name__", repr(spec))
    if not isinstance(spec, str) or not spec:
        raise NormConfigError(f"norm must be a name, class path or mapping, got {spec!r}")
    registry = available_norms()
    key = spec.lower()
    if key in registry:
        return registry[key].factory, init_args, key
    if "." in spec or ":" in spec:
        return import_object(spec), init_args, spec
    if key in _PLUGIN_FAILURES:
        value, dist, reason = _PLUGIN_FAILURES[key]
        raise NormConfigError(
            f"norm {spec!r} is a plugin of {dist!r} ({value}) that failed to import: {reason}. "
            "Fix that error in the plugin (or reinstall it); `smallbatch norms` lists the others"
        )
    raise NormConfigError(
        f"unknown norm {spec!r}{did_you_mean(key, registry)} "
        f"Registered norms: {', '.join(registry)}. "
        "A class from your own package can be given as 'package.module.ClassName' or as "
        "{class_path: ..., init_args: {...}}"
    )


def create_norm(spec: NormSpecLike, num_features: int, **overrides: Any) -> nn.Module:
    """Build one norm layer for ``num_features`` channels from a spec (overrides win)."""
    factory, init_args, display = resolve_norm(spec)
    kwargs = {**init_args, **overrides}
    try:
        return factory(num_features, **kwargs)
    except NormConfigError:
        raise
    except (ValueError, RuntimeError, AssertionError, AttributeError, KeyError) as exc:
        # a plugin's constructor refusing its arguments, or failing: a message, not a traceback
        first = (str(exc).strip().splitlines() or [""])[0]
        raise NormConfigError(
            f"norm {display!r} failed to build a layer of {num_features} channels with "
            f"{kwargs!r}: {type(exc).__name__}: {first}"
        ) from exc
    except TypeError as exc:
        defaults = factory_defaults(factory)
        accepted = ", ".join(f"{k}={v!r}" for k, v in defaults.items())
        hints = [
            f"{k!r} -> {close!r}"
            for k in kwargs
            if k not in defaults and (close := closest(k, defaults))
        ]
        hint = f" (did you mean {', '.join(hints)}?)" if hints else ""
        raise NormConfigError(
            f"norm {display!r} rejected arguments {kwargs!r}{hint}: {exc}. "
            f"Accepted: {accepted or '-'}"
        ) from exc
