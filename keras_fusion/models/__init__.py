"""Keras models of keras_fusion."""

from keras_fusion.models.fusion_t5_backbone import FusionT5Backbone
from keras_fusion.models.fusion_t5_seq2seq_lm import FusionT5Seq2SeqLM, inner_lm, load_lm
from keras_fusion.models.growing_t5_seq2seq_lm import GrowingT5Seq2SeqLM

__all__ = [
    "FusionT5Backbone",
    "FusionT5Seq2SeqLM",
    "GrowingT5Seq2SeqLM",
    "inner_lm",
    "load_lm",
]
