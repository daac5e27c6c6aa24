"""trl_dynamicpo: multi-negative preference optimization (S-DPO, DMPO, NAPO, DynamicPO) for LLM recommenders.

The public names are imported lazily so that `import trl_dynamicpo.losses` (pure torch) does not pay for importing
TRL and transformers.
"""

import importlib
from typing import TYPE_CHECKING


__version__ = "0.1.0"

_LAZY = {
    "DynamicPOConfig": "dynamicpo_config",
    "DynamicPOTrainer": "dynamicpo_trainer",
    "DataCollatorForMultiNegativePreference": "packing",
    "answer_logps": "packing",
    "compute_multi_negative_loss": "losses",
    "dpo_loss": "losses",
    "sdpo_loss": "losses",
    "dmpo_loss": "losses",
    "napo_loss": "losses",
    "mppo_loss": "losses",
    "dynamic_boundary_selection": "losses",
    "dual_margin_beta": "losses",
    "LOSS_TYPES": "losses",
    "LOSS_ALIASES": "losses",
    "MultiNegativeLossOutput": "losses",
    "kmeans_1d_top_cluster": "losses",
    "napo_margin": "losses",
    "resolve_loss_type": "losses",
    "share_in_batch_negatives": "napo",
    "NapoMarginState": "napo",
    "pack_answers": "packing",
    "load_causal_lm": "model_utils",
    "load_recommender": "hub",
    "Recommendation": "recommend",
    "Recommender": "recommend",
    "RecommenderConfig": "recommend",
    "build_model_card": "model_card",
    "push_adapter_folder": "hub",
    "EvaluationConfig": "evaluation",
    "evaluate_recommender": "evaluation",
    "generation_metrics": "evaluation",
    "ranking_metrics": "evaluation",
    "popularity_metrics": "evaluation",
    "baseline_metrics": "evaluation",
    "score_candidates": "evaluation",
    "generate_answers": "evaluation",
    "generate_candidates": "evaluation",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .dynamicpo_config import DynamicPOConfig  # noqa: F401
    from .dynamicpo_trainer import DynamicPOTrainer  # noqa: F401


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
