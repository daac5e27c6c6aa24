"""Does the chosen-answer NLL term keep free generation valid? DynamicPO@K with `loss_type=["dynamicpo", "sft"]`.

    nohup nice -n 5 python benchmarks/sft_weight.py --config benchmarks/sft_weight.yaml > sft-weight.log 2>&1 &
    python benchmarks/sft_weight.py --config benchmarks/sft_weight.yaml --report_only     # tables only

Preference optimization moves probability from the chosen title to a contrast between titles, and greedy decoding
then often answers with no candidate at all (issue 26: ValidRatio 0.035 for DynamicPO@15 against 0.675 for SFT). TRL's
answer for DPO is RPO: add the chosen answer's NLL (`loss_type=[..., "sft"]`, `loss_weights=[1, w]`). This study
measures that trade-off on validation prompts, per weight `w` of `sft_weights` (0 = plain DynamicPO, the reference):

- free generation (the papers' greedy protocol): ValidRatio and HR@1, with 95% bootstrap intervals, and the paired
  ValidRatio difference to `w = 0`;
- ranking: HR@1 and NDCG@10 with intervals and the paired HR@1 difference to `w = 0` on the same prompts;
- with `constrained_generation: true`, constrained greedy decoding (`generate_candidates`) of the same generation
  prompts: its HR@1 next to free generation's.

It is the quality study (`quality.py`) at another scale: one SFT adapter, its reference log-probs and the trunk caches
are shared by every weight; each weight is one preference cell (`<loss>@<K>-sft-<w>`) in the same `work_dir`, cached
by the fingerprint of its settings, so an interrupted run resumes at the first weight not yet evaluated. Writes
`results.json` and `table.md` to `output_dir`.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from quality import QualityArguments, Study, read_json, write_json  # noqa: E402
from quality_report import metric_block, paired_block  # noqa: E402

from trl_dynamicpo.evaluation import target_ranks  # noqa: E402
from trl_dynamicpo.evaluation.metrics import _generation_hits  # noqa: E402
from trl_dynamicpo.statistics import bootstrap_ci, paired_bootstrap_ci  # noqa: E402


@dataclass
class SftWeightArguments(QualityArguments):
    """The quality study's settings plus the weights of the NLL term and the dataset's scale."""

    sft_weights: list[float] = field(
        default_factory=lambda: [0.0, 1.0, 4.0],
        metadata={"help": "Weights w of the chosen-answer NLL (`loss_weights=[1, w]`); 0 is the reference."},
    )
    max_history: int = field(default=10, metadata={"help": "History items per prompt (builder option)."})
    num_candidates: int = field(default=20, metadata={"help": "Candidates per prompt (builder option)."})

    def __post_init__(self):
        super().__post_init__()
        if len(self.grid) != 1:
            raise ValueError(f"`grid` must name one preference cell (loss@K), got {self.grid}.")
        if 0.0 not in self.sft_weights:
            raise ValueError("`sft_weights` must include 0 (plain preference optimization, the reference).")
        if min(self.sft_weights) < 0:
            raise ValueError(f"`sft_weights` must be non-negative, got {self.sft_weights}.")


class WeightStudy(Study):
    """The quality study of one weight: its preference cell adds the NLL term; SFT and the caches are shared."""

    def __init__(self, args: SftWeightArguments, weight: float):
        super().__init__(args)
        self.weight = float(weight)

    def build_options(self) -> dict:
        return {"max_history": self.args.max_history, "num_candidates": self.args.num_candidates}

    def data_settings(self) -> dict:
        return {**super().data_settings(), **self.build_options()}

    def cell_dir(self, cell: str) -> Path:
        # One folder per weight, next to the shared SFT cell (whose adapter and reference log-probs every weight uses).
        return super().cell_dir(cell) if cell == "sft" else super().cell_dir(f"{cell}-sft-{self.weight:g}")

    def cell_settings(self, cell: str) -> dict:
        settings = super().cell_settings(cell)
        return settings if cell == "sft" else {**settings, "sft_weight": self.weight}

    def eval_settings(self, cell: str) -> dict:
        # Every model is decoded: free generation is what the NLL term is for.
        return {**super().eval_settings(cell), "num_generation_prompts": self.args.num_generation_prompts}

    def trainer_config(self, cell_dir: Path, **overrides):
        if self.weight and overrides.get("loss_type") != ["sft"]:
            overrides.update(loss_type=[*overrides["loss_type"], "sft"], loss_weights=[1.0, self.weight])
        return super().trainer_config(cell_dir, **overrides)


def _generation_block(study: WeightStudy, record: dict, resamples: int, seed: int) -> tuple[dict, np.ndarray]:
    """ValidRatio and HR@1 of the free generations with intervals, and the per-prompt validity."""
    n = len(record["generation_outputs"])
    rows = study.eval.select(range(n))
    predicted, _, hits = _generation_hits(
        record["generation_outputs"], rows["candidates"], rows["target"], "exact", False
    )
    valid = (predicted >= 0).astype(np.float64)
    ratio, ratio_ci = bootstrap_ci(valid, resamples, seed=seed)
    hr, hr_ci = bootstrap_ci(hits.astype(np.float64), resamples, seed=seed)
    block = {"valid_ratio": ratio, "valid_ratio_ci": list(ratio_ci), "hr@1": hr, "hr@1_ci": list(hr_ci)}
    return {**block, "num_prompts": n, "seconds": record.get("generation_seconds")}, valid


def report(args: SftWeightArguments) -> dict:
    """results.json and table.md from every evaluated cell (SFT and each weight)."""
    resamples, seed = args.bootstrap_resamples, args.seed
    rows, reference = [], None
    for label, weight in [("SFT", 0.0)] + [(f"w = {w:g}", w) for w in sorted(args.sft_weights)]:
        study = WeightStudy(args, weight)
        study.load_data()
        cell = "sft" if label == "SFT" else args.grid[0]
        record = study.evaluated(cell)
        if record is None:
            continue
        ranks = target_ranks(np.load(study.cell_dir(cell) / "scores.npy"), np.asarray(record["target_index"]))
        generation, valid = _generation_block(study, record, resamples, seed)
        constrained = read_json(study.cell_dir(cell) / "constrained.json")
        if constrained is not None:  # decoding restricted to the candidates (quality.py --constrained_generation)
            rows_ = study.eval.select(range(len(constrained["outputs"])))
            hits = [out == target for out, target in zip(constrained["outputs"], rows_["target"])]
            hr, hr_ci = bootstrap_ci(np.asarray(hits, dtype=np.float64), resamples, seed=seed)
            generation["constrained_hr@1"], generation["constrained_hr@1_ci"] = hr, list(hr_ci)
            generation["constrained_valid_ratio"] = constrained["metrics"]["valid_ratio"]
        trained = study.trained(cell)
        row = {
            "label": label,
            "cell": cell,
            "sft_weight": None if cell == "sft" else weight,
            "ranking": metric_block(ranks, resamples, seed),
            "generation": generation,
            "train_seconds": trained.get("train_seconds"),
            "steps": trained.get("steps"),
        }
        if cell != "sft" and weight == 0.0:
            reference = (ranks, valid)
        rows.append(row)
    for row in rows:
        if reference is None or row["sft_weight"] in (None, 0.0):
            continue
        study = WeightStudy(args, row["sft_weight"])
        study.load_data()
        record = study.evaluated(args.grid[0])
        ranks = target_ranks(np.load(study.cell_dir(args.grid[0]) / "scores.npy"), np.asarray(record["target_index"]))
        row["ranking_minus_reference"] = paired_block(ranks, reference[0], resamples, seed)
        _, valid = _generation_block(study, record, resamples, seed)
        diff, ci = paired_bootstrap_ci(valid, reference[1], resamples, seed=seed)
        row["valid_ratio_minus_reference"] = {"value": diff, "ci": list(ci)}
    results = {
        "split": args.eval_split,
        "cell": args.grid[0],
        "num_ranking_prompts": args.num_eval_prompts,
        "num_generation_prompts": args.num_generation_prompts,
        "target": {"valid_ratio": 0.90, "ranking_hr@1_minus_reference_ci_low": 0.0},
        "rows": rows,
        "settings": vars(args),
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", results)
    text = table(results)
    (out / "table.md").write_text(text, encoding="utf-8")
    print(text, end="")
    return results


def table(results: dict) -> str:
    def interval(block, key):
        lo, hi = block[f"{key}_ci"]
        return f"{block[key]:.3f} [{lo:.3f}, {hi:.3f}]"

    def signed(value, ci):
        return f"{value:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]"

    lines = [
        f"{results['cell']} with the chosen-answer NLL (`loss_type=[..., 'sft']`, `loss_weights=[1, w]`), "
        f"{results['split']} split: free generation on {results['num_generation_prompts']} prompts, ranking on "
        f"{results['num_ranking_prompts']}; 95% bootstrap intervals, differences paired with w = 0. Constrained "
        "generation (decoding restricted to the candidates) has ValidRatio 1 by construction.",
        "",
        "| model | ValidRatio (free) | ValidRatio − w=0 | HR@1 (free) | HR@1 (constrained) | HR@1 (ranking) "
        "| HR@1 ranking − w=0 |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        valid_diff = row.get("valid_ratio_minus_reference")
        hr_diff = row.get("ranking_minus_reference")
        reference = "reference" if row["sft_weight"] == 0.0 else "-"
        lines.append(
            f"| {row['label']} | {interval(row['generation'], 'valid_ratio')} | "
            f"{signed(valid_diff['value'], valid_diff['ci']) if valid_diff else reference} | "
            f"{interval(row['generation'], 'hr@1')} | "
            f"{interval(row['generation'], 'constrained_hr@1') if 'constrained_hr@1' in row['generation'] else '-'} | "
            f"{interval(row['ranking'], 'hr@1')} | "
            f"{signed(hr_diff['hr@1'], hr_diff['hr@1_ci']) if hr_diff else reference} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    from trl import TrlParser

    parser = TrlParser((SftWeightArguments,))
    (args,) = parser.parse_args_and_config(argv)
    if not args.report_only:
        # Weight 0 first (the reference), then the others; each finished weight is cached and skipped on a re-run.
        for weight in sorted(args.sft_weights):
            # The quality study's own report of each weight stays in the work folder; this study's goes to output_dir.
            own = dataclasses.replace(args, output_dir=str(Path(args.work_dir) / "reports" / f"sft-{weight:g}"))
            WeightStudy(own, weight).run()
    report(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
