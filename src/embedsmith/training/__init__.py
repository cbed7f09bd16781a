"""Fine-tuning bi-encoders and cross-encoders, with hard negatives mined by BM25 or a dense model."""

from .data import TrainingData, inverse_cloze, load_training_data
from .fit import FinetuneReport, add_hard_negatives, finetune, finetune_reranker
from .mining import mine_hard_negatives

__all__ = [
    "FinetuneReport",
    "TrainingData",
    "add_hard_negatives",
    "finetune",
    "finetune_reranker",
    "inverse_cloze",
    "load_training_data",
    "mine_hard_negatives",
]
