"""Hugging Face T5 import against transformers' PyTorch T5 as the oracle."""

import json
import os

import numpy as np
import pytest

from hf_test_utils import T5_10, T5_11, hf_logits, save_hf_t5
from keras_fusion.diagnostics import relative_error
from keras_fusion.models import FusionT5Backbone, FusionT5Seq2SeqLM
from keras_fusion.utils.transformers import convert_t5, safetensors_io
from t5_test_utils import TOLERANCE, random_inputs


def keras_logits(lm, inputs):
    return np.asarray(lm.predict_on_batch(inputs))


@pytest.mark.parametrize(
    "variant", [T5_10, T5_11], ids=["t5_1.0_relu_tied", "t5_1.1_gated_gelu_untied"]
)
def test_imported_logits_equal_transformers(variant, tmp_path):
    model, folder = save_hf_t5(tmp_path / "hf", **variant)
    lm = FusionT5Seq2SeqLM.from_preset(folder)
    assert isinstance(lm.backbone, FusionT5Backbone)
    assert lm.backbone.tie_embedding_weights == variant["tie_word_embeddings"]
    assert lm.backbone.key_value_dim == 8 and lm.backbone.num_heads == 3
    assert lm.backbone.layer_norm_epsilon == 1e-5
    inputs = random_inputs()
    assert relative_error(keras_logits(lm, inputs), hf_logits(model, inputs)) <= TOLERANCE


def test_sharded_safetensors_with_index(tmp_path):
    model = save_hf_t5(tmp_path / "one", **T5_11)[0]
    model.save_pretrained(str(tmp_path / "sharded"), max_shard_size="20KB")
    shards = [n for n in os.listdir(tmp_path / "sharded") if n.endswith(".safetensors")]
    assert len(shards) > 2 and (tmp_path / "sharded" / safetensors_io.WEIGHTS_INDEX_FILE).exists()
    lm = FusionT5Seq2SeqLM.from_preset(str(tmp_path / "sharded"))
    inputs = random_inputs(seed=1)
    assert relative_error(keras_logits(lm, inputs), hf_logits(model, inputs)) <= TOLERANCE


def test_transformers_5_config_tied_but_unscaled(tmp_path):
    """5.x writes T5.1.1 as tie_word_embeddings true + scale_decoder_outputs
    false and no lm_head.weight: logits = norm(x) @ shared.T, unscaled. The
    oracle is a 4.x untied model whose lm_head equals its embedding."""
    import safetensors.numpy
    import torch

    model, folder = save_hf_t5(tmp_path / "hf", **T5_11)
    with torch.no_grad():
        model.lm_head.weight.copy_(model.shared.weight)
    tensors = {
        k: v.numpy()
        for k, v in model.state_dict().items()
        if k not in ("lm_head.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
    }
    safetensors.numpy.save_file(
        tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"}
    )
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config.update(
        tie_word_embeddings=True, scale_decoder_outputs=False, transformers_version="5.0.0"
    )
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    lm = FusionT5Seq2SeqLM.from_preset(folder)
    assert lm.backbone.tie_embedding_weights
    inputs = random_inputs(seed=2)
    assert relative_error(keras_logits(lm, inputs), hf_logits(model, inputs)) <= TOLERANCE


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_decoder_layers", 3),
        ("relative_attention_num_buckets", 64),
        ("relative_attention_max_distance", 256),
        ("feed_forward_proj", "gated-tanh"),
        ("feed_forward_proj", "relu-gated"),
        ("architectures", ["T5EncoderModel"]),
        ("is_encoder_decoder", False),
        ("quantization_config", {"quant_method": "bitsandbytes"}),
        ("layer_norm_epsilon", -1.0),
        ("d_kv", 0),
    ],
)
def test_unrepresentable_configs_are_refused_before_any_weight_is_read(field, value, tmp_path):
    _, folder = save_hf_t5(tmp_path / "hf", **T5_11)
    with open(os.path.join(folder, "config.json")) as f:
        config = json.load(f)
    config[field] = value
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    # Weights that cannot be read: reading any would raise another error.
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(b"not safetensors")
    before = sorted(os.listdir(folder))
    for load in (FusionT5Seq2SeqLM.from_preset, FusionT5Backbone.from_preset):
        with pytest.raises(
            ValueError, match=f"{field}={value!r}".replace("[", r"\[").replace("]", r"\]")
        ) as info:
            load(folder)
        assert "supports only" in str(info.value)
    assert sorted(os.listdir(folder)) == before


def test_model_type_other_than_t5_is_refused():
    with pytest.raises(ValueError, match="model_type='mt5'"):
        convert_t5.convert_config({"model_type": "mt5"})


def test_untied_checkpoint_without_lm_head_is_refused(tmp_path):
    import safetensors.numpy

    model, folder = save_hf_t5(tmp_path / "hf", **T5_11)
    tensors = {k: v.numpy() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    safetensors.numpy.save_file(
        tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"}
    )
    with pytest.raises(ValueError, match="lm_head.weight"):
        FusionT5Seq2SeqLM.from_preset(folder)


def test_activations_follow_transformers():
    from keras_hub.src.utils.keras_utils import gelu_approximate

    assert convert_t5.activation_of("gated-gelu") == (gelu_approximate, True)  # HF: gelu_new
    assert convert_t5.activation_of("gelu") == ("gelu", False)  # exact erf in both
    assert convert_t5.activation_of("relu") == ("relu", False)
    assert convert_t5.activation_of("gated-silu") == ("silu", True)


def test_greedy_generate_on_strings_matches_transformers(tmp_path):
    import sentencepiece

    from keras_fusion import data

    vocabulary = 200
    spm_path = data.train_tokenizer(
        data.load_corpus("embedded", "train")[:200],
        vocabulary,
        str(tmp_path / "spm"),
        num_sentinels=10,
    )
    prompts = ["Return the absolute value of a number.", "The import statement"]
    processor = sentencepiece.SentencePieceProcessor(model_file=spm_path)
    for seed in range(5):  # a random model whose answers are not all empty
        model, folder = save_hf_t5(
            tmp_path / f"hf{seed}", seed=seed, vocab_size=vocabulary, **T5_11
        )
        with open(spm_path, "rb") as source, open(os.path.join(folder, "spiece.model"), "wb") as f:
            f.write(source.read())
        import torch

        expected = []
        for prompt in prompts:
            ids = torch.tensor([processor.encode(prompt) + [1]])
            out = model.generate(ids, max_new_tokens=8, do_sample=False, num_beams=1)[0].tolist()
            expected.append(processor.decode([i for i in out[1:] if i > 1]))
        if all(expected):
            break
    assert all(expected)
    lm = FusionT5Seq2SeqLM.from_preset(folder)
    lm.compile(sampler="greedy")
    assert lm.preprocessor.tokenizer.vocabulary_size() == vocabulary
    generated = lm.generate(prompts, max_length=9)  # the start token and 8 new ones
    assert list(generated) == expected
    # load_lm (what tools.train --init_from uses) returns the SentencePiece model too.
    from keras_fusion.models import load_lm

    loaded, proto = load_lm(folder)
    with open(spm_path, "rb") as f:
        assert proto == f.read()
    assert isinstance(loaded, FusionT5Seq2SeqLM)


@pytest.mark.parametrize("weights", [None, [0.3, 0.7]], ids=["uniform", "unequal"])
def test_fuse_of_two_imported_models_is_the_weighted_mean_of_hf_logits(weights, tmp_path):
    a, folder_a = save_hf_t5(tmp_path / "a", seed=1, **T5_11)
    b, folder_b = save_hf_t5(tmp_path / "b", seed=2, d_model=8, num_heads=2, d_ff=12, **T5_11)
    fused = FusionT5Seq2SeqLM.fuse(
        FusionT5Seq2SeqLM.from_preset(folder_a),
        FusionT5Seq2SeqLM.from_preset(folder_b),
        weights=weights,
    )
    inputs = random_inputs(seed=5)
    wa, wb = weights or (0.5, 0.5)
    expected = wa * hf_logits(a, inputs) + wb * hf_logits(b, inputs)
    assert relative_error(keras_logits(fused, inputs), expected) <= TOLERANCE


def test_backbone_encoder_output_equals_transformers_encoder(tmp_path):
    import torch

    model, folder = save_hf_t5(tmp_path / "hf", **T5_10)
    backbone = FusionT5Backbone.from_preset(folder)
    inputs = random_inputs(seed=6)
    with torch.no_grad():
        expected = model.encoder(
            input_ids=torch.tensor(inputs["encoder_token_ids"], dtype=torch.long),
            attention_mask=torch.tensor(inputs["encoder_padding_mask"], dtype=torch.long),
        ).last_hidden_state.numpy()
    outputs = backbone(inputs, training=False)
    assert relative_error(np.asarray(outputs["encoder_sequence_output"]), expected) <= TOLERANCE


def test_imported_gated_gelu_model_survives_keras_saving(tmp_path):
    import keras

    model, folder = save_hf_t5(tmp_path / "hf", **T5_11)
    lm = FusionT5Seq2SeqLM.from_preset(folder)
    lm.save(str(tmp_path / "lm.keras"))
    lm.save_to_preset(str(tmp_path / "preset"))
    inputs = random_inputs(seed=7)
    expected = hf_logits(model, inputs)
    for loaded in (
        keras.saving.load_model(str(tmp_path / "lm.keras"), compile=False),
        FusionT5Seq2SeqLM.from_preset(str(tmp_path / "preset")),
    ):
        assert relative_error(keras_logits(loaded, inputs), expected) <= TOLERANCE
