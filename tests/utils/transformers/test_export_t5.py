"""Export to Hugging Face T5: transformers loads the folder with the same logits."""

import os

import numpy as np
import pytest

from hf_test_utils import T5_10, T5_11, hf_logits, load_hf, save_hf_t5
from keras_fusion.diagnostics import relative_error
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM
from t5_test_utils import TOLERANCE, random_backbone, random_inputs


def grown(kind, lm):
    if kind == "plain":
        return lm
    if kind == "self_fuse_global":
        return FusionT5Seq2SeqLM.self_fuse(lm, seed=0, norm="global")
    if kind == "deepen":
        return FusionT5Seq2SeqLM.deepen(lm, 2)
    return FusionT5Seq2SeqLM.widen_ffn(lm, 2, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [T5_10, T5_11], ids=["relu_tied", "gated_gelu_untied"])
@pytest.mark.parametrize("kind", ["plain", "self_fuse_global", "deepen", "widen_ffn"])
def test_grown_import_exports_to_transformers_with_the_original_logits(kind, variant, tmp_path):
    original, folder = save_hf_t5(tmp_path / "hf", **variant)
    lm = grown(kind, FusionT5Seq2SeqLM.from_preset(folder))
    lm.export_to_transformers(str(tmp_path / "out"))
    exported = load_hf(tmp_path / "out")
    inputs = random_inputs(seed=3)
    expected = hf_logits(original, inputs)
    assert relative_error(hf_logits(exported, inputs), expected) <= TOLERANCE
    # The export is the grown model, not the original.
    config = exported.config
    assert (config.d_model, config.num_layers, config.d_ff) == (
        lm.backbone.hidden_dim,
        lm.backbone.num_layers,
        lm.backbone.intermediate_dim,
    )
    assert config.tie_word_embeddings == variant["tie_word_embeddings"]


def test_keras_hub_backbone_and_global_fusion_export(tmp_path):
    """A model that never came from HF: a fused one made with norm='global'."""
    a = FusionT5Seq2SeqLM(random_backbone(hidden_dim=16, seed=1, cls=FusionT5Backbone))
    b = FusionT5Seq2SeqLM(random_backbone(hidden_dim=8, num_heads=1, seed=2, cls=FusionT5Backbone))
    fused = FusionT5Seq2SeqLM.fuse(a, b, norm="global")
    fused.export_to_transformers(str(tmp_path / "out"))
    inputs = random_inputs(seed=4)
    expected = np.asarray(fused.predict_on_batch(inputs))
    assert relative_error(hf_logits(load_hf(tmp_path / "out"), inputs), expected) <= TOLERANCE
    fused.backbone.export_to_transformers(str(tmp_path / "backbone"))
    assert relative_error(hf_logits(load_hf(tmp_path / "backbone"), inputs), expected) <= TOLERANCE


def test_several_norm_groups_are_refused_and_nothing_is_written(tmp_path):
    _, folder = save_hf_t5(tmp_path / "hf", **T5_11)
    lm = FusionT5Seq2SeqLM.from_preset(folder)
    for model in (FusionT5Seq2SeqLM.self_fuse(lm), FusionT5Seq2SeqLM.fuse(lm, lm)):
        target = tmp_path / "out"
        with pytest.raises(
            ValueError,
            match=r"norm_groups=\[16, 16\].*no grouped RMSNorm.*norm='global'.*function_error",
        ):
            model.export_to_transformers(str(target))
        assert not target.exists()


def test_gated_exact_gelu_is_refused(tmp_path):
    lm = FusionT5Seq2SeqLM(random_backbone(cls=FusionT5Backbone, activation="gelu"))
    with pytest.raises(ValueError, match="activation='gelu'.*use_gated_activation=True"):
        lm.export_to_transformers(str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_tokenizer_travels_with_the_export(tmp_path):
    from keras_fusion import data

    spm = data.train_tokenizer(
        data.load_corpus("embedded", "train")[:200], 200, str(tmp_path / "spm"), num_sentinels=10
    )
    _, folder = save_hf_t5(tmp_path / "hf", vocab_size=200, **T5_10)
    with open(spm, "rb") as source, open(os.path.join(folder, "spiece.model"), "wb") as f:
        f.write(source.read())
    lm = FusionT5Seq2SeqLM.from_preset(folder)
    lm.export_to_transformers(str(tmp_path / "out"))
    with open(spm, "rb") as a, open(tmp_path / "out" / "spiece.model", "rb") as b:
        assert a.read() == b.read()
    import transformers

    tokenizer = transformers.T5Tokenizer.from_pretrained(str(tmp_path / "out"))
    assert len(tokenizer) == 200  # the proto's sentinels, none added on top
    text = "Return the absolute value"
    assert tokenizer(text).input_ids == [
        int(i) for i in np.asarray(lm.preprocessor.tokenizer(text))
    ] + [1]
