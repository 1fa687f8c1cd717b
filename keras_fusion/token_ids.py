"""T5's reserved token ids, in one place.

SentencePiece models that `keras_fusion.data.train_tokenizer` writes, and
Hugging Face's T5 tokenizers, reserve id 0 for padding (also the decoder's
start token), 1 for the end of a sequence and 2 for unknown pieces. The
tokenizer, the span-corruption pipeline, the SavedModel export, the
Hugging Face export and the diagnostics all read them from here.

```python
from keras_fusion.token_ids import EOS_ID, PAD_ID
decoder_start = PAD_ID
```
"""

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
