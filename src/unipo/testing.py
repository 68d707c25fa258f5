"""Tiny, randomly initialised models and tokenizers built locally, for tests and examples.

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on a small corpus, with a ChatML
chat template like SmolLM2's, and the model is a small Llama with random weights.
"""

from __future__ import annotations

from pathlib import Path

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "What is 12 + 35? Reply with only the number.",
    "The quick brown fox jumps over the lazy dog.",
    "Human: How do I bake bread? Assistant: Mix flour, water, salt and yeast, then bake.",
    "I cannot help with that request, but here is something safe you can do instead.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 + - = ?",
    "Please answer the question politely and correctly.",
]


def make_tiny_tokenizer(chat_template: bool = True):
    """A byte-level BPE tokenizer (vocabulary ~400) with ChatML special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
    )
    if chat_template:
        fast.chat_template = CHATML_TEMPLATE
    return fast


def make_tiny_model(out_dir: str | Path, *, seed: int = 0, hidden_size: int = 32, num_layers: int = 2,
                    chat_template: bool = True, tie_word_embeddings: bool = True) -> Path:
    """Write a tiny random Llama causal LM and its tokenizer to ``out_dir``; return the path
    (``tie_word_embeddings=False``: a separate LM head)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tokenizer = make_tiny_tokenizer(chat_template=chat_template)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=1024, tie_word_embeddings=tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
