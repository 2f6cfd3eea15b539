"""Method options as command-line flags, derived from the registry.

Every option of every registered method is declared once, in its options dataclass (see
``vitprune.methods.base.MethodOptions``), and read here from the CLI's catalog of the methods (``catalog.py``: the
same description, without importing torch). :func:`method_options` adds one flag per option name to a command (the
union over all methods, so ``--keep-rate`` serves DynamicViT, EViT, Evo-ViT and SaiT), in the "Method options"
help panel, and hands the command only the options the user gave, as ``method_options``; ``--opt KEY=VALUE`` stays
for scripts that build option names. :func:`sweep_values` adds ``sweep``'s value flags (``--keep-rates``,
``--r-values``...) from the options marked ``sweep``. typer reads a command's parameters with
``inspect.signature``, so the wrapper's ``__signature__`` is the command's own parameters plus the derived ones.
"""
from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Optional

import typer

from .. import settings
from ..errors import UsageError
from . import catalog
from .common import METHOD_PARAM, settings_parameters

PANEL = "Method options"
SWEEP_PANEL = "Values to sweep (one of these)"


def parse_value(text: str) -> Any:
    """A value typed on the command line: true/false, none, a comma list, a JSON number, else the text."""
    low = text.strip().lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    if "," in text:
        return [parse_value(t) for t in text.split(",") if t.strip()]
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def flag_name(name: str) -> str:
    """The command-line flag of a Python name: ``keep_rate`` -> ``--keep-rate``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class MethodFlag:
    """One option name as a flag: what all the methods that have it agree on."""

    name: str
    decls: tuple[str, ...]
    type: Any  # bool, int, float, str; None: text parsed by parse_value
    help: str

    @property
    def param(self) -> str:
        """The command's Python parameter for this flag: prefixed, so that an option may share a name (``seed``)
        with a command's own parameter as long as its flag differs."""
        return METHOD_PARAM + self.name

    def parameter(self) -> inspect.Parameter:
        decls = (f"{self.decls[0]}/--no-{self.decls[0][2:]}",) if self.type is bool else self.decls
        info = typer.Option(*decls, help=self.help, rich_help_panel=PANEL, show_default=False)
        return inspect.Parameter(self.param, inspect.Parameter.KEYWORD_ONLY, default=None,
                                 annotation=Annotated[Optional[self.type or str], info])

    def value(self, given: Any) -> Any:
        return parse_value(given) if self.type is None else given


def method_flags(runtime_only: bool = False) -> list[MethodFlag]:
    """One flag per option name over every registered method (``runtime_only``: the options some method can
    change on a trained model), in registration and field order."""
    uses: dict[str, list[tuple[str, dict]]] = {}
    for m in catalog.methods():
        for spec in m["options"]:
            if spec["runtime"] or not runtime_only:
                uses.setdefault(spec["name"], []).append((m["name"], spec))
    flags = []
    for name, pairs in uses.items():
        specs = [s for _, s in pairs]
        spellings = {(s["flag"], *s["aliases"]) for s in specs}
        if len(spellings) > 1:
            raise TypeError(f"methods spell the flags of option {name!r} differently: "
                            + "; ".join(f"{m}: {', '.join((s['flag'], *s['aliases']))}" for m, s in pairs))
        types = {catalog.cli_type(s["type"]) for s in specs}
        kind = types.pop() if len(types) == 1 else None
        methods = ", ".join(m for m, _ in pairs)
        text = min((s["help"] for s in specs if s["help"]), key=len, default="")
        run_time = " Run-time: changes a saved model." if all(s["runtime"] for s in specs) else ""
        flags.append(MethodFlag(name, spellings.pop(), kind, f"({methods}) {text.rstrip('.')}.{run_time}"))
    return flags


ExtraOpt = Annotated[Optional[list[str]], typer.Option(
    "--opt", rich_help_panel=PANEL,
    help="a method option as KEY=VALUE (repeatable), the same as its flag: --opt keep_rate=0.7.")]


def _declared(param: inspect.Parameter) -> set[str]:
    """The flags a command's own typer parameter declares (to refuse a method option that would shadow one)."""
    decls: set[str] = set()
    for info in getattr(param.annotation, "__metadata__", ()):
        for d in (getattr(info, "param_decls", None) or ()) + ((info.default,) if isinstance(
                getattr(info, "default", None), str) else ()):
            decls.update(p for p in d.split("/") if p.startswith("-"))
    return decls | {flag_name(param.name)}


#: the order of the help panels (a command's parameters are listed panel by panel, in this order)
PANEL_ORDER = (None, settings.TRAIN, settings.RECIPE, settings.AUGMENT, settings.RUN, SWEEP_PANEL, PANEL)


def _panel_rank(param: inspect.Parameter) -> int:
    infos = getattr(param.annotation, "__metadata__", ())
    panel = next((getattr(i, "rich_help_panel", None) for i in infos), None)
    is_argument = any(type(i).__name__ == "ArgumentInfo" for i in infos)
    return -1 if is_argument else PANEL_ORDER.index(panel) if panel in PANEL_ORDER else len(PANEL_ORDER)


def _with_parameters(fn: Callable, extra: list[inspect.Parameter], replaces: str,
                     collect: Callable[[dict], Any]) -> Callable:
    """``fn`` with ``extra`` keyword parameters in its signature in place of its parameter ``replaces``, which
    receives ``collect(values of the extra parameters)``; the parameters then sorted by help panel."""
    sig = inspect.signature(fn, eval_str=True)
    own = [p for p in sig.parameters.values() if p.name != replaces]
    taken = {d: p.name for p in own for d in _declared(p)}
    for p in extra:
        clash = sorted((_declared(p) & set(taken)) | ({p.name} & {q.name for q in own}))
        if clash:
            raise TypeError(f"{fn.__name__}: a derived flag of {p.name!r} clashes with the command's own "
                            f"{', '.join(clash)}; give the option another \"flag\" in its metadata")
    names = [p.name for p in extra]
    at = list(sig.parameters).index(replaces)
    params = list(sig.parameters.values())
    ordered = params[:at] + extra + params[at + 1:]
    # typer passes every parameter by name: all keyword-only, so that they can be ordered by panel
    ordered = sorted((p.replace(kind=p.KEYWORD_ONLY) for p in ordered), key=_panel_rank)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        kwargs[replaces] = collect({n: kwargs.pop(n) for n in names})
        return fn(*args, **kwargs)

    wrapper.__signature__ = sig.replace(parameters=ordered)  # type: ignore[attr-defined]
    return wrapper


def run_settings(cls: type) -> Callable[[Callable], Callable]:
    """Decorator: add a flag for every run setting of ``cls`` (``vitprune.settings``: declared there once, with
    its help, panel and range) to a command, which receives them as its ``settings`` parameter: {field: value}."""

    def decorate(fn: Callable) -> Callable:
        flags = settings.flags(cls)

        def collect(given: dict[str, Any]) -> dict[str, Any]:
            return {f.field: f.value(given[f.param]) for f in flags}

        return _with_parameters(fn, settings_parameters(cls), "settings", collect)

    return decorate


#: recipe keys that are not flags of their own: ``--epochs`` is a run setting, ``augment`` has its own flags
NOT_RECIPE_FLAGS = ("epochs", "augment")


def recipe_flags() -> Callable[[Callable], Callable]:
    """Decorator: add a flag for every recipe key (``vitprune.train.recipe.Recipe``, read from the catalog: its
    help and type declared there once) to a command, in the Recipe panel; the command receives the keys the user
    gave as its ``recipe`` parameter (a list key, ``frozen``, typed as a comma list, ``none`` for an empty list)."""

    def decorate(fn: Callable) -> Callable:
        helps, types = catalog.recipe_help(), catalog.recipe_types()
        keys = [k for k in helps if k not in NOT_RECIPE_FLAGS]
        extra = []
        for key in keys:
            kind = catalog.cli_type(types[key])
            text = helps[key].rstrip(".") + (", as a comma list; 'none' for none" if kind is None else "") + "."
            decl = f"{flag_name(key)}/--no-{flag_name(key)[2:]}" if kind is bool else flag_name(key)
            extra.append(inspect.Parameter(key, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
                Optional[kind or str], typer.Option(decl, help=text, rich_help_panel=settings.RECIPE)]))

        def collect(given: dict[str, Any]) -> dict[str, Any]:
            recipe = {}
            for key, value in given.items():
                if value is not None and catalog.cli_type(types[key]) is None:  # a list, as a comma list
                    value = [] if value.strip().lower() in ("", "none") else [
                        v.strip() for v in value.split(",") if v.strip()]
                if value is not None:
                    recipe[key] = value
            return recipe

        return _with_parameters(fn, extra, "recipe", collect)

    return decorate


def method_options(*, runtime_only: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: add every method option's flag (and ``--opt``) to a command, which receives the options the
    user gave as its ``method_options`` parameter (a dict by option name; empty when none)."""

    def decorate(fn: Callable) -> Callable:
        flags = method_flags(runtime_only)
        extra = [f.parameter() for f in flags]
        extra.append(inspect.Parameter("opt", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ExtraOpt))

        def collect(given: dict[str, Any]) -> dict[str, Any]:
            opts = {f.name: f.value(given[f.param]) for f in flags if given[f.param] is not None}
            for item in given["opt"] or []:
                key, sep, value = item.partition("=")
                key = key.strip().replace("-", "_")
                if not sep or not key:
                    raise UsageError(f"`opt` takes KEY=VALUE, got {item!r}.")
                if key in opts:
                    raise UsageError(f"`{key}` is given twice (its flag and `opt`); give it once.")
                opts[key] = parse_value(value)
            return opts

        return _with_parameters(fn, extra, "method_options", collect)

    return decorate


def sweep_flags() -> dict[str, tuple[str, str]]:
    """``sweep``'s value flags: flag -> (option name, help), from the options marked ``sweep``."""
    found: dict[str, tuple[str, list[str], set]] = {}
    for m in catalog.methods():
        for spec in m["options"]:
            if spec["sweep_flag"]:
                name, methods, types = found.setdefault(spec["sweep_flag"], (spec["name"], [], set()))
                if name != spec["name"]:
                    raise TypeError(f"{spec['sweep_flag']} sweeps both {name!r} and {spec['name']!r}")
                methods.append(m["name"])
                types.add(spec["accepts"])
    return {flag: (name, f"sweep {name} ({', '.join(methods)}) over these values, e.g. {_example(types)}.")
            for flag, (name, methods, types) in found.items()}


def _example(accepts: set) -> str:
    """A comma list of values of the kind a swept option takes (``describe_methods``' ``accepts`` words)."""
    whole = all("integer" in a and "number" not in a for a in accepts)
    return "4,8,12" if whole else "0.5,0.7,0.9"


def sweep_values() -> Callable[[Callable], Callable]:
    """Decorator: add ``sweep``'s value flags; the command receives ``swept``: {option name: (flag, text)} for
    those the user gave."""

    def decorate(fn: Callable) -> Callable:
        flags = sweep_flags()
        params = {flag[2:].replace("-", "_"): (flag, name, text) for flag, (name, text) in flags.items()}
        extra = [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            Optional[str], typer.Option(flag, help=text, rich_help_panel=SWEEP_PANEL)])
            for p, (flag, _, text) in params.items()]

        def collect(given: dict[str, Any]) -> dict[str, tuple[str, str]]:
            return {params[p][1]: (params[p][0], v) for p, v in given.items() if v is not None}

        return _with_parameters(fn, extra, "swept", collect)

    return decorate
