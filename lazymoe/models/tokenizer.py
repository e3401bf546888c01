"""The bundled model's tokenizer: a byte-level BPE with GPT-2's pre-tokenizer split regex.

Byte-level means every string can be encoded (no unknown token); the GPT-2 split regex is the
one llama.cpp knows as `tokenizer.ggml.pre = "gpt-2"`, so llama.cpp tokenizes exactly as we do.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

EOS_TOKEN = "<|endoftext|>"  # also BOS and PAD: one special token keeps the GGUF export simple


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE of `vocab_size` tokens (256 bytes + merges + 1 special) on `texts`."""
    if vocab_size < 512:
        raise ValueError(f"vocab_size={vocab_size} is too small: use at least 512 (256 are bytes)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def as_transformers(tok: Tokenizer, model_max_length: int) -> PreTrainedTokenizerFast:
    """Wrap for `save_pretrained` (writes tokenizer.json + tokenizer_config.json)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )
