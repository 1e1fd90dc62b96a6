"""Continual-learning metrics on small matrices computed by hand."""

import pytest

from adapterbank.evaluation.metrics import average_accuracy, backward_transfer, forgetting, forward_transfer, summary

FORGETFUL = [[0.9, None, None],
             [0.8, 0.95, None],
             [0.7, 0.90, 0.85]]
# task 0 improves after task 1, then drops: forgetting measures from the peak, BWT from the first score
RECOVERING = [[0.5, 0.2, None],
              [0.8, 0.9, 0.3],
              [0.6, 0.7, 0.8]]


def test_average_accuracy_is_the_last_row_mean():
    assert average_accuracy(FORGETFUL) == pytest.approx((0.7 + 0.9 + 0.85) / 3)


def test_backward_transfer_compares_final_with_just_learned():
    assert backward_transfer(FORGETFUL) == pytest.approx(((0.7 - 0.9) + (0.9 - 0.95)) / 2)
    assert backward_transfer(RECOVERING) == pytest.approx(((0.6 - 0.5) + (0.7 - 0.9)) / 2)


def test_forgetting_is_measured_from_the_best_earlier_stage():
    assert forgetting(FORGETFUL) == pytest.approx((0.2 + 0.05) / 2)
    assert forgetting(RECOVERING) == pytest.approx(((0.8 - 0.6) + (0.9 - 0.7)) / 2)  # 0.2, while BWT is only -0.05


def test_forward_transfer_uses_the_score_one_stage_early():
    assert forward_transfer(RECOVERING, [0.1, 0.1, 0.2]) == pytest.approx(((0.2 - 0.1) + (0.3 - 0.2)) / 2)
    with pytest.raises(ValueError, match=r"R\[0\]\[1\] is missing"):
        forward_transfer(FORGETFUL, [0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="one zero-training score per task"):
        forward_transfer(RECOVERING, [0.1])


def test_one_task_has_nothing_to_transfer_or_forget():
    assert summary([[0.75]], [0.1]) == {"average_accuracy": 0.75, "bwt": None, "fwt": None, "forgetting": None}


def test_missing_or_ragged_matrices_are_refused():
    with pytest.raises(ValueError, match=r"R\[1\]\[0\] is missing"):
        average_accuracy([[0.9, None], [None, 0.8]])
    with pytest.raises(ValueError, match="square"):
        average_accuracy([[0.9], [0.8, 0.7]])
