"""Hugging Face T5 -> keras_fusion: the config check and the weight map.

A Hugging Face T5 folder holds `config.json`, the weights (`model.safetensors`,
or shards named by `model.safetensors.index.json`) and, for most released
checkpoints, the SentencePiece model `spiece.model`. `convert_config` checks
the config and translates it into `FusionT5Backbone` arguments, refusing what
keras-hub's T5 cannot represent before any weight is read;
`convert_weights` maps the named HF tensors to a parameter tree (the layout
of `keras_fusion.growth_maps`), in pure NumPy. `load_backbone` and
`load_tokenizer` are the thin Keras side.

Both lines of `transformers` configs are read:
- 4.x: `tie_word_embeddings` true for T5 1.0 (logits scaled by
  `d_model ** -0.5`), false for T5.1.1 / Flan-T5, whose files then hold a
  separate `lm_head.weight` (no scale);
- 5.x: `tie_word_embeddings` is always true and `scale_decoder_outputs`
  carries the old flag; a T5.1.1 file then holds no `lm_head.weight` and its
  logits are `norm(x) @ shared.T` unscaled. keras-hub's tied T5 always scales,
  so that case is imported tied with the final decoder norm multiplied by
  `sqrt(d_model)`, which is exact (the norm's output feeds only the logits).

Example:

```python
from keras_fusion.models import FusionT5Seq2SeqLM
lm = FusionT5Seq2SeqLM.from_preset("/path/to/flan-t5-small")  # a local HF folder
lm.generate(["translate English to German: How old are you?"])
```
"""

import numpy as np

from keras_fusion import storage
from keras_fusion._keras_internals import gelu_approximate
from keras_fusion.utils.transformers.safetensors_io import LazyArray, SafetensorsCheckpoint

CONFIG_FILE = "config.json"
SPIECE_FILE = "spiece.model"

# keras-hub's T5MultiHeadAttention hard-codes its relative-position buckets.
RELATIVE_ATTENTION_NUM_BUCKETS = 32
RELATIVE_ATTENTION_MAX_DISTANCE = 128
# Architectures whose files hold an encoder, a decoder and shared embeddings.
ARCHITECTURES = ("T5ForConditionalGeneration", "T5WithLMHeadModel", "T5Model")
# HF activation names (the part of `feed_forward_proj` after "gated-") ->
# Keras activations. HF's "gated-gelu" means gelu_new, the tanh approximation.
ACTIVATIONS = {
    "relu": "relu",
    "gelu": "gelu",  # exact erf GELU in both libraries
    "gelu_new": gelu_approximate,
    "gelu_pytorch_tanh": gelu_approximate,
    "silu": "silu",
    "swish": "silu",
}


def _refuse(field, value, allowed):
    raise ValueError(
        f"Cannot import this T5 checkpoint: config.json has {field}={value!r}, "
        f"but keras-hub's T5 supports only {allowed}."
    )


def _positive_int(hf_config, field):
    value = hf_config.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        _refuse(field, value, "a positive int")
    return value


def activation_of(feed_forward_proj):
    """`(keras activation, gated)` of an HF `feed_forward_proj` string.

    Args:
        feed_forward_proj: e.g. `"relu"` (T5 1.0) or `"gated-gelu"` (T5.1.1,
            Flan-T5).

    Returns:
        A Keras activation (name or function) and whether the FFN is gated.

    Raises:
        ValueError: naming `feed_forward_proj` when it is not one of
            `[gated-]{relu, gelu, gelu_new, gelu_pytorch_tanh, silu, swish}`.

    Example:

    ```python
    activation, gated = activation_of("gated-gelu")  # gelu_approximate, True
    ```
    """
    parts = str(feed_forward_proj).split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    name = parts[-1]
    if len(parts) > 2 or (len(parts) == 2 and not gated) or name not in ACTIVATIONS:
        _refuse(
            "feed_forward_proj",
            feed_forward_proj,
            f"'<act>' or 'gated-<act>' with <act> in {sorted(ACTIVATIONS)}",
        )
    if gated and name == "gelu":
        name = "gelu_new"  # transformers' backward compatibility: gated-gelu is gelu_new
    return ACTIVATIONS[name], gated


def convert_config(hf_config):
    """Check an HF T5 config and translate it into `FusionT5Backbone` arguments.

    Args:
        hf_config: the dict of a T5 `config.json` (transformers 4.x or 5.x).

    Returns:
        `(config, output_scale)`: the backbone's constructor arguments (one
        norm group) and the factor by which the final decoder norm's weights
        must be multiplied so that keras-hub's logits equal HF's (1.0 except
        for "tied but unscaled" 5.x configs, `sqrt(d_model)`).

    Raises:
        ValueError: naming the field and its value, for anything keras-hub's T5
            cannot represent: `model_type` other than "t5", an encoder-only
            architecture, `num_decoder_layers != num_layers`, relative
            attention buckets or max distance other than 32 / 128, an
            unknown `feed_forward_proj`, a quantized checkpoint, or a
            missing or non-positive size.

    Example:

    ```python
    config, output_scale = convert_config(read_json(folder, "config.json"))
    ```
    """
    if hf_config.get("model_type") != "t5":
        _refuse("model_type", hf_config.get("model_type"), "'t5'")
    architectures = hf_config.get("architectures") or []
    for architecture in architectures:
        if architecture not in ARCHITECTURES:
            _refuse(
                "architectures", architectures, f"{list(ARCHITECTURES)} (an encoder and a decoder)"
            )
    if not hf_config.get("is_encoder_decoder", True):
        _refuse("is_encoder_decoder", hf_config.get("is_encoder_decoder"), "true")
    if hf_config.get("quantization_config"):
        _refuse("quantization_config", hf_config["quantization_config"], "none (float weights)")
    sizes = {
        f: _positive_int(hf_config, f)
        for f in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_heads")
    }
    num_decoder_layers = hf_config.get("num_decoder_layers")
    if num_decoder_layers is not None and num_decoder_layers != sizes["num_layers"]:
        _refuse(
            "num_decoder_layers",
            num_decoder_layers,
            f"num_decoder_layers == num_layers ({sizes['num_layers']}): one depth for both stacks",
        )
    for field, supported in (
        ("relative_attention_num_buckets", RELATIVE_ATTENTION_NUM_BUCKETS),
        ("relative_attention_max_distance", RELATIVE_ATTENTION_MAX_DISTANCE),
    ):
        value = hf_config.get(field, supported)
        if value != supported:
            _refuse(field, value, f"{supported} (hard-coded in keras-hub's T5MultiHeadAttention)")
    epsilon = hf_config.get("layer_norm_epsilon", 1e-6)
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
        _refuse("layer_norm_epsilon", epsilon, "a number > 0")
    activation, gated = activation_of(hf_config.get("feed_forward_proj", "relu"))
    tied = bool(hf_config.get("tie_word_embeddings", True))
    # 5.x writes scale_decoder_outputs; 4.x scales exactly when tied.
    scaled = bool(hf_config.get("scale_decoder_outputs", tied))
    d = sizes["d_model"]
    hf_scale = d**-0.5 if scaled else 1.0
    keras_scale = d**-0.5 if tied else 1.0  # T5Seq2SeqLM scales when tied
    config = dict(
        vocabulary_size=sizes["vocab_size"],
        num_layers=sizes["num_layers"],
        num_heads=sizes["num_heads"],
        hidden_dim=d,
        intermediate_dim=sizes["d_ff"],
        key_value_dim=sizes["d_kv"],
        dropout=float(hf_config.get("dropout_rate", 0.1)),
        activation=activation,
        use_gated_activation=gated,
        layer_norm_epsilon=float(epsilon),
        tie_embedding_weights=tied,
        norm_groups=[d],
    )
    return config, hf_scale / keras_scale


def weight_names(config):
    """The HF tensor names `convert_weights` reads for a backbone config, by
    stack; the embedding is listed separately (it has several names)."""
    names = []
    for stack in ("encoder", "decoder"):
        for i in range(config["num_layers"]):
            names.extend(name for name, _ in _block_map(stack, i, config))
        names.append(f"{stack}.final_layer_norm.weight")
    if not config["tie_embedding_weights"]:
        names.append("lm_head.weight")
    return names


def _attention_map(prefix, with_bias):
    pairs = [
        (f"{prefix}.{hf}.weight", (key, True))
        for hf, key in (("q", "query"), ("k", "key"), ("v", "value"), ("o", "output"))
    ]
    if with_bias:
        pairs.append((f"{prefix}.relative_attention_bias.weight", ("relative_bias", False)))
    return pairs


def _block_map(stack, i, config):
    """`[(hf name, (tree path, transposed))]` of one block.

    Tree paths are tuples into the block's tree; HF Linear weights are
    `(out, in)`, Keras kernels `(in, out)`, hence the transposes.
    """
    block = f"{stack}.block.{i}.layer"
    decoder = stack == "decoder"
    pairs = [
        (name, (("self_attention", key), t))
        for name, (key, t) in _attention_map(f"{block}.0.SelfAttention", i == 0)
    ]
    pairs.append((f"{block}.0.layer_norm.weight", (("self_attention_norm",), False)))
    if decoder:
        pairs += [
            (name, (("cross_attention", key), t))
            for name, (key, t) in _attention_map(f"{block}.1.EncDecAttention", False)
        ]
        pairs.append((f"{block}.1.layer_norm.weight", (("cross_attention_norm",), False)))
    ffn = f"{block}.{2 if decoder else 1}"
    if config["use_gated_activation"]:
        pairs += [
            (f"{ffn}.DenseReluDense.wi_0.weight", (("ffn_input",), True)),
            (f"{ffn}.DenseReluDense.wi_1.weight", (("ffn_gate",), True)),
        ]
    else:
        pairs.append((f"{ffn}.DenseReluDense.wi.weight", (("ffn_input",), True)))
    pairs += [
        (f"{ffn}.DenseReluDense.wo.weight", (("ffn_output",), True)),
        (f"{ffn}.layer_norm.weight", (("ffn_norm",), False)),
    ]
    return pairs


EMBEDDING_NAMES = ("shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight")


def embedding_name(names):
    """The name under which a checkpoint stores the shared embedding, or None."""
    return next((n for n in EMBEDDING_NAMES if n in names), None)


def check_weight_names(config, names):
    """Raise ValueError listing the tensors `config` needs that are missing."""
    missing = [n for n in weight_names(config) if n not in names]
    if embedding_name(names) is None:
        missing.insert(0, " or ".join(EMBEDDING_NAMES))
    if missing:
        shown = ", ".join(missing[:5]) + (
            f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        )
        hint = (
            " (tie_word_embeddings is false, so the output projection lm_head.weight is needed)"
            if "lm_head.weight" in missing
            else ""
        )
        raise ValueError(f"The checkpoint lacks tensors its config.json implies: {shown}{hint}.")


def convert_weights(config, get, output_scale=1.0, shape=None):
    """HF T5 tensors -> a `FusionT5Backbone` parameter tree (pure NumPy).

    Args:
        config: backbone arguments from `convert_config`.
        get: `get(name) -> np.ndarray`, the HF tensor of that name (KeyError
            when absent).
        output_scale: from `convert_config`; multiplies the final decoder norm.
        shape: optional `shape(name) -> tuple`. When given, the leaves are
            `LazyArray`s that call `get` only when converted, so that a model
            built from the tree holds one HF tensor at a time besides itself.

    Returns:
        The parameter tree (`keras_fusion.growth_maps` layout) of float32
        arrays (or `LazyArray`s); the inputs are not modified.

    Example:

    ```python
    tree = convert_weights(config, checkpoint.get, output_scale)
    backbone = FusionT5Backbone.from_parameters(config, tree)
    ```
    """

    def read(name, transposed=False):
        if shape is None:
            array = np.asarray(get(name), dtype="float32")
        else:
            array = LazyArray(shape(name), lambda: np.asarray(get(name), dtype="float32"))
        return array.T if transposed else array

    def block(stack, i):
        tree = {}
        for name, (path, transposed) in _block_map(stack, i, config):
            node = tree
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = read(name, transposed)
        return tree

    tree = {
        "token_embedding": _read_first(EMBEDDING_NAMES, read),
        "encoder_layers": [block("encoder", i) for i in range(config["num_layers"])],
        "decoder_layers": [block("decoder", i) for i in range(config["num_layers"])],
        "encoder_norm": read("encoder.final_layer_norm.weight"),
        "decoder_norm": read("decoder.final_layer_norm.weight") * np.float32(output_scale),
    }
    if not config["tie_embedding_weights"]:
        tree["reverse_embedding"] = read("lm_head.weight", transposed=True)
    return tree


def _read_first(names, read):
    for name in names:
        try:
            return read(name)
        except KeyError:
            continue
    raise KeyError(" or ".join(names))


def load_backbone(cls, folder, load_weights=True, dtype=None):
    """A `cls` (a `FusionT5Backbone` class) from a Hugging Face T5 folder.

    Args:
        cls: the backbone class to build.
        folder: the HF folder (local or `tf.io.gfile`).
        load_weights: False builds the architecture with random weights.
        dtype: optional Keras dtype policy for the model.

    Returns:
        The backbone, one norm group, whose outputs are HF's encoder and
        decoder outputs (with a 5.x "tied but unscaled" model, the decoder
        output is HF's times `sqrt(d_model)`, so that the LM's logits match).

    Raises:
        ValueError: from `convert_config` or for missing tensors, before
            any weight is read.

    Example:

    ```python
    backbone = load_backbone(FusionT5Backbone, "/path/to/t5-small")
    ```
    """
    config, output_scale = convert_config(storage.read_json(storage.join(folder, CONFIG_FILE)))
    if dtype is not None:
        config["dtype"] = dtype
    if not load_weights:
        return cls(**config)
    with SafetensorsCheckpoint(folder) as checkpoint:
        check_weight_names(config, checkpoint.names())
        # Lazy leaves: each HF tensor is read when its variable is created.
        tree = convert_weights(config, checkpoint.get, output_scale, shape=checkpoint.shape)
        return cls.from_parameters(config, tree)


def load_tokenizer(folder):
    """keras-hub's `T5Tokenizer` for the folder's `spiece.model`, or None.

    Example:

    ```python
    tokenizer = load_tokenizer("/path/to/t5-small")
    ```
    """
    path = storage.join(folder, SPIECE_FILE)
    if not storage.exists(path):
        return None
    import keras_hub

    return keras_hub.models.T5Tokenizer(proto=storage.read_bytes(path))
