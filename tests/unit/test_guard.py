"""The training guard's words: when a transformer version is no better than doing nothing, or than linear."""

from __future__ import annotations

from training.guard import Baselines, majority, training_warnings


def test_majority_is_the_largest_class_and_its_share() -> None:
    assert majority(["a", "b", "a", "c", "a"]) == ("a", 0.6)


def test_no_warning_when_the_transformer_beats_both() -> None:
    assert training_warnings(0.91, Baselines("billing", 0.3, 0.90), 200) == []
    assert training_warnings(0.90, Baselines("billing", 0.3, 0.90), 200) == []  # a tie with linear is not below


def test_below_the_majority_class_says_so_in_words() -> None:
    warnings = training_warnings(0.27, Baselines("technical", 0.30, 0.44), 156)
    assert len(warnings) == 2
    assert "not above always answering 'technical' (0.300)" in warnings[0]
    assert "0.270" in warnings[0] and "156 validation emails" in warnings[0]
    assert "below a linear model trained on the same rows (0.440)" in warnings[1]


def test_below_linear_only() -> None:
    (warning,) = training_warnings(0.80, Baselines("billing", 0.3, 0.85), 100)
    assert "linear model" in warning and "\n" not in warning
