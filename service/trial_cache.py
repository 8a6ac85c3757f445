"""Finished trials kept in memory by the API process.

Optuna's storage refuses every write to a finished trial (its state, values, parameters,
attributes and epoch values all go through ``check_trial_is_updatable``), so a trial read once
in a finished state reads the same ever after. The read routes then load from the database
only the trials that are still waiting or running, or that this process has not seen yet: a
page of 50 finished trials costs one query for their rows instead of five.

An entry is keyed by the whole row of the trial (study, id, number, state, start and end
times), not by its id alone: SQLite may hand the id of a deleted study's trial to a new one,
whose row differs. What a route derives from other trials (a failed trial's "retried as") is
added when the trial is answered, never stored here.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Literal

from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial

# A page entry holds a trial's parameters, metrics and per-class accuracies (about 10 KB at 100
# classes); a whole trial adds its confusion matrices and epoch values, so fewer are kept.
SIZES = {"page": 4096, "whole": 64}

Kind = Literal["page", "whole"]


class FinishedTrials:
    """A thread-safe LRU of finished trials, for one store and one way of loading them."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[Hashable, FrozenTrial] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> FrozenTrial | None:
        with self._lock:
            trial = self._items.get(key)
            if trial is not None:
                self._items.move_to_end(key)
            return trial

    def put(self, key: Hashable, trial: FrozenTrial) -> None:
        with self._lock:
            self._items[key] = trial
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


_by_storage: weakref.WeakKeyDictionary[RDBStorage, dict[str, FinishedTrials]] = \
    weakref.WeakKeyDictionary()
_lock = threading.Lock()


def finished_trials(storage: RDBStorage, kind: Kind) -> FinishedTrials:
    """The cache of ``storage``'s finished trials as a page of trials (``"page"``: no epoch
    values, the listed attributes only) or as one whole trial (``"whole"``) loads them."""
    with _lock:
        caches = _by_storage.get(storage)
        if caches is None:
            caches = _by_storage[storage] = {k: FinishedTrials(n) for k, n in SIZES.items()}
        return caches[kind]
