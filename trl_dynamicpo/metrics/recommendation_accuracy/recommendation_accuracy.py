"""`evaluate` metric: HR@1 and ValidRatio of generated recommendations (the S-DPO / DynamicPO / NAPO protocol).

Load it offline from this file or its folder:

```python
import evaluate
from trl_dynamicpo.evaluation import RECOMMENDATION_ACCURACY_PATH

metric = evaluate.load(RECOMMENDATION_ACCURACY_PATH)
```

The computation is `trl_dynamicpo.evaluation.generation_metrics`; this module only gives it the `evaluate` interface
(batched `add_batch`, distributed gathering, metric card).
"""

import datasets
import evaluate

from trl_dynamicpo.evaluation import generation_metrics


_DESCRIPTION = """\
Accuracy of an LLM recommender that answers a prompt listing candidate items (usually 20 titles) with free text.
An output is *valid* when it names exactly one candidate, i.e. exactly one candidate title is a substring of it.
`hr@1` is the share of all outputs that are valid and name the reference title; `valid_ratio` the share of valid
outputs; `hr@1_valid` divides the hits by the valid outputs only (LLaRA's variant). With `match="exact"` titles
are matched case-sensitively as in S-DPO's evaluation code; with `match="normalized"` both the output and the titles
are lower-cased, whitespace-collapsed and stripped (LLaRA's code). Caveat: with substring matching, a title that is
part of another candidate's title ("Heat" in "Heat Wave") is named whenever the longer one is; `strict=True` does not
count a candidate whose every occurrence lies inside a longer named candidate.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): Generated texts (new tokens only), one per prompt.
    references (`list[str]`): Target title of each prompt.
    candidates (`list[list[str]]`): Candidate titles of each prompt, in prompt order.
    match (`str`, defaults to `"exact"`): `"exact"` or `"normalized"`.
    strict (`bool`, defaults to `False`): Longest-match rule for titles contained in other titles.

Returns:
    `hr@1` (`float`), `valid_ratio` (`float`), `hr@1_valid` (`float`, NaN when no output is valid).

Examples:
    >>> metric = evaluate.load(RECOMMENDATION_ACCURACY_PATH)  # doctest: +SKIP
    >>> metric.compute(predictions=[" Fargo", " Heat and Fargo"], references=["Fargo", "Fargo"],
    ...                candidates=[["Heat", "Fargo"], ["Heat", "Fargo"]])  # doctest: +SKIP
    {'hr@1': 0.5, 'valid_ratio': 0.5, 'hr@1_valid': 1.0}
"""

_CITATION = """\
@inproceedings{chen2024sdpo,
  title={On Softmax Direct Preference Optimization for Recommendation},
  author={Chen, Yuxin and Tan, Junfei and Zhang, An and Yang, Zhengyi and Sheng, Leheng and Zhang, Enzhi and
          Wang, Xiang and Chua, Tat-Seng},
  booktitle={NeurIPS},
  year={2024}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RecommendationAccuracy(evaluate.Metric):
    """HR@1 / ValidRatio of generated answers against candidate titles."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Value("string"),
                    "references": datasets.Value("string"),
                    "candidates": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://arxiv.org/abs/2406.09215"],
        )

    def _compute(self, predictions, references, candidates, match="exact", strict=False):
        results = generation_metrics(predictions, candidates, references, mode=match, strict=strict)
        return {name: results[name] for name in ("hr@1", "valid_ratio", "hr@1_valid")}
