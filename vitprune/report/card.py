"""The model card (README.md) of a saved vitprune folder, generated from what the run recorded.

``render_card(folder)`` reads the folder's ``config.json`` (its ``vitprune`` section: method, options, base model,
recipe, metrics; timm's ``pretrained_cfg`` for the licence) and ``report.json`` when there is one (dense vs
compressed: top-1, GMACs, parameters, throughput and latency with device, dtype and batch size; the data; the
recipe and where each value came from). ``render_card(section=..., report=...)`` does the same from dicts, so
``vitprune.compress`` can write the card while saving.

The Hub metadata is built with huggingface_hub's ``ModelCardData`` (never hand-written YAML): tags ``vitprune``,
``image-classification``, ``token-pruning`` and the method's name; ``pipeline_tag``; ``base_model`` when the base
is a Hub model (a timm name is resolved to its ``timm/...`` repo); ``library_name: timm`` only for a dense folder,
which plain timm can load; a patched model needs vitprune (its weights include the method's modules and its forward
is the method's), so it gets no ``library_name``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
import shlex
from pathlib import Path
from typing import Any, Mapping, Optional

from itertools import groupby

from huggingface_hub import ModelCard, ModelCardData
from timm.models import get_pretrained_cfg

from .. import settings
from ..files import read_text
from ..methods import get_method_class, option_specs
from ..methods.base import flag_name
from ..modelfolder import read_config
from ..train.recipe import recipe_types
from . import DENSE_TEACHER
from .onnx_card import onnx_card_lines
from .speedrows import latency_change, number as _num, reading_notes, speed_rows  # also imported from here

GMACS_LABEL = "GMACs (papers' GFLOPs)"
BASE_TAGS = ("vitprune", "image-classification", "token-pruning")

_AUGMENT_FLAGS = {"hflip": "--hflip", "scale": "--scale", "ratio": "--ratio", "color_jitter": "--color-jitter",
                  "auto_augment": "--auto-augment", "re_prob": "--re-prob"}


# ------------------------------------------------------------------------------------------ reading


def read_folder(folder: str | Path) -> tuple[dict[str, Any], Optional[dict[str, Any]], dict[str, Any]]:
    """(vitprune section, report or None, whole config.json) of a saved folder."""
    folder = Path(folder)
    config = read_config(folder)
    report = None
    rep_file = folder / "report.json"
    if rep_file.is_file():
        try:
            report = json.loads(read_text(rep_file, limit=64 * 2**20))
        except (json.JSONDecodeError, OSError, UnicodeDecodeError):
            report = None  # a card is still worth writing from config.json alone
    return config.get("vitprune") or {}, report, config


# ------------------------------------------------------------------------------------------ helpers


def hub_base_model(base: Optional[str]) -> Optional[str]:
    """The Hub repo id of a base-model spec, or None when it is not on the Hub (demo, local folder or weights,
    unknown)."""
    if not base or not isinstance(base, str):
        return None
    if base.startswith(("hf-hub:", "hf_hub:")):
        repo = base.split(":", 1)[1].split("@", 1)[0]
        return repo if repo.count("/") == 1 else None
    if base == "demo" or "/" in base or base.startswith((".", "~", "(")) or any(c.isspace() for c in base):
        return None  # "vit_tiny_patch16_224 (local weights)": an architecture, not the weights of a Hub repo
    try:
        cfg = get_pretrained_cfg(base, allow_unregistered=False)
    except Exception:  # not a timm name (or a timm without it): no Hub base model to name
        return None
    return getattr(cfg, "hf_hub_id", None) or None


def method_info(name: Optional[str]) -> dict[str, Any]:
    """Title, paper, summary and options (by name: their declarations) of a registered method ({} when unknown
    here)."""
    if not name:
        return {}
    try:
        cls = get_method_class(name)
    except Exception:  # a folder from a vitprune with a method this one lacks: the card still renders
        return {}
    return {"title": cls.title, "paper": cls.paper, "summary": cls.summary,
            "specs": {s.name: s for s in option_specs(cls)}, "needs_training": cls.needs_training,
            "runtime_options": list(cls.runtime_options), "adds_modules": bool(cls.new_module_prefixes)}


def _value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return ",".join(_value(x) for x in v)
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def short_method(name: Optional[str], options: Mapping[str, Any]) -> str:
    """``evit(keep_rate=0.5)``, ``sait(mode=adaptive, threshold=0.87)``: the method with its headline and
    non-default options (``dense`` for none)."""
    if not name:
        return "dense"
    return f"{name}({_describe_options(options, method_info(name).get('specs'))})"


def _shown_options(options: Mapping[str, Any], specs: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """The options that say what a model is: its headline options (those in effect with the other values, so
    SaiT's keep rate only in its fixed mode) and every option that is not at its default."""
    values = dict(options)
    return {k: v for k, v in options.items() if v is not None and (
        not specs or k not in specs or v != specs[k].default or (specs[k].headline and specs[k].applies(values)))}


def _describe_options(options: Mapping[str, Any], specs: Optional[Mapping[str, Any]] = None) -> str:
    """``keep_rate=0.7, fuse=false``: see :func:`_shown_options`."""
    return ", ".join(f"{k}={_value(v)}" for k, v in _shown_options(options, specs).items())


def _short_name(base: Optional[str]) -> str:
    """A short display name for a base-model spec."""
    if not base or str(base).startswith("("):
        return "ViT"
    base = str(base).split(" (", 1)[0]
    if base.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        base = base.split(":", 1)[1]
    return base.rstrip("/").split("/")[-1] or base


# ------------------------------------------------------------------------------------------ reproduce


def reproduce_command(section: Mapping[str, Any], report: Optional[Mapping[str, Any]] = None,
                      output: Optional[str] = None) -> Optional[str]:
    """The full `vitprune compress` command that makes this model again, resolved: the recorded model, method and
    its options, data, epochs, every recipe value that is not the method's default or that the user set, then the
    other flags of the command as typed (``report['command']``, already redacted); the typed command alone when
    the settings were not recorded."""
    recorded = (report or {}).get("command") if isinstance((report or {}).get("command"), str) else None
    method = (report or {}).get("method") or section.get("method")
    recipe = dict((report or {}).get("recipe") or section.get("recipe") or {})
    if not method or not recipe:
        return recorded
    model = (report or {}).get("model") or section.get("base_model") or "MODEL"
    options = dict((report or {}).get("options") or section.get("options") or {})
    specs = method_info(method).get("specs") or {}
    args = ["vitprune", "compress", str(model), "--method", str(method)]
    for k, v in _shown_options(options, specs).items():
        spec = specs.get(k)
        if spec is None:  # an option this vitprune does not know: --opt passes it on as recorded
            args += ["--opt", f"{k}={_value(v)}"]
        elif spec.is_bool:
            args.append(spec.flag if v else f"--no-{spec.flag[2:]}")
        else:
            args += [spec.flag, _value(v)]
    data = ((report or {}).get("data") or {}).get("data") or (section.get("metrics") or {}).get("dataset")
    if data:
        args += ["--data", str(data)]
    val_split = ((report or {}).get("data") or {}).get("val_split")
    if val_split is not None and data != "demo":
        args += ["--val-split", _value(val_split)]
    if "epochs" in recipe:
        args += ["--epochs", _value(recipe["epochs"])]
    for key in ("batch_size", "accum_steps", "seed"):  # recorded with the recipe; their flags and defaults:
        setting = settings.flag(settings.CompressConfig, key)
        if key in recipe and recipe[key] != setting.default:
            args += [setting.long, _value(recipe[key])]
    if recipe.get("precision"):
        args += ["--precision", str(recipe["precision"])]

    sources = (report or {}).get("recipe_sources") or {}
    for k, kind in recipe_types().items():  # each recipe key the user set, as its flag
        if k in ("epochs", "augment") or sources.get(k) != "user" or k not in recipe:
            continue
        if kind == "bool":
            args.append(flag_name(k) if recipe[k] else f"--no-{flag_name(k)[2:]}")
        else:
            args += [flag_name(k), _value(recipe[k]) or "none"]  # an empty list: none
    if "augment" in recipe and recipe["augment"] is None:
        args.append("--no-augment")
    elif sources.get("augment") == "user" and isinstance(recipe.get("augment"), Mapping):
        for k, flag in _AUGMENT_FLAGS.items():
            if k in recipe["augment"] and recipe["augment"][k] is not None:
                args += [flag, _value(recipe["augment"][k])]
    if output:
        args += ["--output", output]
    if recorded:
        args += _recorded_extras(recorded, args, str(model))
    return shlex.join(args)


#: short flags of `vitprune compress` and their long names
_SHORT = {"-m": "--method", "-d": "--data", "-o": "--output", "-q": "--quiet", "-c": "--config"}
#: flags of the typed command that say nothing about the model made (how it printed, where its config file was)
_NOT_SETTINGS = ("--quiet", "--no-quiet", "--config", "--print-config")


def _recorded_extras(recorded: str, built: list[str], model: str) -> list[str]:
    """The flags of the command as typed (already redacted) that the resolved command lacks (``--teacher``,
    ``--val-split``, ``--profile-batch-size``, ``--export``...), each with its value."""
    try:
        typed = shlex.split(recorded)
    except ValueError:
        return []
    have = {a.split("=", 1)[0] for a in built if a.startswith("--")}
    have |= {"--no-" + a[2:] for a in have} | {"--" + a[5:] for a in have if a.startswith("--no-")}
    tokens = typed[2:] if typed[:2] == ["vitprune", "compress"] else []
    extra: list[str] = []
    i = 0
    while i < len(tokens):
        arg = tokens[i]
        i += 1
        if not arg.startswith("-") or arg == "-":
            continue  # MODEL (the resolved command names it already)
        flag, eq, _ = arg.partition("=")
        flag = _SHORT.get(flag, flag)
        takes_value = not eq and i < len(tokens) and (not tokens[i].startswith("-") or _is_number(tokens[i]))
        value = [tokens[i]] if takes_value else []
        if takes_value:
            i += 1
        if value and value[0] == model:  # a flag without a value, then MODEL
            value = []
        if flag in have or flag in _NOT_SETTINGS:
            continue
        extra += [flag + (arg[len(arg.partition("=")[0]):] if eq else ""), *value]
    return extra


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------ the card


def reduction_blocks(tokens: Any) -> Optional[str]:
    """Where this model reduces its tokens, read from its token schedule (tokens entering each block): ``On this
    6-block model the token count drops before blocks 1, 3 and 4 (0-based): 65 → 45 → 45 → 32 → 22 → 22 tokens.``
    (None without a schedule or a reduction.)"""
    if not isinstance(tokens, list) or len(tokens) < 2 or not all(isinstance(t, int) for t in tokens):
        return None
    drops = [i for i in range(1, len(tokens)) if tokens[i] < tokens[i - 1]]
    if not drops:
        return None
    names = [str(i) for i in drops]
    where = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    plural = "s" if len(names) > 1 else ""
    return (f"On this {len(tokens)}-block model the token count drops before block{plural} {where} (0-based): "
            + " → ".join(map(str, tokens)) + " tokens enter the blocks.")


def _metrics_rows(section: Mapping[str, Any], report: Optional[Mapping[str, Any]]) -> tuple[list[list[str]], str]:
    """Rows of the dense-teacher-vs-compressed table and the lines saying how it was measured and how to read it."""
    rows: list[list[str]] = []
    if report and report.get("dense") and report.get("compressed"):
        d, c = report["dense"], report["compressed"]
        m = report.get("measure") or {}
        data = report.get("data") or {}
        bs = m.get("batch_size")
        how = (f"Measured with vitprune on {m.get('device_name') or m.get('device') or 'an unrecorded device'}, "
               f"{m.get('dtype', '?')}; throughput at batch {bs if bs is not None else '?'}, latency at batch 1 "
               f"(median); input {'×'.join(map(str, m.get('input_size') or [])) or '?'}")
        if d.get("top1") is not None:
            how += f"; accuracy on {data.get('data', 'the data')} val ({_num(c.get('images'), 0)} images)"
        elif c.get("cosine") is not None:
            how += (f"; cosine similarity of the embeddings to the dense teacher's on {data.get('data', 'the data')} "
                    f"val ({_num(c.get('images'), 0)} images)")
        how += "."
    else:
        mt = section.get("metrics") or {}
        d = {"top1": mt.get("dense_top1"), "top5": mt.get("dense_top5"), "gmacs": mt.get("dense_gmacs"),
             "params": mt.get("dense_params"), "throughput": mt.get("dense_throughput"),
             "latency_ms": mt.get("dense_latency_ms")}
        c = {"top1": mt.get("top1"), "top5": mt.get("top5"), "gmacs": mt.get("gmacs"), "params": mt.get("params"),
             "throughput": mt.get("throughput"), "latency_ms": mt.get("latency_ms")}
        bs = None
        how = "From config.json's metrics (report.json was not saved with this model, so the device, dtype and " \
              "batch size are not recorded)."
        if mt.get("dataset"):
            how = how[:-1] + f"; accuracy on {mt['dataset']} {mt.get('split', '')}".rstrip() + "."

    def change_pts(a, b):
        return f"{b - a:+.2f} pt"

    def ratio(a, b):
        return f"{b / a:.2f}×" if a else ""

    def add(label: str, key: str, digits: int, change, scale: float = 1.0) -> None:
        dv, cv = d.get(key), c.get(key)
        if dv is None and cv is None:
            return
        dv = dv / scale if isinstance(dv, (int, float)) and dv is not None else dv
        cv = cv / scale if isinstance(cv, (int, float)) and cv is not None else cv
        both = isinstance(dv, (int, float)) and isinstance(cv, (int, float))
        rows.append([label, _num(dv, digits), _num(cv, digits), change(dv, cv) if both else ""])

    speed = ((report or {}).get("measure") or {}).get("speed")
    srows, snotes = speed_rows(d, c, speed, bs)
    how = " ".join([how, *snotes, *reading_notes(d, c, bs, speed)])
    add("top-1 (%)", "top1", 2, change_pts)
    add("top-5 (%)", "top5", 2, change_pts)
    add("cosine to teacher", "cosine", 4, lambda a, b: f"{b - a:+.4f}")
    add(GMACS_LABEL, "gmacs", 3, ratio)
    add("params (M)", "params", 2, ratio, scale=1e6)
    rows += srows
    if d.get("tokens") and c.get("tokens"):
        def sched(t):
            return " ".join(f"{k}×{len(list(g))}" for k, g in groupby(t))

        rows.append(["tokens entering blocks", sched(d["tokens"]), sched(c["tokens"]), ""])
    return rows, how


def _table(header: list[str], rows: list[list[str]], align: Optional[list[str]] = None) -> str:
    align = align or ["left"] + ["right"] * (len(header) - 1)
    marks = {"left": ":---", "right": "---:"}
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks[a] for a in align) + " |"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
    return "\n".join(lines)


def _scalar(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (dict, list)):
        return "`" + json.dumps(v, default=str) + "`"
    return str(v)



@dataclass(frozen=True)
class _Card:
    """What a card is written from: a saved folder's vitprune section, report and config, read once."""

    section: Mapping[str, Any]
    report: Mapping[str, Any]
    config: Mapping[str, Any]
    method: Optional[str]
    options: Mapping[str, Any]
    base: Optional[str]
    info: Mapping[str, Any]
    repo_id: Optional[str]
    folder: Optional[Path]

    @property
    def title_method(self) -> str:
        return self.info.get("title") or str(self.method)

    @property
    def license(self) -> Optional[str]:
        return (self.config.get("pretrained_cfg") or {}).get("license") or None


def _intro(c: _Card) -> list[str]:
    """The title and what the model is."""
    name = _short_name(c.base)
    if not c.method:
        return [f"# {name} (dense)", "",
                f"A dense timm Vision Transformer saved by vitprune (base: `{c.base or 'unknown'}`); plain timm loads "
                "it, and vitprune's methods can compress it."]
    opts = _describe_options(c.options, c.info.get("specs"))
    lines = [f"# {name} · {c.title_method}" + (f" ({opts})" if opts else ""), "",
             f"`{c.base or 'a timm Vision Transformer'}` made faster by token sparsification with "
             f"**{c.title_method}**" + (f": {c.info['summary']}" if c.info.get("summary") else "") + ". "
             "Made with vitprune."]
    where = reduction_blocks((c.report.get("compressed") or {}).get("tokens"))
    if where:
        lines += ["", where]
    if c.info.get("paper"):
        lines += ["", f"Method: {c.info['paper']}."]
    return lines


def _results(c: _Card) -> list[str]:
    """Dense teacher and compressed side by side (a dense folder: its metrics)."""
    if c.method:
        rows, how = _metrics_rows(c.section, c.report)
        return ["", "## Results", "", _table(["", DENSE_TEACHER, "compressed", "change"], rows), "", how] if rows \
            else []
    if c.section.get("metrics"):
        rows = [[str(k), _scalar(v)] for k, v in c.section["metrics"].items()]
        return ["", "## Metrics", "", _table(["metric", "value"], rows)]
    return []


def _method_and_options(c: _Card) -> list[str]:
    if not c.method:
        return []
    lines = ["", "## Method and options", "",
             f"Method `{c.method}`" + (f" — {c.info['title']}" if c.info.get("title") else "") + "."]
    if c.options:
        rows = [[f"`{k}`", f"`{_value(v)}`"] for k, v in c.options.items()]
        lines += ["", _table(["option", "value"], rows, ["left", "left"])]
    for note in c.section.get("deviations") or []:
        lines += ["", f"Deviation from the paper on this model: {note}"]
    if c.info.get("runtime_options"):
        lines += ["", "Switchable at inference without retraining: "
                  + ", ".join(f"`{o}`" for o in c.info["runtime_options"]) + "."]
    return lines


def _data_and_recipe(c: _Card) -> list[str]:
    """The data it was trained on, the recipe, the run's length and the teacher."""
    lines: list[str] = []
    rep_data = c.report.get("data") or {}
    dataset = rep_data.get("data") or (c.section.get("metrics") or {}).get("dataset")
    if dataset:
        desc = f"`{dataset}`"
        parts = [f"{rep_data.get('classes')} classes" if rep_data.get("classes") else None,
                 f"{rep_data.get('train_images'):,} training images" if rep_data.get("train_images") else None,
                 f"{rep_data.get('val_images'):,} validation images" if rep_data.get("val_images") else None]
        parts = [p for p in parts if p]
        if parts:
            desc += ": " + ", ".join(parts)
        lines += ["", "## Data", "", desc + "."] + [f"- {note}" for note in rep_data.get("notes") or []]
    recipe = c.section.get("recipe") or c.report.get("recipe")
    if recipe:
        rows = [[f"`{k}`", _scalar(v)] for k, v in recipe.items() if k not in {"param_groups", "augment"}]
        if isinstance(recipe.get("augment"), Mapping) or recipe.get("augment") is None and "augment" in recipe:
            rows.append(["`augment`", _scalar(recipe.get("augment")) if recipe.get("augment") else "none"])
        lines += ["", "## Training recipe", "", _table(["key", "value"], rows, ["left", "left"])]
        train = c.report.get("train") or {}
        if train.get("seconds") is not None:
            lines += ["", f"Trained {train.get('epochs')} epochs ({train.get('steps')} steps, global batch "
                      f"{train.get('global_batch')}) on {train.get('device', '?')} in {train['seconds']:.0f} s."]
    if c.report.get("teacher"):
        lines += ["", f"Distilled from the teacher `{c.report['teacher']}`."]
    return lines


def _license(c: _Card) -> list[str]:
    if not c.license:
        return []
    return ["", "## License", "",
            f"`{c.license}`: the base model's license, as its config records it (timm's `pretrained_cfg.license`"
            + (f" of `{c.base}`" if c.base else "") + ", which this model's config keeps)."]


def _reproduce(c: _Card) -> list[str]:
    cmd = reproduce_command(c.section, c.report)
    if cmd:
        return ["", "## Reproduce", "", "```bash", cmd, "```"]
    if not c.method:
        return []
    return ["", "## Reproduce", "", "```python", "import vitprune",
            f"model = vitprune.load_model({json.dumps(str(c.base or 'MODEL'))})",
            f"vitprune.apply_method(model, {json.dumps(c.method)}"
            + "".join(f", {k}={v!r}" for k, v in c.options.items()) + ")",
            "vitprune.save(model, \"out/\")", "```"]


def _use_it(c: _Card) -> list[str]:
    """How to load it (from the Hub repo when ``repo_id`` is known), from Python and the command line."""
    where = f"hf-hub:{c.repo_id}" if c.repo_id else "path/to/this/folder"
    lines = ["", "## Use it", "", "```python", "import vitprune", "",
             f"model = vitprune.load({json.dumps(where)})  "
             f"# {'method and weights restored' if c.method else 'a timm ViT'}",
             "```"]
    if not c.repo_id:
        lines += ["", "After `vitprune push FOLDER --repo user/name`, load it with "
                  "`vitprune.load(\"hf-hub:user/name\")`."]
    lines += ["", "From the command line:", "", "```bash",
              f"vitprune profile {where}", f"vitprune eval {where} --data path/to/data", "```"]
    if c.method:
        lines += ["", f"This model needs vitprune to load: its forward pass is {c.title_method}'s"
                  + (" and its weights include the method's modules" if c.info.get("adds_modules") else "")
                  + ", so plain `timm.create_model` cannot rebuild it."]
    else:
        timm_where = where if c.repo_id else "local-dir:path/to/this/folder"
        lines += ["", f"Plain timm loads it too: `timm.create_model(\"{timm_where}\", pretrained=True)`."]
    onnx_record = c.report.get("onnx")
    if onnx_record or (c.folder is not None and (c.folder / "model.onnx").is_file()):
        lines += onnx_card_lines(onnx_record, c.config, c.repo_id)
    return lines


def _made_with(c: _Card) -> list[str]:
    versions = c.report.get("versions") or {}
    made = versions.get("vitprune") or c.section.get("version")
    if not made:
        return []
    extra = ", ".join(f"{k} {v}" for k, v in versions.items() if k != "vitprune")
    return ["", f"<sub>Made with vitprune {made}" + (f" ({extra})" if extra else "") + ".</sub>"]


#: the card's parts, in order
_PARTS = (_intro, _results, _method_and_options, _data_and_recipe, _license, _reproduce, _use_it, _made_with)


def render_card(
    folder: Optional[str | Path] = None,
    *,
    section: Optional[Mapping[str, Any]] = None,
    report: Optional[Mapping[str, Any]] = None,
    config: Optional[Mapping[str, Any]] = None,
    repo_id: Optional[str] = None,
) -> str:
    """The model card (README.md text, Hub metadata included) of a saved folder, or of a ``vitprune`` section and
    an optional report. ``repo_id`` (``user/name``) makes the loading snippet name the Hub repo."""
    if folder is not None:
        f_section, f_report, f_config = read_folder(folder)
        section = f_section if section is None else section
        report = f_report if report is None else report
        config = f_config if config is None else config
    section, report = dict(section or {}), dict(report or {})
    method = section.get("method") or report.get("method")
    c = _Card(section=section, report=report, config=dict(config or {}), method=method,
              options=dict(section.get("options") or report.get("options") or {}),
              base=section.get("base_model") or report.get("model"), info=method_info(method), repo_id=repo_id,
              folder=Path(folder) if folder is not None else None)
    top1_known = (report.get("compressed") or {}).get("top1") is not None \
        or (section.get("metrics") or {}).get("top1") is not None
    data = ModelCardData(library_name=None if method else "timm", pipeline_tag="image-classification",
                         tags=list(BASE_TAGS) + ([str(method)] if method else []), base_model=hub_base_model(c.base),
                         license=c.license, metrics=["accuracy"] if top1_known else None)
    body = "\n".join(line for part in _PARTS for line in part(c)) + "\n"
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")
    return card.content if card.content.endswith("\n") else card.content + "\n"


__all__ = ["render_card", "latency_change", "speed_rows", "reproduce_command", "hub_base_model", "read_folder", "short_method", "GMACS_LABEL"]
