"""The paper's experiments as named presets, and ``mechcausal reproduce``.

    import mechcausal.experiments as ex
    result = ex.run_experiment("fig2_chain")                 # quick scale
    ex.reproduce(["fig2_chain", "ood"], out="runs/repro")    # report.md, metrics.json, ...
"""

from . import paper  # noqa: F401  (registers the paper's experiments)
from .registry import (
    EXPERIMENTS,
    SCALES,
    TRAIN_KEYS,
    VERSION,
    Claim,
    Experiment,
    ExperimentResult,
    RunContext,
    check_overrides,
    experiment_settings,
    register_experiment,
    resolve_names,
    run_experiment,
)
from .report import report_markdown, reproduce, schedule, write_result
from .sweeps import sweep

__all__ = ["Claim", "EXPERIMENTS", "Experiment", "ExperimentResult", "RunContext", "SCALES",
           "TRAIN_KEYS", "VERSION", "check_overrides", "experiment_settings",
           "register_experiment", "report_markdown", "reproduce", "resolve_names",
           "run_experiment", "schedule", "sweep", "write_result"]
