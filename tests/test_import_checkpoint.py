"""`vitprune import-checkpoint` reads the training arguments an official checkpoint stores (``checkpoint["args"]``, an
``argparse.Namespace`` as the authors' DeiT-based training scripts save it) and uses them for the options the user
leaves out; a conflicting option is refused. Checkpoints are written here with ``torch.save``, on tiny real
timm DeiT weights."""
from __future__ import annotations

import argparse
import os

import pytest
import timm
import torch
from typer.testing import CliRunner

import vitprune
from vitprune.cli.main import app
from vitprune.errors import MethodOptionError
from vitprune.hub.convert import import_checkpoint

from .test_dynamicvit import _official_layout

BASE = "deit_tiny_patch16_224"


def _evit_checkpoint(path, **args):
    """An EViT release's layout: plain timm DeiT weights under 'model', the script's arguments under 'args' (EViT's
    main.py spells them ``base_keep_rate``, ``drop_loc`` as the text of a tuple, ``fuse_token``)."""
    torch.manual_seed(0)
    src = timm.create_model(BASE, pretrained=False)
    torch.save({"model": src.state_dict(), "epoch": 29, "args": argparse.Namespace(lr=5e-4, **args)}, path)
    return src


def _import(tmp_path, ckpt, *extra):
    return CliRunner().invoke(app, ["import-checkpoint", str(ckpt), "--method", "evit", "--base", BASE,
                                    "-o", str(tmp_path / "o"), *extra])


@pytest.mark.slow
def test_stored_training_arguments_set_the_options(tmp_path):
    src = _evit_checkpoint(tmp_path / "evit.pth", base_keep_rate=0.5, drop_loc="(2, 5, 8)", fuse_token=False)
    res = _import(tmp_path, tmp_path / "evit.pth")
    assert res.exit_code == 0, res.output
    model = vitprune.load(tmp_path / "o")
    o = model.vitprune_method.options
    assert (o.keep_rate, o.drop_loc, o.fuse) == (0.5, [2, 5, 8], False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in src.state_dict().items())


def test_a_conflicting_keep_rate_is_refused_in_one_line(tmp_path):
    _evit_checkpoint(tmp_path / "evit.pth", base_keep_rate=0.5, drop_loc="(3, 6, 9)", fuse_token=True)
    res = _import(tmp_path, tmp_path / "evit.pth", "--keep-rate", "0.7")
    assert res.exit_code == 1
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:") and "trained with --keep-rate 0.5" in lines[0]
    assert not (tmp_path / "o").exists()  # refused before the output folder is claimed: nothing left behind


@pytest.mark.slow
def test_the_stored_value_given_again_and_other_options_are_accepted(tmp_path):
    _evit_checkpoint(tmp_path / "evit.pth", base_keep_rate=0.5, drop_loc="(3, 6, 9)", fuse_token=True)
    res = _import(tmp_path, tmp_path / "evit.pth", "--keep-rate", "0.5", "--opt", "shrink_epochs=2")
    assert res.exit_code == 0, res.output
    o = vitprune.load(tmp_path / "o").vitprune_method.options
    assert (o.keep_rate, o.fuse, o.shrink_epochs) == (0.5, True, 2.0)


def test_dynamicvit_base_rate_becomes_the_keep_rate(tmp_path):
    """DynamicViT's main.py stores its rho as ``base_rate``."""
    torch.save({"model": _official_layout(192, BASE), "args": argparse.Namespace(base_rate=0.8)}, tmp_path / "d.pth")
    model = import_checkpoint(tmp_path / "d.pth", BASE, "dynamicvit")
    assert model.vitprune_method.options.keep_rate == 0.8
    with pytest.raises(MethodOptionError, match="`keep_rate` 0.8"):
        import_checkpoint(tmp_path / "d.pth", BASE, "dynamicvit", keep_rate=0.7)


class _Payload:
    """An object whose unpickling would run code (creates the file named in its state)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_arguments_holding_other_objects_are_never_unpickled(tmp_path):
    marker = tmp_path / "ran"
    torch.manual_seed(0)
    sd = timm.create_model(BASE, pretrained=False).state_dict()
    torch.save({"model": sd, "args": argparse.Namespace(base_keep_rate=0.5, evil=_Payload(str(marker)))},
               tmp_path / "evil.pth")
    res = _import(tmp_path, tmp_path / "evil.pth")
    assert res.exit_code == 1 and "not a readable PyTorch checkpoint" in res.output
    assert not os.path.exists(marker)
