"""Fine-tuning bi-encoders, cross-encoders and late-interaction (multi-vector) models, with hard negatives
mined by BM25 or a dense model.

Modules: :mod:`.data` (readers, inverse cloze), :mod:`.negatives` (mining), :mod:`.bi_encoder`
(:func:`finetune`), :mod:`.cross_encoder` (:func:`finetune_reranker`), :mod:`.late_interaction`
(:func:`finetune_late_interaction`), :mod:`.report` (the report and model card), :mod:`.models` (which folders
train), :mod:`.synthetic` (LLM-written queries).
"""

from .bi_encoder import LOSSES, finetune
from .cross_encoder import RERANKER_LOSSES, finetune_reranker
from .data import TrainingData, inverse_cloze, load_training_data
from .late_interaction import LateInteractionReport, finetune_late_interaction
from .models import model_folder
from .negatives import add_hard_negatives, load_dense_miner, mine_hard_negatives
from .report import FinetuneReport, ReportKind

__all__ = [
    "LOSSES",
    "RERANKER_LOSSES",
    "FinetuneReport",
    "LateInteractionReport",
    "ReportKind",
    "TrainingData",
    "add_hard_negatives",
    "finetune",
    "finetune_late_interaction",
    "finetune_reranker",
    "inverse_cloze",
    "load_dense_miner",
    "load_training_data",
    "mine_hard_negatives",
    "model_folder",
]
