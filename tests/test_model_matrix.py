"""The model-family matrix (benchmarks/model_matrix.py): eighteen timm ViT families (six timm Eva models, BEiT, NaFlexViT) x every registered method, and docs/models.md's
"Supported models" table is exactly what the matrix generates."""
from __future__ import annotations

import re

import pytest

from tests.benchscripts import load_benchmark
from vitprune.methods.registry import method_names

mm = load_benchmark("model_matrix")  # a module object only: nothing left in sys.modules or sys.path

NO_CLASS_TOKEN = ("vit_medium_patch16_gap_256", "vit_little_patch16_reg4_gap_256", "vit_base_patch16_siglip_224",
                  "vit_so400m_patch14_siglip_224")


def readme_cells() -> dict[tuple[str, str], str]:
    """docs/models.md's table, cell by cell: ``(timm model, method) -> "ok" or the reason``."""
    table = mm.readme_table(mm.PAGE.read_text())
    reasons = dict(re.findall(r"^(\d+)\. (.+)$", table, re.M))
    header = [p.strip().strip("`") for p in table.splitlines()[0].strip("|").split("|")][1:]
    cells = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("| "):
            continue
        parts = [p.strip() for p in line.strip("|").split("|")]
        arch = re.search(r"`([^`]+)`", parts[0]).group(1)
        for method, cell in zip(header, parts[1:]):
            num = re.fullmatch(r"✗ \((\d+)\)", cell)
            cells[arch, method] = "ok" if cell == "✓" else reasons[num.group(1)]
    return cells


def test_eighteen_families_that_exist_in_timm():
    import timm

    assert len(mm.FAMILIES) == 18 and mm.METHODS == tuple(method_names())
    assert all(timm.is_model(f.arch) for f in mm.FAMILIES)


def test_readme_table_has_a_column_per_registered_method():
    """A newly registered method needs the table regenerated (``python benchmarks/model_matrix.py --write-readme``)."""
    header = mm.readme_table(mm.PAGE.read_text()).splitlines()[0]
    assert header == "| family · timm model | " + " | ".join(f"`{m}`" for m in method_names()) + " |"


@pytest.mark.slow
@pytest.mark.parametrize("method", mm.METHODS)
@pytest.mark.parametrize("family", mm.FAMILIES, ids=lambda f: f.arch)
def test_cell(family, method):
    """Apply, one forward, GMACs below dense, identity at the no-op setting -- or the one-line refusal the table
    shows (a crash that is not a vitprune refusal fails here)."""
    got = mm.check(family, method)
    assert got == readme_cells()[family.arch, method]
    if family.arch in NO_CLASS_TOKEN:
        assert got == "ok"
    assert "\n" not in got


def test_readme_table_is_the_generated_one():
    """Rows, labels, order and layout: the page's table is what ``render`` writes for its own cells (each cell's
    value is checked against the model by ``test_cell``, so the cells are not built twice)."""
    cells = readme_cells()
    table = mm.render({f: {m: cells[f.arch, m] for m in mm.METHODS} for f in mm.FAMILIES})
    assert mm.readme_table(mm.PAGE.read_text()) == table
