"""Text for T5 pre-training without a network: corpora, tokenizer, span corruption.

```python
from keras_fusion import data
texts = data.load_corpus("embedded", split="train")
path = data.train_tokenizer(texts, vocabulary_size=1000)
dataset = data.make_dataset(
    texts, data.load_tokenizer(path), data.vocabulary_size(path), batch_size=16
)
```
"""

from keras_fusion.data.corpus import (
    LocalText,
    corpus_fingerprint,
    embedded_corpus,
    installed_corpus,
    installed_corpus_environment,
    installed_corpus_info,
    load_corpus,
    local_text_builder,
    read_text_files,
    source_docstrings,
    split_documents,
)
from keras_fusion.data.pipeline import make_dataset
from keras_fusion.data.span_corruption import (
    random_spans_helper,
    random_spans_noise_mask,
    span_corruption,
)
from keras_fusion.data.tokenizer import (
    T5SentencepieceTokenizer,
    load_tokenizer,
    sentinel_id,
    train_tokenizer,
    vocabulary_size,
)

__all__ = [
    "LocalText",
    "T5SentencepieceTokenizer",
    "corpus_fingerprint",
    "embedded_corpus",
    "installed_corpus",
    "installed_corpus_environment",
    "installed_corpus_info",
    "load_corpus",
    "load_tokenizer",
    "local_text_builder",
    "make_dataset",
    "random_spans_helper",
    "random_spans_noise_mask",
    "read_text_files",
    "sentinel_id",
    "source_docstrings",
    "span_corruption",
    "split_documents",
    "train_tokenizer",
    "vocabulary_size",
]
