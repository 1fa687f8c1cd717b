"""T5TokenEmbedding: T5's shared token embedding, initialised as T5 intends.

T5's initialisation, as Mesh TensorFlow trained the released checkpoints
(`mesh_tensorflow/layers.py` and `transformer/attention.py`; T5X's
`network.py` keeps it) and as transformers' `T5PreTrainedModel._init_weights`
restates it, every draw a normal with mean 0:

- token embedding (the tied output too): std 1 (keras-hub 0.32's
  `T5Backbone`: `TruncatedNormal(1.0)`, mean 1 and std 0.05, the bug);
- untied output embedding: `hidden_dim ** -0.5` (Mesh TF's dense layer;
  transformers: 1; keras-hub: the token embedding's draw);
- query: `(hidden_dim * key_value_dim) ** -0.5`; key and value:
  `hidden_dim ** -0.5` (keras-hub: `inner_dim` in place of `hidden_dim`);
- attention output: `inner_dim ** -0.5`; relative position bias:
  `inner_dim ** -0.5`, keras-hub's (transformers: `hidden_dim ** -0.5`);
- FFN input and gate: `hidden_dim ** -0.5`; FFN output:
  `intermediate_dim ** -0.5`; RMSNorm scales: 1 (all as keras-hub).

`inner_dim` is `num_heads * key_value_dim`; where it equals `hidden_dim`
(every preset of `keras_fusion.recipes`) the attention rows agree. The
relative bias keeps keras-hub's draw: `T5MultiHeadAttention` creates it in
its constructor. The untied output embedding follows Mesh TF rather than
transformers: keras-hub, like both, scales the decoder output by
`hidden_dim ** -0.5` only when the embedding is tied, and a standard
deviation of `hidden_dim ** -0.5` gives untied logits of unit scale at the
start, as the tied ones have (transformers' 1 gives `sqrt(hidden_dim)`).

keras-hub's mean-1 embedding makes every token vector nearly the same (mean
pairwise cosine 0.998): a model trained from it ignores its encoder and
stops near a unigram model (docs/growth.md, "Initialisation"; transformers#13327
saw the same in its TF T5).
"""

import keras
from keras.layers import ReversibleEmbedding


def token_embedding_initializer():
    """T5's token embedding: normal, mean 0, std 1 (Mesh TF, transformers)."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=1.0)


def dense_initializer(fan_in):
    """A normal draw with std `fan_in ** -0.5`, mean 0."""
    return keras.initializers.RandomNormal(mean=0.0, stddev=fan_in**-0.5)


def attention_initializers(hidden_dim, num_heads, key_value_dim):
    """T5's query, key, value and output kernel initializers (see the table).

    The query's extra `key_value_dim ** -0.5` stands for the attention-score
    scaling T5 leaves out.
    """
    inner_dim = num_heads * key_value_dim
    return {
        "query": dense_initializer(hidden_dim * key_value_dim),
        "key": dense_initializer(hidden_dim),
        "value": dense_initializer(hidden_dim),
        "output": dense_initializer(inner_dim),
    }


@keras.saving.register_keras_serializable(package="keras_fusion")
class T5TokenEmbedding(ReversibleEmbedding):
    """`keras.layers.ReversibleEmbedding` with an initializer of its own for
    the untied output embedding.

    Args:
        input_dim: int. Vocabulary size.
        output_dim: int. Embedding width (`hidden_dim`).
        tie_weights: bool. Whether the output projection reuses the
            embedding.
        embeddings_initializer: the token embedding's initializer; `None`
            gives T5's (normal, mean 0, std 1).
        reverse_embeddings_initializer: the untied output embedding's;
            `None` gives Mesh TF's (normal, std `output_dim ** -0.5`).
        **kwargs: `keras.layers.ReversibleEmbedding`'s other arguments.

    Call arguments:
        inputs: token ids, or hidden states with `reverse=True`.
        reverse: bool. Project hidden states onto the vocabulary.

    Returns:
        Embeddings `(..., output_dim)`, or logits `(..., input_dim)` with
        `reverse=True`.

    Example:

    ```python
    embedding = T5TokenEmbedding(input_dim=100, output_dim=16, tie_weights=False)
    vectors = embedding(np.array([[5, 7]]))             # (1, 2, 16)
    logits = embedding(vectors, reverse=True)           # (1, 2, 100)
    ```
    """

    def __init__(
        self,
        input_dim,
        output_dim,
        tie_weights=True,
        embeddings_initializer=None,
        reverse_embeddings_initializer=None,
        **kwargs,
    ):
        super().__init__(
            input_dim,
            output_dim,
            tie_weights=tie_weights,
            embeddings_initializer=embeddings_initializer or token_embedding_initializer(),
            **kwargs,
        )
        self.reverse_embeddings_initializer = keras.initializers.get(
            reverse_embeddings_initializer or dense_initializer(output_dim)
        )

    def add_weight(self, *args, **kwargs):
        # ReversibleEmbedding.build draws its untied output matrix, the
        # weight it names "reverse_embeddings", with the embedding's
        # initializer (its quantized forms start from zeros: left alone).
        if (
            kwargs.get("name") == "reverse_embeddings"
            and kwargs.get("initializer") is self.embeddings_initializer
        ):
            kwargs["initializer"] = self.reverse_embeddings_initializer
        return super().add_weight(*args, **kwargs)

    def get_config(self):
        config = super().get_config()
        config["reverse_embeddings_initializer"] = keras.initializers.serialize(
            self.reverse_embeddings_initializer
        )
        return config
