"""Metrics against scikit-learn, shot groups and head/middle/tail thirds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from worker.metrics import classification_metrics, confusion_matrix, empty_groups_note, thirds


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, 300)  # classes 5 and 6 never occur as targets...
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 7, 300))  # but predicted
    cm = confusion_matrix(torch.as_tensor(y_true), torch.as_tensor(y_pred), 7)
    m = classification_metrics(cm, [500, 200, 60, 30, 10, 5, 1], "val")
    assert m["val_accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert m["val_balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert m["val_macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    recall = [float(np.mean(y_pred[y_true == c] == c)) for c in range(5)]
    assert m["val_per_class_accuracy"][:5] == pytest.approx(recall, abs=1e-6)
    assert m["val_per_class_accuracy"][5:] == [None, None]


def test_shot_groups_thirds_and_empty_groups() -> None:
    # class 0: 300 training images (many), 1: 50 (medium), 2, 3: 10 and 5 (few)
    cm = torch.tensor([[9, 1, 0, 0], [5, 5, 0, 0], [0, 0, 2, 8], [0, 0, 0, 10]])
    m = classification_metrics(cm, [300, 50, 10, 5], "test")
    assert m["test_many_shot_accuracy"] == pytest.approx(0.9)
    assert m["test_medium_shot_accuracy"] == pytest.approx(0.5)
    assert m["test_few_shot_accuracy"] == pytest.approx(0.6)
    assert thirds([300, 50, 10, 5]) == {"head": [0, 1], "middle": [2], "tail": [3]}
    assert m["test_head_accuracy"] == pytest.approx(0.7)
    assert m["test_middle_accuracy"] == pytest.approx(0.2)
    assert m["test_tail_accuracy"] == pytest.approx(1.0)
    assert empty_groups_note([300, 50, 10, 5]) is None

    balanced = classification_metrics(cm, [60, 60, 60, 60], "val")
    assert balanced["val_many_shot_accuracy"] is None and balanced["val_few_shot_accuracy"] is None
    assert balanced["val_shot_classes"] == {"many": 0, "medium": 4, "few": 0}
    note = empty_groups_note([60, 60, 60, 60])
    assert note is not None and "many/few" in note


def test_thirds_rank_by_training_count_not_index() -> None:
    assert thirds([5, 500, 50]) == {"head": [1], "middle": [2], "tail": [0]}
