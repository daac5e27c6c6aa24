"""Multi-negative preference data: column formats, validation and tokenization.

A row holds one prompt, one chosen answer and a list of K rejected answers (K may differ between rows). Accepted
input formats, all normalized to `prompt` / `chosen` / `rejected: list`:

- `rejected` as a list of answers (this library's format, what `dataset_builders` writes);
- `rejected` as a single answer (TRL's pairwise format, K = 1);
- S-DPO style columns `rejected1`, `rejected2`, ..., `rejectedK`;
- the conversational format (lists of `{"role", "content"}` messages), rendered with the chat template as TRL does.
"""

import logging
import math
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any


logger = logging.getLogger(__name__)

_NUMBERED_REJECTED = re.compile(r"^rejected(\d+)$")


def is_conversational_answer(value: Any) -> bool:
    """Whether `value` is a list of `{"role", "content"}` messages."""
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict) and "role" in value[0]


def numbered_rejected_columns(column_names: Sequence[str]) -> list[str]:
    """The S-DPO style `rejected1..rejectedK` columns, in numeric order."""
    found = [(int(m.group(1)), name) for name in column_names if (m := _NUMBERED_REJECTED.match(name))]
    return [name for _, name in sorted(found)]


def check_columns(column_names: Sequence[str]) -> None:
    """Raise a `ValueError` naming what is missing when a dataset cannot be read as multi-negative preference data."""
    missing = [name for name in ("prompt", "chosen") if name not in column_names]
    if "rejected" not in column_names and not numbered_rejected_columns(column_names):
        missing.append("rejected (or rejected1..rejectedK)")
    if missing:
        raise ValueError(
            f"The dataset is missing the column(s) {', '.join(missing)}. Multi-negative preference data needs "
            f"`prompt`, `chosen` and `rejected` (a list of answers); found columns {list(column_names)}."
        )


def _text_key(text: str) -> str:
    # NFC so that a title typed with a combining accent (NFD) and its precomposed form are one answer, and stripped so
    # that " jaws" and "jaws" (which the prompt separator makes the same continuation) are one answer too.
    return unicodedata.normalize("NFC", text).strip()


def _answer_key(answer: Any):
    """A hashable identity of an answer: its normalized text, or the contents of a conversational answer."""
    if isinstance(answer, str):
        return _text_key(answer)
    return tuple((m.get("role"), _text_key(str(m.get("content")))) for m in answer)


def normalize_row(row: dict[str, Any], index: int, rejected_columns: Sequence[str] = ()) -> dict[str, Any]:
    """Return `{"prompt", "chosen", "rejected": list}` for one row, or raise a `ValueError` naming row and field.

    Args:
        row (`dict`):
            The raw row.
        index (`int`):
            Its index in the dataset, used in error messages.
        rejected_columns (`Sequence[str]`, *optional*):
            S-DPO style `rejected1..rejectedK` columns to gather when the row has no `rejected` column.

    Example:
    ```python
    >>> from trl_dynamicpo.data import normalize_row
    >>> normalize_row({"prompt": "Pick:", "chosen": " a", "rejected": " b"}, 0)
    {'prompt': 'Pick:', 'chosen': ' a', 'rejected': [' b']}
    ```
    """
    if "rejected" in row and row["rejected"] is not None:
        rejected = row["rejected"]
        # A single answer (TRL's pairwise format): a string, or one conversational answer (a list of messages).
        if isinstance(rejected, str) or is_conversational_answer(rejected):
            rejected = [rejected]
    else:
        # S-DPO style columns; a missing/None trailing column means that row has fewer negatives.
        rejected = [row[name] for name in rejected_columns if row.get(name) is not None]
    prompt, chosen = row.get("prompt"), row.get("chosen")
    conversational = is_conversational_answer(chosen)

    if prompt is None or (not isinstance(prompt, str) and not is_conversational_answer(prompt)):
        raise ValueError(f"Row {index}, field `prompt`: expected a string or a list of messages, got {prompt!r:.80}.")
    if not isinstance(rejected, list):
        raise ValueError(f"Row {index}, field `rejected`: expected a list of answers, got {type(rejected).__name__}.")
    if len(rejected) == 0:
        raise ValueError(f"Row {index}, field `rejected`: the list of negatives is empty.")
    if isinstance(prompt, str) and not prompt.strip():
        raise ValueError(f"Row {index}, field `prompt`: the prompt is empty.")
    _check_per_negative_numbers(row, index, len(rejected))
    for position, answer in enumerate([chosen, *rejected]):
        field = "chosen" if position == 0 else f"rejected[{position - 1}]"
        if conversational:
            if not is_conversational_answer(answer):
                raise ValueError(f"Row {index}, field `{field}`: expected a list of messages, got {answer!r:.80}.")
        elif not isinstance(answer, str):
            raise ValueError(f"Row {index}, field `{field}`: expected a string, got {type(answer).__name__}.")
        elif not answer.strip():
            raise ValueError(f"Row {index}, field `{field}`: the answer is empty.")
    keys = [_answer_key(answer) for answer in rejected]
    chosen_key = _answer_key(chosen)
    if chosen_key in keys:
        raise ValueError(
            f"Row {index}, field `rejected[{keys.index(chosen_key)}]`: the chosen answer {chosen_key!r:.80} is among "
            "its own negatives."
        )
    if len(set(keys)) != len(keys):
        seen = set()
        duplicate = next(i for i, key in enumerate(keys) if key in seen or seen.add(key))
        raise ValueError(
            f"Row {index}, field `rejected[{duplicate}]`: duplicate negative {keys[duplicate]!r:.80} "
            f"(first at rejected[{keys.index(keys[duplicate])}])."
        )
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def check_candidates(row: Mapping[str, Any], index: int, target_field: str = "target") -> None:
    """Raise a `ValueError` naming the row and the field when the ranking row's `candidates` repeat an answer (after
    NFC and whitespace normalization, as the trainer compares answers) or do not contain its target (`target_field`).

    Example:
    ```python
    >>> from trl_dynamicpo.data import check_candidates
    >>> try:
    ...     check_candidates({"candidates": ["jaws", "heat"], "target": "fargo"}, 3)
    ... except ValueError as err:
    ...     print(err)
    Row 3, field `target`: the target 'fargo' is not among its 2 candidates.
    ```
    """
    candidates = row.get("candidates")
    if not isinstance(candidates, (list, tuple)) or len(candidates) < 2:
        raise ValueError(
            f"Row {index}, field `candidates`: expected a list of at least two answers, got {candidates!r:.80}."
        )
    keys = [_answer_key(answer) for answer in candidates]
    seen: dict = {}
    for position, key in enumerate(keys):
        if key in seen:
            raise ValueError(
                f"Row {index}, field `candidates[{position}]`: duplicate candidate {key!r:.80} (first at "
                f"candidates[{seen[key]}]); a ranking of the same title twice is not a ranking."
            )
        seen[key] = position
    target = row.get(target_field)
    if _answer_key(target) not in seen:
        raise ValueError(
            f"Row {index}, field `{target_field}`: the target {target!r:.80} is not among its {len(keys)} candidates."
        )


def truncate_prompt_ids(ids: list[int], max_length: int, bos_token_id: int | None) -> list[int]:
    """Keep the END of a too-long prompt (where "Answer:" is), and its leading BOS if it had one.

    Example:

    >>> from trl_dynamicpo.data import truncate_prompt_ids
    >>> truncate_prompt_ids([1, 5, 6, 7, 8], 3, bos_token_id=1)
    [1, 7, 8]
    """
    if len(ids) <= max_length:
        return ids
    if bos_token_id is not None and ids and ids[0] == bos_token_id and max_length > 1:
        return [ids[0], *ids[len(ids) - max_length + 1 :]]
    return ids[len(ids) - max_length :]


def _join(prompt: str, answer: str, separator: str) -> str:
    # Recommendation prompts end with "Answer:" and answers are bare titles; TRL-style data already carries its own
    # whitespace, in which case nothing is inserted.
    if separator and prompt and not prompt[-1].isspace() and not answer[:1].isspace():
        return prompt + separator + answer
    return prompt + answer


def tokenize_prompt_answers(
    tokenizer,
    prompt: str | list[dict],
    answers: Sequence[str | list[dict]],
    *,
    separator: str = " ",
    add_eos: bool = True,
) -> tuple[list[int], list[list[int]]]:
    """Tokenize one prompt and its answers so that `prompt_ids + answer_ids[i]` is how the model reads answer i.

    The prompt is tokenized once and each answer on its own; one full `prompt + answer` tokenization checks that the
    two agree at the boundary (they do for word-boundary separators with BPE/SentencePiece tokenizers). When they do
    not, every answer is tokenized jointly with the prompt and the shared prefix is taken as the prompt, as TRL does.

    Args:
        tokenizer ([`~transformers.PreTrainedTokenizerBase`]):
            The tokenizer (its chat template is used for conversational rows).
        prompt (`str` or `list[dict]`):
            Plain-text prompt or a list of messages.
        answers (`Sequence`):
            Answers: strings, or lists of (assistant) messages for conversational prompts.
        separator (`str`, *optional*, defaults to `" "`):
            Inserted between a plain-text prompt and an answer when the prompt does not end with whitespace and the
            answer does not start with whitespace. Use `""` to concatenate as TRL does.
        add_eos (`bool`, *optional*, defaults to `True`):
            Append the EOS token to plain-text answers (conversational answers get it from the template).

    Returns:
        `(prompt_ids, answer_ids)`: the prompt's token ids and one list of token ids per answer.

    Example:
    ```python
    >>> from transformers import AutoTokenizer
    >>> tok = AutoTokenizer.from_pretrained("gpt2")  # doctest: +SKIP
    >>> prompt_ids, answer_ids = tokenize_prompt_answers(tok, "Pick one. Answer:", ["Heat", "Fargo"])  # doctest: +SKIP
    ```
    """
    # TRL is imported here, not with the module: evaluation imports this module and stays light to import.
    from trl.data_utils import common_prefix_length

    if not isinstance(prompt, str):
        return _tokenize_conversational(tokenizer, prompt, answers)
    prompt_ids = tokenizer(text=prompt)["input_ids"]
    if not answers:
        return prompt_ids, []
    texts = [_join(prompt, answer, separator)[len(prompt) :] for answer in answers]
    # Like TRL, an answer that already ends with the EOS text is left as it is.
    eos_text, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    eos = [[eos_id] if add_eos and eos_id is not None and not text.endswith(eos_text) else [] for text in texts]
    answer_ids = [ids + tail for ids, tail in zip(tokenizer(text=texts, add_special_tokens=False)["input_ids"], eos)]
    joint = tokenizer(text=prompt + texts[0])["input_ids"] + eos[0]
    if joint == prompt_ids + answer_ids[0]:
        return prompt_ids, answer_ids
    # Slow path: the boundary tokenizes differently in context; take the shared prefix as the prompt.
    joint_ids = [tokenizer(text=prompt + text)["input_ids"] + tail for text, tail in zip(texts, eos)]
    prompt_len = min(common_prefix_length(prompt_ids, ids) for ids in joint_ids)
    return prompt_ids[:prompt_len], [ids[prompt_len:] for ids in joint_ids]


def _check_per_negative_numbers(row: Mapping, index: int, num_rejected: int) -> None:
    """Per-negative columns (teacher scores, reference log-probs) must align with `rejected` and be finite numbers:
    a short list would misalign every later negative, and one NaN would turn the loss (and the weights) NaN."""
    for name in ("rejected_scores", "ref_rejected_logps"):
        values = row.get(name)
        if values is None:
            continue
        if not isinstance(values, (list, tuple)) or len(values) != num_rejected:
            got = len(values) if isinstance(values, (list, tuple)) else type(values).__name__
            raise ValueError(
                f"Row {index}, field `{name}`: expected one number per negative ({num_rejected}, aligned with "
                f"`rejected`), got {got}."
            )
        for position, value in enumerate(values):
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"Row {index}, field `{name}[{position}]`: expected a finite number, got {value!r}.")
    value = row.get("ref_chosen_logps")
    if value is not None and (not isinstance(value, (int, float)) or not math.isfinite(value)):
        raise ValueError(f"Row {index}, field `ref_chosen_logps`: expected a finite number, got {value!r}.")


def _check_distinct_token_ids(answer_ids: Sequence[Sequence[int]], index: int) -> None:
    """The model sees token ids, not text: answers that differ only in ways the tokenizer erases (a trailing EOS text
    like `"jaws</s>"`, whitespace the separator adds) would make the chosen answer one of its own negatives."""
    seen: dict[tuple[int, ...], int] = {}
    for position, ids in enumerate(answer_ids):
        key = tuple(ids)
        if key in seen:
            first = "chosen" if seen[key] == 0 else f"rejected[{seen[key] - 1}]"
            raise ValueError(
                f"Row {index}, field `rejected[{position - 1}]`: tokenizes to the same token ids as `{first}` "
                f"({list(key)[:12]}), so the model cannot tell them apart. Remove the duplicate negative."
            )
        seen[key] = position


def _tokenize_conversational(tokenizer, prompt: list[dict], answers) -> tuple[list[int], list[list[int]]]:
    from trl.data_utils import common_prefix_length

    def render(messages, **kwargs):
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True, **kwargs)
        return list(out["input_ids"])

    prompt_ids = render(prompt, add_generation_prompt=True)
    joint_ids = [render(prompt + answer) for answer in answers]
    # Some templates render the generation prompt differently from a full conversation; the completion starts where
    # they diverge (TRL's rule).
    prompt_len = min([len(prompt_ids)] + [common_prefix_length(prompt_ids, ids) for ids in joint_ids])
    return prompt_ids[:prompt_len], [ids[prompt_len:] for ids in joint_ids]


def tokenize_rows(
    batch: dict[str, list],
    indices: list[int],
    *,
    tokenizer,
    separator: str = " ",
    max_length: int | None = None,
    rejected_columns: Sequence[str] = (),
) -> dict[str, list]:
    """`Dataset.map(batched=True, with_indices=True)` function: validate and tokenize a batch of rows.

    Returns the columns `prompt_ids`, `chosen_ids`, `rejected_ids` (a list of token-id lists) and `row_index`.
    Raises a `ValueError` naming the row and the field for bad input, including a prompt that leaves no room for its
    longest answer under `max_length` (the answers would otherwise be truncated and their log-probs be wrong).
    """
    columns = list(batch)
    out = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": [], "row_index": []}
    for offset, index in enumerate(indices):
        row = normalize_row({name: batch[name][offset] for name in columns}, index, rejected_columns)
        prompt_ids, answer_ids = tokenize_prompt_answers(
            tokenizer, row["prompt"], [row["chosen"], *row["rejected"]], separator=separator
        )
        _check_distinct_token_ids(answer_ids, index)
        if max_length is not None:
            longest = max(len(ids) for ids in answer_ids)
            if len(prompt_ids) + longest > max_length:
                raise ValueError(
                    f"Row {index}, field `prompt`: the prompt has {len(prompt_ids)} tokens and its longest answer "
                    f"{longest}, which exceeds `max_length={max_length}`. Shorten the prompt (e.g. fewer history "
                    "items) or raise `max_length`."
                )
        out["prompt_ids"].append(prompt_ids)
        out["chosen_ids"].append(answer_ids[0])
        out["rejected_ids"].append(answer_ids[1:])
        out["row_index"].append(index)
    return out


def subsample_indices(num_rows: int, limit: int | None, *, seed: int, name: str, latest: bool = False) -> list[int]:
    """Indices of the rows a run keeps of a split of `num_rows` rows: all of them when `limit` is None or not
    smaller, else the last `limit` (`latest=True`: the most recent rows of a time-ordered split) or a subset seeded by
    `f"{seed}:{name}"`, in the split's own order. The recipes and the quality study select rows with it.

    Example:

    ```python
    >>> subsample_indices(10, 3, seed=0, name="train", latest=True)
    [7, 8, 9]
    ```
    """
    import random

    if limit is None or limit >= num_rows:
        return list(range(num_rows))
    if latest:
        return list(range(num_rows - limit, num_rows))
    return sorted(random.Random(f"{seed}:{name}").sample(range(num_rows), limit))
