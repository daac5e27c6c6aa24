"""Supervised fine-tuning rows tokenized exactly as [`DynamicPOTrainer`] reads the chosen answer.

The SFT stage of `recipes/run.py` trains on these rows with TRL's `SFTTrainer` (loss on the answer only), so that the
preference stage continues from a model that saw the same token sequences.
"""

from __future__ import annotations

from .data import tokenize_prompt_answers, truncate_prompt_ids


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
            prompt_ids = truncate_prompt_ids(prompt_ids, max_length - len(answer_ids), tokenizer.bos_token_id)
        input_ids.append(prompt_ids + answer_ids)
        labels.append([-100] * len(prompt_ids) + answer_ids)
    return {"input_ids": input_ids, "labels": labels}


def prepare_sft_dataset(dataset, tokenizer, separator: str = " ", max_length: int | None = None, name: str = "train"):
    """`dataset` (rows with `prompt` and `chosen`) as SFT rows for TRL's `SFTTrainer`: [`tokenize_sft_rows`] by
    `Dataset.map` (cached by `datasets`), without the rows whose answer alone exceeds `max_length`.

    Pass the result to `SFTTrainer` with `SFTConfig(max_length=None)`: the rows are already cut, at the beginning of
    the prompt, so that the answer and "Answer:" always stay.

    Example:

    ```python
    train = prepare_sft_dataset(dataset["train"], tokenizer, separator=" ", max_length=512)
    trainer = SFTTrainer(model=model, args=SFTConfig(max_length=None, ...), train_dataset=train, ...)
    ```
    """
    tokenize = {"tokenizer": tokenizer, "separator": separator, "max_length": max_length}
    rows = dataset.map(
        tokenize_sft_rows,
        batched=True,
        fn_kwargs=tokenize,
        remove_columns=dataset.column_names,
        desc=f"Tokenizing {name} rows for SFT",
    )
    return rows.filter(lambda row: len(row["input_ids"]) > 0, desc="Dropping rows longer than max_length")
