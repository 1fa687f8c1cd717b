"""Tiny random Hugging Face T5 models, saved with `save_pretrained`, as oracles.

transformers' PyTorch `T5ForConditionalGeneration` is the reference: a model
is built from a small random `T5Config`, its RMSNorm scales randomised too
(HF initialises them to ones, which would hide a wrong norm map), dropout
off, float32, and saved into a test folder. Works offline (HF_HUB_OFFLINE).
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

# CI installs the test extra (torch, transformers) and runs these tests; a
# development venv that cannot hold transformers' pins skips them, visibly.
torch = pytest.importorskip(
    "torch", reason="the HF oracle needs the test extra: pip install -e .[test]"
)
transformers = pytest.importorskip("transformers", reason="the HF oracle needs the test extra")

from t5_test_utils import VOCABULARY_SIZE  # noqa: E402

T5_10 = dict(feed_forward_proj="relu", tie_word_embeddings=True)  # T5 1.0
T5_11 = dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False)  # T5.1.1 / Flan


def hf_t5(seed=0, **overrides):
    """A random `T5ForConditionalGeneration` (eval mode) of a tiny config.

    d_kv (8) differs from d_model / num_heads (16 / 3) on purpose.
    """
    config = dict(
        vocab_size=VOCABULARY_SIZE,
        d_model=16,
        d_kv=8,
        d_ff=24,
        num_layers=2,
        num_heads=3,
        dropout_rate=0.0,
        layer_norm_epsilon=1e-5,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    config.update(overrides)
    torch.manual_seed(seed)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**config))
    generator = torch.Generator().manual_seed(seed + 1000)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "layer_norm" in name:
                parameter.copy_(0.5 + torch.rand(parameter.shape, generator=generator))
    return model.eval()


def save_hf_t5(folder, seed=0, **overrides):
    """`hf_t5(seed, **overrides)` saved with `save_pretrained` into `folder`."""
    model = hf_t5(seed, **overrides)
    model.save_pretrained(str(folder))
    return model, str(folder)


def hf_logits(model, inputs):
    """HF's logits for keras-hub-style inputs (padding masks in both stacks)."""
    t = {k: torch.tensor(np.asarray(v), dtype=torch.long) for k, v in inputs.items()}
    with torch.no_grad():
        out = model(
            input_ids=t["encoder_token_ids"],
            attention_mask=t["encoder_padding_mask"],
            decoder_input_ids=t["decoder_token_ids"],
            decoder_attention_mask=t["decoder_padding_mask"],
        )
    return out.logits.numpy()


def load_hf(folder):
    return transformers.T5ForConditionalGeneration.from_pretrained(str(folder)).eval()
