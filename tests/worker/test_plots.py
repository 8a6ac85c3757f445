"""The pictures are PNG bytes and survive missing values."""

from __future__ import annotations

from worker.plots import confusion_png, per_class_png

PNG = b"\x89PNG\r\n\x1a\n"


def test_confusion_png() -> None:
    assert confusion_png([[5, 1, 0], [2, 3, 0], [0, 0, 0]], "val").startswith(PNG)


def test_confusion_png_many_classes_without_cell_text() -> None:
    cm = [[int(i == j) for j in range(40)] for i in range(40)]
    assert confusion_png(cm, "test").startswith(PNG)


def test_per_class_png_with_missing_values() -> None:
    png = per_class_png([0.9, None, 0.1, float("nan")], [500, 50, 5, 0], "per class")
    assert png.startswith(PNG) and len(png) > 1000


def test_per_class_png_without_counts() -> None:
    assert per_class_png([None, None], [], "nothing measured").startswith(PNG)
