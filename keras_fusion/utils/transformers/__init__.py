"""Hugging Face `transformers` T5 checkpoints in and out of keras_fusion.

`convert_t5` reads a T5 folder (config check, then the weight map),
`export_t5` writes one. Both weight maps are pure NumPy functions on the
parameter trees of `keras_fusion.growth_maps`.
"""
