"""Property tests: any sequence of exact operators on any small T5 preserves
the function (hypothesis draws the configurations and the sequences)."""

import keras_hub
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keras_fusion.diagnostics import function_error
from keras_fusion.models import FusionT5Backbone
from t5_test_utils import TOLERANCE, random_backbone, random_inputs

SHARED = st.fixed_dictionaries(
    {
        "num_layers": st.integers(1, 2),
        "activation": st.sampled_from(["relu", "gelu"]),
        "use_gated_activation": st.booleans(),
        "tie_embedding_weights": st.booleans(),
    }
)
WIDTH = st.fixed_dictionaries(
    {
        "num_heads": st.integers(1, 3),
        "intermediate_dim": st.integers(2, 12),
    }
)
OPERATORS = st.lists(
    st.one_of(
        st.tuples(st.just("fuse"), WIDTH),
        st.tuples(st.just("self_fuse"), st.floats(0.0, 0.05)),
        st.tuples(st.just("deepen"), st.integers(1, 2)),
        st.tuples(st.just("widen_ffn"), st.integers(2, 3)),
    ),
    min_size=1,
    max_size=3,
)


def small(shared, width, seed):
    # key_value_dim 4 for every model, so that any two of them can be fused.
    return random_backbone(
        hidden_dim=4 * width["num_heads"],
        key_value_dim=4,
        seed=seed,
        cls=keras_hub.models.T5Backbone,
        **width,
        **shared,
    )


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(shared=SHARED, width=WIDTH, operators=OPERATORS, seed=st.integers(0, 1000))
def test_any_sequence_of_exact_operators_preserves_the_function(shared, width, operators, seed):
    model = small(shared, width, seed)
    # What the grown backbone must compute: its sources' outputs, concatenated.
    sources = [model]
    for i, (name, argument) in enumerate(operators):
        if name == "fuse":  # a partner as deep as the model has become
            partner = small(dict(shared, num_layers=model.num_layers), argument, seed + i + 1)
            model, sources = FusionT5Backbone.fuse(model, partner), sources + [partner]
        elif name == "self_fuse":
            model, sources = FusionT5Backbone.self_fuse(model, noise=argument, seed=i), sources * 2
        elif name == "deepen":
            model = FusionT5Backbone.deepen(model, argument)
        else:
            model = FusionT5Backbone.widen_ffn(model, argument, noise=0.01, seed=i)
    errors = function_error(model, sources, random_inputs(seed=seed))
    assert max(errors.values()) <= TOLERANCE, (operators, errors)
