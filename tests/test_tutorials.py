"""Every tutorial notebook executes top to bottom at small size; its last cell asserts
its headline result, so a notebook whose claim stops holding fails here."""

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "tutorials_execute", Path(__file__).resolve().parents[1] / "tutorials" / "execute.py"
)
execute_module = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(execute_module)

EXPECTED = [
    "01_quickstart",
    "02_induction_head_from_markov_chains",
    "03_recovering_causal_graphs",
    "04_gradient_is_mutual_information",
    "05_multi_head_graph_splitting",
    "06_comparing_with_standard_lm_induction_heads",
    "07_diagnostics_on_language_models",
]


def test_all_seven_tutorials_exist():
    assert [p.stem for p in execute_module.notebooks()] == EXPECTED


@pytest.mark.parametrize("name", EXPECTED)
def test_tutorial_executes(name):
    path = execute_module.TUTORIALS / f"{name}.ipynb"
    execute_module.execute(path, small=True, save=False)
