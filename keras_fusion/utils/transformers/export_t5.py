"""keras_fusion -> Hugging Face T5: a folder `T5ForConditionalGeneration` loads.

`hf_config` and `state_dict` are the pure parts (a backbone config and a
parameter tree in, a `config.json` dict and named NumPy arrays out);
`write_transformers_folder` (behind the models' `export_to_transformers`)
checks, then writes `config.json`,
`generation_config.json`, `model.safetensors` and, when the model has a
SentencePiece tokenizer, `spiece.model`, all through `keras_fusion.storage`.

The config is written the transformers 4.x way (`tie_word_embeddings` true
and scaled logits for a tied model; false and a separate `lm_head.weight`
for an untied one), checked against transformers 4.57.6. transformers 5.x
reads tied exports the same way; untested with 5.x: untied ones, whose
`lm_head.weight` 5.x may tie to the embedding.

Only models with one norm group can be exported: HF's T5 normalises the
whole width with one RMSNorm (it has no grouped RMSNorm). Fused models made
with `norm="grouped"` (the exact default) are refused; fuse with
`norm="global"` to get a plain T5, and measure what that costs with
`keras_fusion.diagnostics.function_error`.

Example:

```python
lm = FusionT5Seq2SeqLM.deepen(FusionT5Seq2SeqLM.from_preset(hf_folder), 2)
lm.export_to_transformers("deeper")
transformers.T5ForConditionalGeneration.from_pretrained("deeper")
```
"""

import json

import keras

from keras_fusion import storage
from keras_fusion._keras_internals import gelu_approximate
from keras_fusion.flops import head_dim
from keras_fusion.token_ids import EOS_ID, PAD_ID
from keras_fusion.utils.transformers import convert_t5
from keras_fusion.utils.transformers.safetensors_io import (
    WEIGHTS_FILE,
    LazyArray,
    write_safetensors,
)


def _feed_forward_proj(activation, gated):
    function = keras.activations.get(activation)
    names = {
        keras.activations.relu: "relu",
        keras.activations.gelu: "gelu",  # exact GELU: HF "gelu" (not gated)
        gelu_approximate: "gelu_new",
        keras.activations.silu: "silu",
    }
    name = names.get(function)
    if name is None or (gated and name == "gelu"):
        # HF reads "gated-gelu" as gelu_new: a gated exact GELU has no name.
        raise ValueError(
            f"Cannot export to transformers: activation={keras.activations.serialize(function)!r} "
            f"(use_gated_activation={gated}) has no HF T5 feed_forward_proj; supported: relu, "
            "gelu (not gated), gelu_approximate (HF gelu_new), silu."
        )
    if gated:
        return "gated-gelu" if name == "gelu_new" else f"gated-{name}"
    return name


def check_exportable(config):
    """Raise ValueError when a backbone config is no plain HF T5.

    Args:
        config: backbone arguments (`fusion_t5_backbone.backbone_config`).

    Raises:
        ValueError: for several norm groups (saying why and what to do
            instead) or an activation HF's T5 cannot name.
    """
    groups = list(config.get("norm_groups") or [config["hidden_dim"]])
    if len(groups) > 1:
        raise ValueError(
            f"Cannot export to transformers: this model has norm_groups={groups}, and HF's "
            "T5 has no grouped RMSNorm (its norms use one statistic over the whole width). "
            "Grow it with norm='global' (e.g. FusionT5Seq2SeqLM.fuse(..., norm='global') or "
            "self_fuse(..., norm='global')) to get a plain T5, and measure the cost with "
            "keras_fusion.diagnostics.function_error."
        )
    _feed_forward_proj(config["activation"], config["use_gated_activation"])


def hf_config(config):
    """The `config.json` dict of a `T5ForConditionalGeneration` for a backbone config.

    Args:
        config: backbone arguments with one norm group.

    Returns:
        A dict (transformers 4.x conventions).

    Example:

    ```python
    hf_config(backbone_config(lm.backbone))["feed_forward_proj"]  # e.g. "gated-gelu"
    ```
    """
    check_exportable(config)
    tied = bool(config["tie_embedding_weights"])
    return {
        "architectures": ["T5ForConditionalGeneration"],
        "model_type": "t5",
        "vocab_size": int(config["vocabulary_size"]),
        "d_model": int(config["hidden_dim"]),
        "d_kv": int(head_dim(config)),
        "d_ff": int(config["intermediate_dim"]),
        "num_layers": int(config["num_layers"]),
        "num_decoder_layers": int(config["num_layers"]),
        "num_heads": int(config["num_heads"]),
        "relative_attention_num_buckets": convert_t5.RELATIVE_ATTENTION_NUM_BUCKETS,
        "relative_attention_max_distance": convert_t5.RELATIVE_ATTENTION_MAX_DISTANCE,
        "dropout_rate": float(config["dropout"]),
        "layer_norm_epsilon": float(config["layer_norm_epsilon"]),
        "feed_forward_proj": _feed_forward_proj(
            config["activation"], config["use_gated_activation"]
        ),
        "tie_word_embeddings": tied,
        "is_encoder_decoder": True,
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
        "decoder_start_token_id": PAD_ID,
        "torch_dtype": "float32",
    }


def state_dict(config, tree):
    """Named HF T5 tensors of a parameter tree (pure NumPy; the inverse of
    `convert_t5.convert_weights`).

    Args:
        config: backbone arguments.
        tree: a parameter tree of NumPy arrays (`variable_trees.read` of
            `backbone_variables`).

    Returns:
        `{name: array}` (transposed views, or `LazyArray`s for a lazy tree),
        the shared embedding under `shared.weight`, and `lm_head.weight` when
        untied.
    """
    out = {"shared.weight": tree["token_embedding"]}
    for stack in ("encoder", "decoder"):
        for i, block in enumerate(tree[f"{stack}_layers"]):
            for name, (path, transposed) in convert_t5._block_map(stack, i, config):
                array = block
                for key in path:
                    array = array[key]
                out[name] = array.T if transposed else array
        out[f"{stack}.final_layer_norm.weight"] = tree[f"{stack}_norm"]
    if not config["tie_embedding_weights"]:
        out["lm_head.weight"] = tree["reverse_embedding"].T
    return out


def write_transformers_folder(path, config, variables, spm_proto=None):
    """Write a Hugging Face T5 folder from a backbone config and its variables.

    The models' `export_to_transformers` methods call this with their
    `backbone_config` and `backbone_variables`. Everything is checked before
    anything is written: a refused model leaves no file behind.

    Args:
        path: the folder to write (local or `tf.io.gfile`, e.g. `gs://`).
        config: the backbone's constructor arguments, `key_value_dim` and
            `norm_groups` explicit (`models.fusion_t5_backbone.backbone_config`).
        variables: its parameter tree of Keras variables
            (`models.fusion_t5_backbone.backbone_variables`), each read only
            when its tensor is written.
        spm_proto: the serialized SentencePiece model of its tokenizer, written
            as `spiece.model`, or None.

    Returns:
        `path`.

    Raises:
        ValueError: see `check_exportable`.

    Example:

    ```python
    lm.export_to_transformers("exported")  # calls this
    transformers.T5ForConditionalGeneration.from_pretrained("exported")
    ```
    """
    config_json = hf_config(config)
    # Lazy leaves: each variable is copied out only when its tensor is written.
    tree = keras.tree.map_structure(lambda v: LazyArray(v.shape, lambda: v.numpy()), variables)
    tensors = state_dict(config, tree)
    storage.makedirs(path)
    _write(path, convert_t5.CONFIG_FILE, json.dumps(config_json, indent=2, sort_keys=True))
    generation = {"decoder_start_token_id": PAD_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    _write(path, "generation_config.json", json.dumps(generation, indent=2))
    write_safetensors(storage.join(path, WEIGHTS_FILE), tensors, metadata={"format": "pt"})
    if spm_proto:
        _write(path, convert_t5.SPIECE_FILE, spm_proto)
        if _piece_count(spm_proto) == config_json["vocab_size"]:
            # The proto holds every id, sentinels included: HF's T5Tokenizer
            # must not add its default 100 <extra_id_*> on top.
            _write(path, "tokenizer_config.json", json.dumps({"extra_ids": 0}))
    return path


def _piece_count(proto):
    import sentencepiece

    return sentencepiece.SentencePieceProcessor(model_proto=proto).get_piece_size()


def _write(folder, name, content):
    path = storage.join(folder, name)
    if isinstance(content, bytes):
        storage.write_bytes(path, content)
    else:
        storage.write_text(path, content)
