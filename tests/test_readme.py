"""The README's Python examples run as printed (in a scratch folder), so they stay true."""

import re
from pathlib import Path

import pytest

import mechcausal as mc

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks(section: str) -> list[str]:
    text = README.read_text()
    start = text.index(f"## {section}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end if end > 0 else None], re.S)


@pytest.mark.parametrize("section", ["In a notebook", "Extending"])
def test_readme_examples_run(section, tmp_path, monkeypatch):
    blocks = _python_blocks(section)
    assert blocks, f"no python example under {section!r}"
    monkeypatch.chdir(tmp_path)
    families, diagnostics = dict(mc.GRAPH_FAMILIES), dict(mc.DIAGNOSTICS)
    try:
        for block in blocks:
            exec(compile(block, f"README.md ({section})", "exec"), {})
    finally:  # the examples register entries: leave the registries as they were
        mc.GRAPH_FAMILIES.clear()
        mc.GRAPH_FAMILIES.update(families)
        mc.DIAGNOSTICS.clear()
        mc.DIAGNOSTICS.update(diagnostics)
