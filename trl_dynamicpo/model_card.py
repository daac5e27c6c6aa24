"""Model cards of trained recommenders, rendered from `templates/model_card.md` (metadata, loss, data, metrics,
usage, citations).

[`build_model_card`] is called by [`DynamicPOTrainer.create_model_card`] (TRL's hook, at every `save_model`) and by the
recipes' publish stage; [`~trl_dynamicpo.hub.push_adapter_folder`] uploads the card with the adapter.

Example:

```python
from trl_dynamicpo.model_card import build_model_card

card = build_model_card(model_name="ml100k-dynamicpo", base_model=None, loss_type="dynamicpo",
                        hyperparameters={"beta": 1.0, "num_negatives": 15})
card.save("outputs/ml100k-dynamicpo/README.md")
```
"""

import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard_data import EvalResult
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .redaction import redact_text


__all__ = ["CITATIONS", "build_model_card"]

HUB_URL = "https://huggingface.co"
# The model card's Jinja2 template and the BibTeX it cites, shipped with the package (package data).
TEMPLATES = Path(__file__).parent / "templates"

# BibTeX of the methods this library implements and of TRL, by the keys of `LossSpec.citations` (read from
# `templates/citations.bib`, where a `% key: <name>` line precedes each entry): a model card cites DynamicPO, what each
# of its losses builds on, and TRL.
CITATIONS: dict[str, str] = dict(
    re.findall(r"^% key: (\w+)\n(@.*?^\})", (TEMPLATES / "citations.bib").read_text("utf-8"), re.MULTILINE | re.DOTALL)
)

_METRIC_NAMES = {
    "hr": "HR",
    "hit_rate": "HR",
    "hitrate": "HR",
    "ndcg": "NDCG",
    "recall": "Recall",
    "precision": "Precision",
    "mrr": "MRR",
    "map": "MAP",
    "valid_ratio": "ValidRatio",
    "validratio": "ValidRatio",
    "coverage": "Coverage",
    # Popularity metrics of `trl_dynamicpo.evaluation`.
    "arp": "ARP",
    "head_share": "Head share",
    "tail_share": "Tail share",
    "tail_hr": "Tail HR",
}
# Numbers a trainer reports next to the metrics that are not model quality metrics.
_NOT_METRICS = {
    "epoch",
    "step",
    "runtime",
    "runtime_s",
    "samples_per_second",
    "steps_per_second",
    "num_samples",
    "num_prompts",
}


def _is_hub_id(name: str | None) -> bool:
    """True for a Hub repo id (`user/name` or `name`), False for None or a path that exists or looks local."""
    if not name or os.path.exists(os.path.expanduser(name)):
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


# ---------------------------------------------------------------------------------------------------------------------
# Model card
# ---------------------------------------------------------------------------------------------------------------------
def _split_metric_key(key: str) -> tuple[str | None, str]:
    """`"generation/hr@1"` -> `("generation", "hr@1")`; a trainer's `eval_` / `test_` prefix is dropped."""
    group, _, metric = key.rpartition("/")
    metric = re.sub(r"^(eval|test)_", "", metric.strip().lower())
    return (group or None), metric


def _metric_label(group: str | None, metric: str) -> str:
    base, at, k = metric.partition("@")
    label = _METRIC_NAMES.get(base, base.replace("_", " ").title().replace(" ", "")) + (f"@{k}" if at else "")
    return f"{label} ({group})" if group else label


def _metrics(eval_results: dict | None) -> list[tuple[str, str, float]]:
    """(type, display name, value) of every finite numeric metric of a flat metrics dict."""
    rows = []
    for key, value in (eval_results or {}).items():
        group, metric = _split_metric_key(str(key))
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        if metric in _NOT_METRICS or metric.endswith("_runtime"):
            continue
        rows.append((metric, _metric_label(group, metric), float(value)))
    return rows


def _format_value(value: Any) -> str | None:
    """Markdown-table text of a hyperparameter, or None when it must not appear (None, empty, local path)."""
    if value is None or value == "" or value == [] or value == {}:
        return None
    if isinstance(value, float):
        text = f"{value:g}"
    elif isinstance(value, (list, tuple, set)):
        items = [_format_value(v) for v in value]
        text = ", ".join(item for item in items if item is not None)
    elif isinstance(value, dict):
        text = json.dumps({k: v for k, v in value.items() if v is not None}, default=str)
    else:
        text = str(value)
        if isinstance(value, (str, os.PathLike)) and (os.path.isabs(text) or text.startswith(("./", "../", "~"))):
            return None  # a local path means nothing to readers of the card and may reveal the user's machine
    return text.replace("|", "\\|") if text else None


def build_model_card(
    *,
    model_name: str,
    base_model: str | None,
    loss_type: str | Sequence[str],
    hyperparameters: dict,
    dataset_name: str | None = None,
    hub_model_id: str | None = None,
    eval_results: dict | None = None,
    eval_dataset_split: str = "test",
    tags: Iterable[str] | None = None,
    license: str | None = None,
    library_name: str = "peft",
    pipeline_tag: str = "text-generation",
    usage_ref: str | None = None,
    usage_example: dict | None = None,
) -> ModelCard:
    """Model card of a LoRA recommender trained with a multi-negative preference loss.

    The YAML metadata has `base_model` (only for a Hub model id, never a local path), `datasets` (a Hub dataset id),
    `library_name`, `pipeline_tag`, `license`, `tags` (`trl`, `trl-dynamicpo`, `recommendation`, `lora` for a peft
    adapter, each loss and `tags`) and, when `eval_results` is given, a `model-index` with one metric per numeric
    entry. The body, rendered from the Jinja2 template `templates/model_card.md` with `ModelCard.from_template`,
    describes the task, the loss (its `LossSpec.description`) and its hyperparameters, the training data, the
    evaluation results, a usage snippet and the BibTeX citations (`CITATIONS`: DynamicPO, what each loss builds on,
    TRL). Values that are None and local paths are left out, and keys containing "token" are never written.

    Args:
        model_name (`str`):
            Name of the model (e.g. the output folder's name); used in the title and the `model-index`.
        base_model (`str` or `None`):
            Hub id of the base model; None or a local path leaves it out of the metadata.
        loss_type (`str` or `Sequence[str]`):
            Loss the adapter was trained with (`"sdpo"`, `"dmpo"`, `"napo"`, `"dynamicpo"`, ...); combined losses
            as a list (`["sdpo", "dynamicpo"]`) or joined with "+" (`"sdpo+dynamicpo"`).
        hyperparameters (`dict`):
            Training hyperparameters shown in a table (e.g. beta, number of negatives, learning rate, LoRA rank).
        dataset_name (`str`, *optional*):
            Hub id (or name) of the training dataset.
        hub_model_id (`str`, *optional*):
            Repo id the adapter is (or will be) pushed to; used in the usage snippet.
        eval_results (`dict`, *optional*):
            Flat metrics dict, e.g. `{"generation/hr@1": 0.42, "generation/valid_ratio": 0.97, "ranking/ndcg@10": 0.6}`.
        eval_dataset_split (`str`, *optional*, defaults to `"test"`):
            Split the metrics were computed on.
        tags (`Iterable[str]`, *optional*):
            Extra tags.
        license (`str`, *optional*):
            License id (e.g. `"apache-2.0"`).
        library_name (`str`, *optional*, defaults to `"peft"`):
            Library the weights load with. `"peft"` describes a LoRA adapter loaded with `load_recommender`; any
            other value a full model loaded with `transformers`.
        pipeline_tag (`str`, *optional*, defaults to `"text-generation"`):
            Hub pipeline tag.
        usage_ref (`str`, *optional*):
            What the usage snippet loads: the Hub repo id or the folder of the published adapter. Defaults to
            `hub_model_id`, else `model_name`.
        usage_example (`dict`, *optional*):
            One user of the evaluation data, `{"history": [...], "candidates": [...]}` (titles). For an adapter with a
            `recommender.json` ([`~trl_dynamicpo.recommend.Recommender`]), the usage snippet then ranks that user's
            candidates with `recommend()`; without it, the snippet loads the model with `load_recommender`.

    Returns:
        `huggingface_hub.ModelCard`: call `.save(path)` or `.push_to_hub(repo_id)`.

    Example:

    ```python
    >>> from trl_dynamicpo.model_card import build_model_card
    >>> card = build_model_card(
    ...     model_name="lastfm-dynamicpo",
    ...     base_model="HuggingFaceTB/SmolLM2-135M-Instruct",
    ...     loss_type="dynamicpo",
    ...     hyperparameters={"beta": 1.0, "num_negatives": 15, "learning_rate": 1e-5},
    ...     dataset_name="my-user/lastfm-sdpo",
    ...     eval_results={"generation/hr@1": 0.42, "generation/valid_ratio": 0.97},
    ... )
    >>> card.save("outputs/lastfm-dynamicpo/README.md")
    ```
    """
    from .losses import LOSS_ALIASES, LOSS_SPECS

    # A run may combine losses: describe, tag and cite each of them.
    names = re.split(r"[+,]", loss_type) if isinstance(loss_type, str) else loss_type
    loss_names = [name.strip().lower() for name in names if name.strip()]
    specs = [LOSS_SPECS.get(LOSS_ALIASES.get(name, name)) for name in loss_names]
    is_adapter = library_name == "peft"
    hub_base = base_model if _is_hub_id(base_model) else None
    hub_dataset = dataset_name if _is_hub_id(dataset_name) else None
    dataset_label = hub_dataset or (Path(dataset_name).name if dataset_name else None)

    metrics = [
        EvalResult(
            task_type="text-generation",
            task_name="Next-item recommendation",
            dataset_type=hub_dataset or "custom",
            dataset_name=dataset_label or "Evaluation set",
            dataset_split=eval_dataset_split,
            metric_type=metric_type,
            metric_name=name,
            metric_value=value,
        )
        for metric_type, name, value in _metrics(eval_results)
    ]
    all_tags = ["trl", "trl-dynamicpo", "recommendation", "lora" if is_adapter else None, *loss_names, *(tags or [])]
    card_data = ModelCardData(
        base_model=hub_base,
        datasets=[hub_dataset] if hub_dataset else None,
        library_name=library_name,
        license=license,
        model_name=model_name,
        pipeline_tag=pipeline_tag,
        tags=list(dict.fromkeys(tag for tag in all_tags if tag)),
        eval_results=metrics or None,
    )
    rows = [
        (key, _format_value(value)) for key, value in (hyperparameters or {}).items() if "token" not in key.lower()
    ]
    # This library's method, then what each loss builds on (its `LossSpec.citations`), then TRL.
    cited = dict.fromkeys(["dynamicpo", *(key for spec in specs if spec for key in spec.citations), "trl"])
    card = ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATES / "model_card.md"),
        hub_url=HUB_URL,
        model_name=model_name,
        base_model=hub_base,
        is_adapter=is_adapter,
        model_ref=usage_ref or (hub_model_id if _is_hub_id(hub_model_id) else model_name),
        usage_history=json.dumps(list(usage_example["history"]), ensure_ascii=False) if usage_example else None,
        usage_candidates=json.dumps(list(usage_example["candidates"]), ensure_ascii=False) if usage_example else None,
        loss_names=loss_names,
        loss_descriptions=[
            spec.description if spec else f"the `{name}` preference loss" for name, spec in zip(loss_names, specs)
        ],
        hyperparameters=[(key, text) for key, text in rows if text is not None],
        hub_dataset=hub_dataset,
        dataset_label=dataset_label,
        eval_split=eval_dataset_split,
        metrics=metrics,
        citations=[CITATIONS[key] for key in cited],
    )
    card.content = redact_text(card.content)  # a token pasted into a name, a tag or a value never reaches the card
    return card
