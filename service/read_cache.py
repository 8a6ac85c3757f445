"""What the read routes keep in memory, and why it cannot go stale.

*Finished trials.* Optuna's storage refuses every write to a finished trial (its state, values,
parameters, attributes and epoch values all go through ``check_trial_is_updatable``), so a trial
read once in a finished state reads the same ever after. The read routes then load from the
database only the trials that are still waiting or running, or that this process has not seen
yet: a page of 50 finished trials costs one query for their rows instead of five. An entry is
keyed by the whole row of the trial (study, id, number, state, start and end times), not by its
id alone: SQLite may hand the id of a deleted study's trial to a new one, whose row differs.
What a route derives from other trials (a failed trial's "retried as") is added when the trial
is answered, never stored here.

*Best trials.* A study's best trial can only change when one of its trials completes, and a
completed trial stays completed and is never deleted alone, so the best trial is keyed by the
study (id, name and creation time) and its number of completed trials, which every read route
has already counted. The ranking query it saves sorts every completed trial of the study.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any, Generic, Literal, TypeVar

from optuna.storages import RDBStorage

V = TypeVar("V")

Kind = Literal["page", "whole", "best"]

# A page entry holds a trial's parameters, metrics and per-class accuracies (about 10 KB at 100
# classes); a whole trial adds its confusion matrices and epoch values, so fewer are kept.
SIZES: dict[Kind, int] = {"page": 4096, "whole": 64, "best": 1024}


class LRU(Generic[V]):
    """A thread-safe least-recently-used map of at most ``maxsize`` entries."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.maxsize:
                self._items.popitem(last=False)


_by_storage: weakref.WeakKeyDictionary[RDBStorage, dict[Kind, LRU[Any]]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def remembered(storage: RDBStorage, kind: Kind) -> LRU[Any]:
    """``storage``'s cache of finished trials as a page of trials shows them (``"page"``: the
    item of each, without "retried as"), of whole finished trials (``"whole"``), or of best
    trials (``"best"``)."""
    with _lock:
        caches = _by_storage.get(storage)
        if caches is None:
            caches = _by_storage[storage] = {k: LRU(n) for k, n in SIZES.items()}
        return caches[kind]
