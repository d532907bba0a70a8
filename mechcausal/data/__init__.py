"""Data: samplers and stationary laws, priors over transition matrices, the paper's
in-context tasks."""

from .priors import DirichletPrior, PermutationPrior, SparsePrior, TransitionPrior, prior_from_dict
from .sampling import stationary_distribution
from .tasks import (
    Batch,
    InContextDAG,
    InContextTask,
    InContextTree,
    InVocabularyTask,
    make_task,
    sample_stacked,
    task_from_dict,
)

__all__ = ["Batch", "DirichletPrior", "InContextDAG", "InContextTask", "InContextTree",
           "InVocabularyTask",
           "PermutationPrior", "SparsePrior", "TransitionPrior", "make_task", "prior_from_dict",
           "sample_stacked", "stationary_distribution", "task_from_dict"]
