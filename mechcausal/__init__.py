"""mechcausal: the in-context causal-structure task of Nichani, Damian & Lee (ICML 2024)
as TransformerLens-compatible models, fast training and diagnostics.

The package is layered; each layer imports only the ones above it in this list:

* ``ops``, ``files``: small shared helpers (softmaxes, cross-entropies, argument
  checks, output paths and atomic writes);
* ``graphs``: :class:`CausalGraph` and the graph-family registry;
* ``data``: samplers, priors, the in-context tasks;
* ``models``: the disentangled transformer, the reduced model, standard TL models, the
  model-kind registry (models never import tasks);
* ``plots``: every figure;
* ``diagnostics``: graph extraction, heads, induction, information, losses, patching,
  and the suite ``diagnose`` runs (never the trainer);
* ``training``: the config, the one loop, batches, callbacks, checkpoints, ensembles;
* ``experiments``: the paper's experiments and ``reproduce``;
* ``cli``: the ``mechcausal`` command.
"""

__version__ = "0.2.0"

from .data import (  # noqa: E402
    Batch,
    DirichletPrior,
    InContextDAG,
    InContextTask,
    InContextTree,
    InVocabularyTask,
    PermutationPrior,
    SparsePrior,
    make_task,
    sample_stacked,
    task_from_dict,
)
from .diagnostics import (  # noqa: E402
    DIAGNOSTICS,
    CausalInductionScore,
    Diagnosis,
    Diagnostic,
    Evaluation,
    Finding,
    GraphComparison,
    GraphEstimate,
    HeadRanking,
    HeadSplit,
    InductionCircuit,
    InductionScores,
    InformationReport,
    OODReport,
    ParentPatching,
    ProbeResult,
    ProbeSweep,
    causal_induction_score,
    chi2_mutual_information,
    diagnose,
    edge_effect,
    estimator_agreement,
    evaluate,
    extract_graph,
    gradient_at_init,
    head_split,
    heldout_losses,
    induction_circuit,
    induction_scores,
    information_report,
    ood_report,
    patch_parents,
    position_attention,
    probe,
    probe_sweep,
    rank_heads,
    AttentionView,
    register_diagnostic,
    show_attention,
)
from .experiments.sweeps import sweep  # noqa: E402
from .graphs import GRAPH_FAMILIES, CausalGraph, GraphFamily, register_graph_family  # noqa: E402
from .models import (  # noqa: E402
    MODEL_KINDS,
    DisentangledConfig,
    DisentangledTransformer,
    ModelKind,
    NativeModel,
    ReducedConfig,
    ReducedModel,
    hooked_transformer_config,
    load_lm,
    register_model_kind,
    standard_model,
    to_transformer_lens,
)
from .training import (  # noqa: E402
    AttentionSnapshots,
    Callback,
    Checkpoint,
    CheckpointError,
    EarlyStopping,
    Ensemble,
    History,
    NonFiniteLossError,
    Run,
    TensorBoardLogger,
    TrainConfig,
    TrackingLogger,
    TwoStageHistory,
    WandbLogger,
    load_checkpoint,
    save_checkpoint,
    train,
    train_ensemble,
    train_two_stage,
)

__all__ = [
    "AttentionSnapshots", "AttentionView", "Batch", "Callback", "CausalGraph", "CausalInductionScore",
    "Checkpoint", "CheckpointError", "DIAGNOSTICS", "Diagnosis", "Diagnostic",
    "DirichletPrior", "DisentangledConfig", "DisentangledTransformer", "EarlyStopping",
    "Ensemble", "Evaluation", "Finding", "GRAPH_FAMILIES", "GraphComparison",
    "GraphEstimate", "GraphFamily", "HeadRanking", "HeadSplit", "History",
    "InContextDAG", "InContextTask", "InContextTree", "InVocabularyTask",
    "InductionCircuit", "InductionScores", "InformationReport", "MODEL_KINDS", "ModelKind", "NativeModel",
    "NonFiniteLossError", "OODReport", "ParentPatching", "PermutationPrior",
    "ProbeResult", "ProbeSweep", "ReducedConfig", "ReducedModel", "Run", "SparsePrior",
    "TensorBoardLogger", "TrackingLogger", "TrainConfig", "TwoStageHistory", "WandbLogger",
    "causal_induction_score",
    "chi2_mutual_information", "diagnose", "edge_effect", "estimator_agreement",
    "evaluate", "extract_graph", "gradient_at_init", "head_split", "heldout_losses",
    "hooked_transformer_config", "induction_circuit", "induction_scores", "information_report",
    "load_checkpoint", "load_lm", "make_task", "ood_report", "patch_parents",
    "position_attention", "probe", "probe_sweep", "rank_heads", "register_diagnostic",
    "register_graph_family", "register_model_kind", "sample_stacked", "save_checkpoint",
    "show_attention", "standard_model", "sweep", "task_from_dict", "to_transformer_lens", "train",
    "train_ensemble", "train_two_stage",
]
