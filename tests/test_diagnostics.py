"""keras_fusion.diagnostics: the relative error every exactness check uses."""

import numpy as np
import pytest

from keras_fusion.diagnostics import relative_error


@pytest.mark.parametrize(
    "output,reference,expected",
    [
        ([1.0, 1.0], [1.0, 0.0], 1.0),  # ||(0, 1)|| / ||(1, 0)||
        ([3.0, 4.0], [3.0, 4.0], 0.0),
        ([0.0, 0.0], [3.0, 4.0], 1.0),  # ||(-3, -4)|| / 5
        (
            [[1.0, 2.0], [3.0, 4.0]],
            [[1.0, 2.0], [3.0, 0.0]],
            4.0 / np.sqrt(14.0),
        ),  # over all entries
        ([6.0, 8.0], [3.0, 4.0], 1.0),  # ||(3, 4)|| / ||(3, 4)||
    ],
)
def test_relative_error_on_hand_computed_arrays(output, reference, expected):
    assert relative_error(np.array(output, "float32"), np.array(reference)) == pytest.approx(
        expected, rel=1e-12
    )


def test_relative_error_refuses_arrays_of_different_shapes_naming_both():
    with pytest.raises(ValueError, match=r"Shapes differ: output \(2, 3\) vs reference \(3, 2\)"):
        relative_error(np.zeros((2, 3)), np.ones((3, 2)))
