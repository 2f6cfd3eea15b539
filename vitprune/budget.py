"""GMAC budgets: the setting of a method that makes a model cost a given fraction of the dense model's GMACs.

``solve_for_gmacs(model, "evit", 0.65)`` finds the value of the method's headline option (the numeric option its
metadata marks ``"headline"``: a keep rate, ToMe's ``r``, DGE's budget) for which the patched model's counted MACs
(:func:`vitprune.measure.count_macs`: fvcore with vitprune's handles, or the method's analytic count) are
``0.65 x`` the dense model's, within 1 %. Continuous options are bisected (to 4 decimals), integer ones scanned
by integer bisection; the counted MACs are monotone in the option, in a direction read from the two ends of its
range. When 1 % cannot be reached (whole tokens for ``r``, minimum token counts) the closest setting is returned
and says so.

What is counted is the static setting of the method, derived from the option's metadata: an option that applies
only with other values (``"applies_when"``: SaiT's keep rate in its fixed mode) is solved with those values, which
become part of the returned options; ``"count_with"`` values (DGE: ``router_init='budget'``, the static per-block
schedule) are used for counting only, because the trained model decides per image (DGE's learned routers: the
solved budget is their training target).
"""
from __future__ import annotations

import copy
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Union

import torch
from torch import nn

from .errors import MethodOptionError, UsageError
from .measure import count_macs
from .methods import apply_method, get_method, get_method_class, option_specs
from .methods.base import patch_grid

#: how close the counted ratio must come to the target, relative to it
TOLERANCE = 0.01
#: the range a fractional option (keep rate, budget) is searched in
FRACTION_RANGE = (0.01, 1.0)
_STOP = 0.004  # stop searching once this close (relative); the best value seen is returned


@dataclass
class BudgetSolution:
    """The solved setting. Unpacks as ``(options, achieved)``."""

    options: dict[str, Any]  # the fixed options plus the solved one (and the values it needs to apply)
    achieved: float  # counted GMACs / dense GMACs
    target: float
    option: str
    solved_with: dict[str, Any] = field(default_factory=dict)  # what the option needs to apply (in ``options``)
    counted_with: dict[str, Any] = field(default_factory=dict)  # used for counting only

    def __iter__(self) -> Iterator[Any]:
        return iter((self.options, self.achieved))

    @property
    def untrained_options(self) -> dict[str, Any]:
        """The options of a model at the budget before any training: ``options`` with the counting-only values
        (DGE's static schedule); a model to be trained takes ``options`` (DGE's budget is its routers' target)."""
        return {**self.options, **self.counted_with}

    @property
    def within(self) -> bool:
        return abs(self.achieved - self.target) <= TOLERANCE * self.target

    def describe(self) -> str:
        """One line: the chosen setting and what it costs (and, when 1 % is out of reach, that it is the closest)."""
        value = self.options[self.option]
        text = f"{value:g}" if isinstance(value, float) else str(value)
        line = (f"target {self.target:g}x dense GMACs: {self.option}={text} "
                f"(counted {self.achieved:.4f}x dense")
        if not self.within:
            line += f"; closest reachable, 1 % of the target is out of reach for {self.option}"
        line += ")"
        if self.solved_with:
            line += "; with " + ", ".join(f"{k}={v}" for k, v in self.solved_with.items())
        if self.counted_with:
            line += ("; counted with " + ", ".join(f"{k}={v}" for k, v in self.counted_with.items())
                     + " (a trained model's GMACs depend on the images)")
        return line

    def record(self) -> dict[str, Any]:
        """What report.json and config.json keep: ``target_gmacs``, ``achieved``, the option and its value, the
        line :meth:`describe` prints."""
        return {"target_gmacs": self.target, "achieved": round(self.achieved, 6), "option": self.option,
                "value": self.options[self.option], "within_1_percent": self.within,
                **({"counted_with": dict(self.counted_with)} if self.counted_with else {}),
                "setting": self.describe()}


def check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
            or not 0.0 < ratio <= 1.0:
        raise MethodOptionError(f"`target_gmacs` is a fraction of the dense GMACs in (0, 1], got {ratio!r}.")
    return float(ratio)


def _kind(hint: Any) -> Optional[type]:
    """int or float for an option that can be solved (an int, or a union with int, like ToMe's ``r``), else None."""
    if hint in (int, float):
        return hint
    if typing.get_origin(hint) is Union or type(hint).__name__ == "UnionType":
        args = typing.get_args(hint)
        for k in (float, int):
            if k in args:
                return k
    return None


def budget_option(method: str) -> Any:
    """The option ``--target-gmacs`` solves for ``method``: its numeric headline option (an ``OptionSpec``)."""
    cls = get_method_class(method)
    for spec in option_specs(cls):
        if spec.headline and _kind(spec.type) is not None:
            return spec
    raise MethodOptionError(f"{cls.name} has no numeric headline option to solve for `target_gmacs`.")


def check_no_conflict(method: str, given: dict[str, Any]) -> None:
    """UsageError when the options given fix what ``target_gmacs`` solves (the headline option) or set an option
    it needs to apply to another value (SaiT's ``mode`` other than fixed)."""
    spec = budget_option(method)
    if spec.name in given:
        raise UsageError(f"`target_gmacs` chooses `{spec.name}`; give one of them, not both.")
    for key, want in spec.applies_when:
        wants = want if isinstance(want, tuple) else (want,)
        if key in given and given[key] not in wants:
            raise UsageError(f"`target_gmacs` solves `{spec.name}`, which applies when `{key}` is "
                             f"{' or '.join(map(str, wants))}; `{key}` is {given[key]}.")


def solve_for_gmacs(model: nn.Module, method: str, ratio: float, *, images: Optional[torch.Tensor] = None,
                    **fixed_options: Any) -> BudgetSolution:
    """The setting of ``method``'s headline option for which ``model`` (dense) patched with ``method`` counts
    ``ratio x`` its dense MACs (within 1 %, else the closest), the other options held at ``fixed_options``.

    Each candidate patches a copy of ``model``; ``model`` is left as it is. ``images``: a batch to count on
    (default: one random image of the model's input size; the settings solved are static, so any image counts
    the same). Returns a :class:`BudgetSolution` (``options, achieved = solve_for_gmacs(...)``).
    """
    ratio = check_ratio(ratio)
    if get_method(model) is not None:
        raise MethodOptionError("`target_gmacs` solves a method's option on a dense model; this model is already "
                                "compressed (give its dense base model).")
    name = get_method_class(method).name
    check_no_conflict(name, fixed_options)
    spec = budget_option(name)
    solved_with = {k: want[0] if isinstance(want, tuple) else want for k, want in spec.applies_when}
    options = {**fixed_options, **solved_with}  # the static setting the option needs (SaiT: mode=fixed)
    counted_with = dict(spec.count_with)
    dense = count_macs(model, images=images).macs

    def cost(value: Any) -> float:
        patched = apply_method(copy.deepcopy(model), name, **{**options, **counted_with, spec.name: value})
        return count_macs(patched, images=images).macs / dense

    kind = _kind(spec.type)
    # the range: a token count from 0 to all patches, a fraction in FRACTION_RANGE; narrowed to the values the
    # method accepts on this model (ToMe's largest r, DGE's smallest reachable budget)
    grid = patch_grid(model)
    lo, hi = (0, int(grid[0] * grid[1])) if kind is int else FRACTION_RANGE

    def accepts(value: Any) -> bool:
        try:
            apply_method(copy.deepcopy(model), name, **{**options, **counted_with, spec.name: value})
        except MethodOptionError:
            return False
        return True

    lo, hi = _accepted_range(accepts, lo, hi, kind)
    value, achieved = _bisect(cost, lo, hi, kind, ratio)
    options[spec.name] = value
    return BudgetSolution(options, achieved, ratio, spec.name, solved_with, counted_with)


def _grid(value: float, kind: type) -> Any:
    return int(value) if kind is int else round(value, 4)


def _accepted_range(accepts: Callable[[Any], bool], lo: Any, hi: Any, kind: type) -> tuple[Any, Any]:
    """[lo, hi] narrowed at either end to the values ``accepts`` (an accepted value inside is searched by
    bisection: the method refuses values at one end only, e.g. too large an r, too small a budget)."""
    good = None
    for probe in (hi, lo, _grid((lo + hi) / 2, kind)):
        if accepts(probe):
            good = probe
            break
    if good is None:
        raise MethodOptionError("no value of the option in its range suits this model.")
    ends = []
    for end in (lo, hi):
        bad, ok = end, good
        if accepts(end):
            ends.append(end)
            continue
        while True:  # bisect between the refused end and an accepted value
            m = _grid((bad + ok) / 2, kind)
            if m in (bad, ok):
                break
            bad, ok = (bad, m) if accepts(m) else (m, ok)
        ends.append(ok)
    return ends[0], ends[1]


def _bisect(cost: Callable[[Any], float], lo: Any, hi: Any, kind: type, target: float) -> tuple[Any, float]:
    """The value in [lo, hi] whose monotone ``cost`` is closest to ``target``: bracketing search that steps by
    linear interpolation and bisects when one side stalls; the best value seen is returned."""
    seen = {lo: cost(lo), hi: cost(hi)}
    rising = seen[hi] >= seen[lo]
    last_side = None
    stalled = False
    while True:
        best = min(seen, key=lambda v: (abs(seen[v] - target), v))
        if abs(seen[best] - target) <= _STOP * target:
            break
        f_lo, f_hi = seen[lo], seen[hi]
        if stalled or f_hi == f_lo:
            m = (lo + hi) / 2
        else:
            m = lo + (target - f_lo) * (hi - lo) / (f_hi - f_lo)
        m = round(m) if kind is int else round(m, 4)
        if not lo < m < hi:  # rounded onto an end: bisect, else the bracket is as narrow as the grid
            m = _grid((lo + hi) / 2, kind)
            if not lo < m < hi:
                break
        seen[m] = cost(m)
        side = (seen[m] < target) == rising
        if side:
            lo = m
        else:
            hi = m
        stalled = side == last_side and not stalled
        last_side = side
    return best, seen[best]


__all__ = ["BudgetSolution", "TOLERANCE", "budget_option", "check_no_conflict", "check_ratio", "solve_for_gmacs"]
