"""Keep Hub tokens off the disk: the one place that knows which values are secrets.

A token reaches a run through a config field (`hub_token` of `TrainingArguments`, a `token=` argument, any other
`*_token` field that is not a tokenizer's special token) or a command line. Everything the library and its recipes
write (JSON records through [`~trl_dynamicpo.io_utils.write_json`], run summaries, stage records, model cards, printed
commands and error notes) goes through [`redact`] or [`redact_text`], and the trainers' pickled config
(`training_args.bin`) is saved without its tokens ([`save_training_args`]; in each checkpoint by
[`~trl_dynamicpo.checkpoints.CompleteCheckpointCallback`]).

Example:

```python
>>> from trl_dynamicpo.redaction import redact, redact_text
>>> redact({"preference": {"hub_token": "hf_abcdefghij0123456789abcdefghij0123", "pad_token": "<pad>", "beta": 0.1}})
{'preference': {'hub_token': '<redacted>', 'pad_token': '<pad>', 'beta': 0.1}}
>>> redact_text("run.py recipe.yaml --preference.hub_token hf_abcdefghij0123456789abcdefghij0123")
'run.py recipe.yaml --preference.hub_token <redacted>'
```
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
from collections.abc import Mapping
from typing import Any


REDACTED = "<redacted>"
# Fields named like a secret that hold none: tokenizer special tokens and the hybrid item token's text.
_NOT_SECRETS = frozenset(
    {"pad_token", "eos_token", "bos_token", "unk_token", "sep_token", "cls_token", "mask_token", "item_token"}
)
# A Hugging Face access token ("hf_" and 34 letters and digits; 30 or more here), wherever it appears in a text.
_HF_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{30,}")
# Environment variables that hold a token the process may have used.
_TOKEN_ENV = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def is_token_key(key: Any) -> bool:
    """Whether a field (or dotted recipe key, or command-line option) named `key` holds a secret: `token`,
    `hub_token` and any other `*_token` that is not a tokenizer's special token (`pad_token`, `eos_token`, ...)."""
    name = str(key).lstrip("-").rsplit(".", 1)[-1].lower()
    return (name == "token" or name.endswith("_token")) and name not in _NOT_SECRETS


def _known_secrets() -> set[str]:
    return {value for name in _TOKEN_ENV if len(value := os.environ.get(name, "")) >= 8}


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """`text` with every Hugging Face token (`hf_...`), every value in `secrets`, the environment's token and the value
    after a token-like command-line option (`--preference.hub_token VALUE`, `--token=VALUE`) replaced by
    `<redacted>`."""
    for secret in sorted({*secrets, *_known_secrets()} - {"", None}, key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    text = _HF_TOKEN.sub(REDACTED, text)
    return re.sub(
        r"(--[\w.]+)(=|\s+)(\S+)",
        lambda m: f"{m[1]}{m[2]}{REDACTED}" if is_token_key(m[1]) and m[3] != REDACTED else m[0],
        text,
    )


def redact(value: Any, secrets: tuple[str, ...] = ()) -> Any:
    """`value` with the string of every token-like key ([`is_token_key`]) replaced by `<redacted>` and every string
    passed through [`redact_text`]; mappings, lists and tuples are walked (and copied), anything else is returned as
    it is."""
    if isinstance(value, Mapping):
        return {
            k: REDACTED if is_token_key(k) and isinstance(v, str) and v else redact(v, secrets)
            for k, v in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [redact(v, secrets) for v in value]
    if isinstance(value, str):
        return redact_text(value, secrets)
    return value


def without_tokens(args):
    """A shallow copy of the dataclass `args` (e.g. `TrainingArguments`) whose token-like fields are None."""
    clean = copy.copy(args)
    for f in dataclasses.fields(args):
        if is_token_key(f.name) and isinstance(getattr(args, f.name, None), str):
            object.__setattr__(clean, f.name, None)
    return clean


def save_training_args(args, path: str | os.PathLike) -> None:
    """Write the trainer's `training_args.bin` at `path` (what `Trainer` writes with `torch.save`), without tokens."""
    import torch

    torch.save(without_tokens(args), path)
