"""Evaluation of LLM recommenders: the papers' generation protocol, a faster ranking protocol, popularity metrics.

Three protocols are offered on the same rows (`prompt`, `candidates`, `target` / `chosen`, see the data row format):

- **generation** (the protocol of S-DPO, DynamicPO and NAPO): greedy decoding of at most 20 new tokens, then
  substring matching of the 20 candidate titles in the output. `valid_ratio` is the share of prompts whose output
  names exactly one candidate, `hr@1` the share of *all* prompts whose output names exactly one candidate and that
  candidate is the target (`hr@1_valid` divides by the valid prompts instead, as LLaRA's script does).
- **constrained_generation**: greedy decoding that can only spell one of the row's candidate titles (a prefix trie
  of their tokens, [`generate_candidates`]); ValidRatio is 1 by construction, HR@1 compares the answered title.
- **ranking**: every candidate is scored by the summed (or length-normalized) log-probability of its tokens after
  the prompt, all 20 candidates of a prompt in one packed forward pass (`trl_dynamicpo.packing`), then ranked.
  This gives HR@k, NDCG@k and MRR, always names exactly one candidate, and is several times faster than decoding.

Every protocol can report popularity-bias metrics when an item table (`title`, `train_count`, `popularity_group`)
is given, and two baselines (most popular candidate, seeded random candidate) are reported as their own rows so
that every results table shows its floor.

The package's rooms: `config` ([`EvaluationConfig`]), `metrics` (pure: matching, HR@k / NDCG@k / MRR, popularity,
baselines), `inference` (tokenization, generation, packed scoring), `report` (JSON, markdown table) and `runner`
([`evaluate_recommender`]). Every name is importable from `trl_dynamicpo.evaluation`.

Example:

```python
from trl_dynamicpo.evaluation import EvaluationConfig, evaluate_recommender, format_results_table

config = EvaluationConfig(max_samples=200, generation_max_samples=50)
results = evaluate_recommender(model, tokenizer, dataset["test"], config, item_table=items)
print(format_results_table(results))
```
"""

from .config import DEFAULT_PROTOCOLS, MATCH_MODES, PROTOCOLS, SCORE_MODES, EvaluationConfig
from .constrained import build_trie, generate_candidates
from .inference import _truncate_prompt as _truncate_prompt
from .inference import generate_answers, score_candidates, score_over_orders
from .metrics import RECOMMENDATION_ACCURACY_PATH as RECOMMENDATION_ACCURACY_PATH
from .metrics import _as_lookup as _as_lookup
from .metrics import _head as _head
from .metrics import _ItemLookup as _ItemLookup
from .metrics import _pad_scores as _pad_scores
from .metrics import _rows as _rows
from .metrics import _teacher_scores as _teacher_scores
from .metrics import (
    baseline_metrics,
    baseline_scores,
    generation_metrics,
    match_candidates,
    normalize_title,
    popularity_metrics,
    ranking_metrics,
    target_indices,
    target_ranks,
)
from .report import _jsonable as _jsonable
from .report import format_comparison_table, format_results_table, format_value, jsonable, save_results
from .runner import evaluate_recommender


__all__ = [
    "DEFAULT_PROTOCOLS",
    "EvaluationConfig",
    "MATCH_MODES",
    "PROTOCOLS",
    "RECOMMENDATION_ACCURACY_PATH",
    "SCORE_MODES",
    "baseline_metrics",
    "baseline_scores",
    "evaluate_recommender",
    "format_comparison_table",
    "format_results_table",
    "format_value",
    "build_trie",
    "generate_answers",
    "generate_candidates",
    "generation_metrics",
    "jsonable",
    "match_candidates",
    "normalize_title",
    "popularity_metrics",
    "ranking_metrics",
    "save_results",
    "score_candidates",
    "score_over_orders",
    "target_indices",
    "target_ranks",
]
