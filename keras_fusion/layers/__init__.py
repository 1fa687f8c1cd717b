"""Keras layers of keras_fusion."""

from keras_fusion.layers.fusion_t5_block import FusionT5Block
from keras_fusion.layers.grouped_rms_norm import GroupedRMSNorm
from keras_fusion.layers.t5_token_embedding import T5TokenEmbedding

__all__ = ["FusionT5Block", "GroupedRMSNorm", "T5TokenEmbedding"]
