"""Growth schedules: parsing, validation, planning."""

import pytest

from keras_fusion import growth
from keras_fusion.growth import Deepen, Fuse, SelfFuse, WidenFFN, doubling_entry, parse_schedule
from keras_fusion.models import FusionT5Backbone
from keras_fusion.models.fusion_t5_backbone import backbone_config
from t5_test_utils import random_backbone


def test_parse_schedule_entries_and_options():
    schedule = parse_schedule(
        "deepen@3000:layers=2, self_fuse@1000:noise=0.01,widen_ffn@5000:factor=3"
    )
    assert schedule == [
        SelfFuse(at_step=1000, noise=0.01),
        Deepen(at_step=3000, num_new_layers=2),
        WidenFFN(at_step=5000, factor=3),
    ]
    assert [e.describe() for e in schedule][1] == "deepen@3000:layers=2:mode=identity"
    assert parse_schedule(schedule[1].describe()) == [schedule[1]]


def test_a_partner_on_a_remote_filesystem_keeps_its_scheme():
    from keras_fusion import storage

    storage.write_bytes("ram://growth_test/partner.keras", b"not read until the growth")
    (entry,) = parse_schedule("fuse@10:partner=ram://growth_test/partner.keras:weight=0.25")
    assert (entry.partner, entry.weight) == ("ram://growth_test/partner.keras", 0.25)
    assert parse_schedule(entry.describe()) == [entry]


@pytest.mark.parametrize(
    "text,message",
    [
        (
            "grow@10",
            r"Schedule entry 'grow@10': unknown operator 'grow'; "
            r"allowed: deepen, fuse, random_widen_ffn, self_fuse, widen_ffn",
        ),
        ("deepen", r"Schedule entry 'deepen': expected OPERATOR@STEP"),
        ("deepen@ten", r"'deepen@ten': step 'ten' is not an integer"),
        ("deepen@-5", r"'deepen@-5': deepen: at_step must be an int >= 1, got -5"),
        ("deepen@5:depth=2", r"unknown option 'depth=2'; allowed for deepen: layers=, mode="),
        ("deepen@5:layers=two", r"layers='two' is not a valid int"),
        ("deepen@5:mode=interleave", r"mode must be one of \('identity', 'stack'\)"),
        ("widen_ffn@5:factor=1", r"factor must be an int >= 2, got 1"),
        ("self_fuse@5:noise=-1", r"noise must be a finite number >= 0"),
        ("fuse@5", r"partner is required"),
        (
            "fuse@5:partner=/nonexistent/model.keras",
            r"partner file not found: /nonexistent/model.keras",
        ),
        ("deepen@5,self_fuse@5", r"Two growth entries at step 5: deepen@5.* and self_fuse@5"),
    ],
)
def test_bad_schedules_name_the_entry(text, message):
    with pytest.raises(ValueError, match=message):
        parse_schedule(text)


def test_parameter_count_matches_built_models():
    for kwargs in (dict(), dict(use_gated_activation=False, tie_embedding_weights=False)):
        backbone = random_backbone(cls=FusionT5Backbone, **kwargs)
        assert growth.parameter_count(backbone_config(backbone)) == backbone.count_params()


def test_plan_schedule_predicts_the_grown_configs():
    a = random_backbone(cls=FusionT5Backbone)
    partner = random_backbone(
        hidden_dim=8, num_heads=1, intermediate_dim=16, seed=1, cls=FusionT5Backbone
    )
    from keras_fusion.models import FusionT5Seq2SeqLM

    schedule = [
        Fuse(at_step=1, partner=FusionT5Seq2SeqLM(partner)),
        SelfFuse(at_step=2),
        Deepen(at_step=3, num_new_layers=2),
        WidenFFN(at_step=4),
    ]
    planned = growth.grown_configs(schedule, backbone_config(a))
    grown = FusionT5Backbone.fuse(a, partner)
    grown = FusionT5Backbone.widen_ffn(
        FusionT5Backbone.deepen(FusionT5Backbone.self_fuse(grown), 2), 2
    )
    _, config, count = planned[-1]
    assert count == grown.count_params()
    for key in ("hidden_dim", "num_heads", "intermediate_dim", "num_layers", "norm_groups"):
        assert config[key] == getattr(grown, key), key
    with pytest.raises(
        ValueError,
        match=r"self_fuse@2.*would grow to [\d,]+ parameters, over max_parameters=40,000",
    ):
        growth.grown_configs(schedule, backbone_config(a), max_parameters=40_000)


def test_plan_rejects_partner_that_cannot_be_fused():
    from keras_fusion.models import FusionT5Seq2SeqLM

    a = random_backbone(cls=FusionT5Backbone)
    partner = FusionT5Seq2SeqLM(random_backbone(cls=FusionT5Backbone, num_layers=3))
    with pytest.raises(
        ValueError,
        match=r"fuse@7.*partner cannot be fused with the model: num_layers differs: 2 vs 3",
    ):
        growth.grown_configs([Fuse(at_step=7, partner=partner)], backbone_config(a))


def test_doubling_entry_is_the_one_rule_for_the_modes_of_one_model():
    # self fusion doubles the width (no layers added); the depth modes add the
    # layers asked for, "stack" copying the top ones, "deepen" as identities.
    assert doubling_entry("self_fusion", 7, num_new_layers=3) == SelfFuse(at_step=7)
    assert doubling_entry("deepen", 7, 3) == Deepen(at_step=7, num_new_layers=3, mode="identity")
    assert doubling_entry("stack", 7, 3) == Deepen(at_step=7, num_new_layers=3, mode="stack")
    with pytest.raises(ValueError, match="mode must be one of .*'deep_fusion'"):
        doubling_entry("deep_fusion", 7, 3)
