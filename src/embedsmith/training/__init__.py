"""Fine-tuning bi-encoders, cross-encoders and late-interaction (multi-vector) models, with hard negatives
mined by BM25 or a dense model."""

from .data import TrainingData, inverse_cloze, load_training_data
from .fit import FinetuneReport, add_hard_negatives, finetune, finetune_reranker
from .late_interaction import LateInteractionReport, finetune_late_interaction
from .mining import mine_hard_negatives

__all__ = [
    "FinetuneReport",
    "LateInteractionReport",
    "TrainingData",
    "add_hard_negatives",
    "finetune",
    "finetune_late_interaction",
    "finetune_reranker",
    "inverse_cloze",
    "load_training_data",
    "mine_hard_negatives",
]
