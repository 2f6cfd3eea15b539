"""Method options are typed: every value is checked against its field's annotation in one place
(``MethodOptions.from_dict``), so the library, a saved config.json and every command refuse a wrong type with one
message instead of a traceback later (or a string stored as a boolean); and each method names its headline setting
for output folders."""
from __future__ import annotations

import dataclasses
import json
import re
import typing

import pytest

import vitprune
from vitprune.errors import MethodOptionError
from vitprune.methods import create_method, method_names
from vitprune.methods.base import headline
from vitprune.methods.registry import get_method_class


@pytest.mark.parametrize("method, options, message", [
    ("evit", {"keep_rate": "abc"}, "`keep_rate` must be a number, got 'abc'"),
    ("evit", {"keep_rate": True}, "`keep_rate` must be a number, got True"),  # a bool is not a number here
    ("evit", {"fuse": "maybe"}, "`fuse` must be true or false, got 'maybe'"),
    ("evit", {"fuse": 1}, "`fuse` must be true or false, got 1"),
    ("tome", {"r": "x"}, "`r` must be an integer or a comma list of integers, got 'x'"),
    ("tome", {"r": [8, "a"]}, "`r` must be an integer or a comma list of integers"),
    ("dge", {"region_size": 2.5}, "`region_size` must be an integer or none, got 2.5"),
    ("sait", {"buckets": 1.5}, "`buckets` must be an integer, got 1.5"),
    ("sait", {"keep_rate_range": [0.4, "x"]}, "`keep_rate_range` must be a comma list of numbers"),
    ("sait", {"mode": 1}, "`mode` must be a word, got 1"),
    ("dynamicvit", {"pruning_loc": [3, 6.5]}, "`pruning_loc` must be a comma list of integers or none"),
    ("evovit", {"representative": "no"}, "`representative` must be true or false, got 'no'"),
])
def test_a_value_of_the_wrong_type_is_refused_by_name(method, options, message):
    with pytest.raises(MethodOptionError, match=re.escape(message)):
        create_method(method, **options)


def test_numbers_take_their_fields_plain_type():
    # an int given for a float option is that float; a single block index is a list of one
    evit = create_method("evit", keep_rate=1, drop_loc=3).options
    assert evit.keep_rate == 1.0 and isinstance(evit.keep_rate, float) and evit.drop_loc == [3]
    sait = create_method("sait", keep_rate_range=[1, 1], buckets=2).options
    assert sait.keep_rate_range == [1.0, 1.0] and all(isinstance(v, float) for v in sait.keep_rate_range)
    assert create_method("tome", r=[8, 4]).options.r == [8, 4] and create_method("tome", r=8).options.r == 8


def test_every_option_field_has_a_type_the_check_knows():
    """A new option whose annotation the check cannot read would silently accept anything: every field of every
    method resolves to a type and its default passes the check."""
    for name in method_names():
        cls = get_method_class(name)
        hints = typing.get_type_hints(cls.Options)
        for f in dataclasses.fields(cls.Options):
            assert f.name in hints, (name, f.name)
        create_method(name)  # the defaults pass their own types


def test_apply_method_and_load_share_the_check(tmp_path):
    model = vitprune.load_model("demo")
    with pytest.raises(MethodOptionError, match="`fuse` must be true or false"):
        vitprune.apply_method(model, "evit", fuse="maybe")
    # a config.json edited by hand (a string for a boolean) is refused on load, not silently taken as true
    saved = vitprune.save(vitprune.apply_method(vitprune.load_model("demo"), "evit"), tmp_path / "m")
    cfg = json.loads((saved / "config.json").read_text())
    cfg["vitprune"]["options"]["fuse"] = "false"
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(MethodOptionError, match="`fuse` must be true or false, got 'false'"):
        vitprune.load(saved)


@pytest.mark.parametrize("method, options, name", [
    ("evit", {}, "keep0.7"),
    ("evit", {"keep_rate": 0.5}, "keep0.5"),
    ("dynamicvit", {}, "keep0.7"),
    ("evovit", {}, "keep0.5"),
    ("tome", {"r": 8}, "r8"),
    ("tome", {"r": [8, 4]}, "r8_4"),
    ("dge", {"budget": 0.5}, "budget0.5"),
    ("sait", {"mode": "fixed", "keep_rate": 0.7}, "fixed-keep0.7"),
    ("sait", {}, "adaptive"),  # the threshold is calibrated after training: not part of the name
    ("sait", {"mode": "dense"}, "dense"),
])
def test_headline_of_each_method(method, options, name):
    assert headline(create_method(method, **options).options) == name


def test_every_method_declares_a_headline():
    for name in method_names():
        assert headline(create_method(name).options), name


# ------------------------------------------------------------------------------------------ one declaration


EXPECTED_RUNTIME = {  # what each method's paper/code lets change on a trained model (the options' metadata)
    "dynamicvit": ("keep_rate",), "evit": ("keep_rate",), "evovit": ("keep_rate", "layer_wise", "representative"),
    "tome": ("r", "inflection", "prop_attn"), "dge": (), "sait": ("mode", "keep_rate", "threshold", "buckets"),
}
#: the option ``sweep`` varies: the headline option with a sweep flag (the same choice as before the metadata existed)
EXPECTED_SWEEP = {"dynamicvit": "keep_rate", "evit": "keep_rate", "evovit": "keep_rate", "tome": "r", "dge": "budget",
                  "sait": "keep_rate"}


@pytest.mark.parametrize("name", method_names())
def test_run_time_options_and_sweep_defaults_come_from_the_field_metadata(name):
    from vitprune.methods.base import option_specs, runtime_options, sweep_option

    cls = get_method_class(name)
    assert cls.runtime_options == runtime_options(cls), name
    assert [s.name for s in option_specs(cls)] == [f.name for f in dataclasses.fields(cls.Options)]
    assert sweep_option(cls) in [s.name for s in option_specs(cls)]
    if name in EXPECTED_RUNTIME:  # the six methods of the papers vitprune started with: pinned values
        assert (cls.runtime_options, sweep_option(cls)) == (EXPECTED_RUNTIME[name], EXPECTED_SWEEP[name])


def test_tome_r_has_its_own_flag_alias_and_sweep_flag():
    from vitprune.methods.base import option_specs

    tome_r = option_specs(get_method_class("tome"))[0]
    assert (tome_r.flag, tome_r.aliases, tome_r.sweep_flag) == ("--tome-r", ("--r",), "--r-values")


def test_the_pinned_tables_name_registered_methods():
    assert set(EXPECTED_RUNTIME) == set(EXPECTED_SWEEP) <= set(method_names())


def test_a_runtime_options_tuple_or_an_unknown_metadata_key_is_refused_when_the_class_is_made():
    from vitprune.methods.base import MethodOptions, TokenMethod, option_specs

    with pytest.raises(TypeError, match="metadata=\\{'runtime': True\\}"):
        class Tuple(TokenMethod):  # noqa: F841 - the class statement is what is refused
            name = "tuple"
            runtime_options = ("keep_rate",)

    @dataclasses.dataclass
    class Typo(MethodOptions):
        keep_rate: float = dataclasses.field(default=0.5, metadata={"runtme": True})

    with pytest.raises(TypeError, match="unknown option metadata \\['runtme'\\]"):
        option_specs(Typo)


def test_registering_a_name_twice_is_an_error():
    from vitprune.methods.base import TokenMethod
    from vitprune.methods.registry import register

    for taken in ("evit", "E-ViT"):  # the lookup ignores case and dashes, so registration does too
        Other = type("Other", (TokenMethod,), {"name": taken, "Options": get_method_class("evit").Options})
        with pytest.raises(ValueError, match="a method named 'evit' is registered already"):
            register(Other)
    assert get_method_class("evit").__module__ == "vitprune.methods.evit"


def test_an_option_named_like_a_run_setting_is_refused_at_registration():
    """``vitprune.compress(seed=1)`` is the run's seed: a method option called ``seed`` could never be given."""
    import dataclasses

    from vitprune.methods.base import MethodOptions, TokenMethod
    from vitprune.methods.registry import register

    @dataclasses.dataclass
    class Options(MethodOptions):
        seed: int = dataclasses.field(default=0, metadata={"help": "a seed of its own"})

    Clashing = type("Clashing", (TokenMethod,), {"name": "clashing", "Options": Options})
    with pytest.raises(ValueError, match="option\\(s\\) seed have the name of a run setting"):
        register(Clashing)
    assert "clashing" not in [c.name for c in vitprune.methods.method_classes()]


def test_the_reserved_names_hold_every_keyword_of_the_jobs():
    """The jobs that take method options as keywords: each of their own keywords is a name no option can have."""
    import inspect

    from vitprune.settings import reserved_names

    for job in (vitprune.compress, vitprune.profile, vitprune.sweep, vitprune.export, vitprune.visualize):
        own = {p.name for p in inspect.signature(job).parameters.values()
               if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        assert own <= reserved_names(), (job.__name__, sorted(own - reserved_names()))


@pytest.mark.slow
def test_an_option_the_setting_ignores_is_reported_once_and_a_saved_model_loads_silently(tmp_path):
    import warnings

    from vitprune.errors import VitpruneWarning

    with pytest.warns(VitpruneWarning, match="`threshold` has no effect while `mode` is fixed \\(it applies when "
                                             "`mode` is adaptive\\)"):
        model = vitprune.apply_method(vitprune.load_model("demo"), "sait", mode="fixed", threshold=0.8)
    with pytest.warns(VitpruneWarning, match="`keep_rate` has no effect while `mode` is adaptive"):
        model.vitprune_method.set_runtime(mode="adaptive", keep_rate=0.6)
    with pytest.warns(VitpruneWarning, match="`aux_cls_weight` has no effect while `head` is model"):
        create_method("evovit")  # creating is silent; applying is what the user asked for
        vitprune.apply_method(vitprune.load_model("demo"), "evovit", aux_cls_weight=0.3)
    saved = vitprune.save(model, tmp_path / "sait")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # options recorded in config.json were not asked for: no warning on load
        vitprune.load(saved)
        vitprune.apply_method(vitprune.load_model("demo"), "sait", mode="adaptive", threshold=0.8)
