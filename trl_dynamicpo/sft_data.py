"""Supervised fine-tuning rows tokenized exactly as [`DynamicPOTrainer`] reads the chosen answer.

The SFT stage of `recipes/run.py` trains on these rows with TRL's `SFTTrainer` (loss on the answer only), so that the
preference stage continues from a model that saw the same token sequences.
"""

from __future__ import annotations

from .data import tokenize_prompt_answers
from .evaluation import _truncate_prompt


def tokenize_sft_rows(batch: dict[str, list], tokenizer, separator: str, max_length: int | None) -> dict[str, list]:
    """`input_ids` / `labels` (-100 on the prompt) of a batch of rows with `prompt` and `chosen`.

    The answer is tokenized by `tokenize_prompt_answers` with the same separator and the EOS token appended. Rows
    longer than `max_length` lose the beginning of their prompt (the history's oldest items; "Answer:" and a leading
    BOS stay); rows whose answer alone does not fit get empty `input_ids` and `labels`, for the caller to filter.

    Example:

    ```python
    sft_rows = dataset.map(tokenize_sft_rows, batched=True, remove_columns=dataset.column_names,
                           fn_kwargs={"tokenizer": tokenizer, "separator": " ", "max_length": 512})
    ```
    """
    input_ids, labels = [], []
    for prompt, chosen in zip(batch["prompt"], batch["chosen"]):
        if not isinstance(prompt, str) and isinstance(chosen, str):
            chosen = [{"role": "assistant", "content": chosen}]
        prompt_ids, (answer_ids,) = tokenize_prompt_answers(tokenizer, prompt, [chosen], separator=separator)
        prompt_ids, answer_ids = list(prompt_ids), list(answer_ids)
        if max_length is not None and len(prompt_ids) + len(answer_ids) > max_length:
            if max_length - len(answer_ids) < 1:
                input_ids.append([])
                labels.append([])
                continue
            prompt_ids = _truncate_prompt(prompt_ids, max_length - len(answer_ids), tokenizer.bos_token_id)
        input_ids.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)
    return {"input_ids": input_ids, "labels": labels}
