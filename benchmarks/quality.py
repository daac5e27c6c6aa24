"""Does it learn? SFT, DPO, S-DPO, DMPO and DynamicPO side by side on real data, against popularity and random.

    python benchmarks/quality.py --config benchmarks/quality_ml100k_cpu.yaml
    python benchmarks/quality.py --config benchmarks/quality_ml100k_cpu.yaml --eval_split validation  # tuning
    python benchmarks/quality.py --config benchmarks/quality_ml100k_cpu.yaml --report_only               # tables

The study, built on the library API only (`dataset_builders.run_build`, `TrunkCache`, `DynamicPOTrainer`,
`score_candidates` / `generate_answers`, `baseline_scores`, `trl_dynamicpo.statistics`):

1. builds the dataset with the builder's defaults (10 history items, 20 candidates) and picks the training rows and
   a fixed, seeded set of evaluation prompts;
2. runs the frozen trunk (every layer below the adapter) once over every row, prompt and all 20 candidates
   (`TrunkCache`): SFT, every K-subset of negatives, the reference log-probs and every ranking evaluation reuse it;
3. trains SFT once, then every preference cell of `grid` (`loss@K`) from that same SFT adapter, with the same rows,
   steps, learning rate and seed; the SFT adapter is the reference (its log-probs are computed once for all cells);
4. evaluates every model with the ranking protocol on the same prompts, and SFT and the K = 15 models with the
   papers' generation protocol (HR@1, ValidRatio) on the first `num_generation_prompts` of them;
5. writes `results.json`, `hr_vs_k.png` and `training_curves.png` to `output_dir` (see `quality_report.py`).

Every step is cached under `work_dir` by a fingerprint of the settings it depends on: an interrupted study reruns
only the missing cells, and a changed setting invalidates only the cells that depend on it (a changed evaluation
setting re-evaluates without retraining).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from quality_report import parse_cell  # noqa: E402

from trl_dynamicpo import io_utils  # noqa: E402
from trl_dynamicpo.device import fast_bf16  # noqa: E402


LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class QualityArguments:
    """Settings of the quality study (a YAML file via `--config`, each key overridable on the command line)."""

    output_dir: str = field(
        default="benchmarks/results/ml100k-cpu",
        metadata={"help": "Where results.json and the plots go (committed)."},
    )
    work_dir: str = field(
        default="outputs/quality/ml100k-cpu",
        metadata={"help": "Caches, adapters and per-cell results (not committed; delete to start over)."},
    )
    cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the trunk caches go (default: work_dir/cache). Several studies on the same rows (e.g. the "
            "learning curve) share a cache folder: each cache is named by the settings it depends on."
        },
    )
    seed: int = field(default=42, metadata={"help": "Seed of LoRA initialization, data order and row selection."})
    # data
    dataset_name: str = field(default="movielens-100k", metadata={"help": "A dataset_builders source."})
    raw_dir: str | None = field(
        default=None, metadata={"help": "Local raw files (downloaded from the official URL when None)."}
    )
    teacher: str | None = field(
        default=None,
        metadata={
            "help": "A classical recommender trained by the dataset builder on the full train split ('sasrec'): its "
            "candidate scores join popularity and random as a baseline. Built in a folder of its own, so that setting "
            "it changes no cell and no trunk cache."
        },
    )
    train_rows: int = field(default=1024, metadata={"help": "Training rows (the same rows for SFT and every cell)."})
    train_selection: str = field(
        default="recent",
        metadata={"help": "'recent': the last `train_rows` rows of the (time-ordered) train split; 'random': seeded."},
    )
    eval_split: str = field(
        default="test", metadata={"help": "'test' for the final table, 'validation' to choose hyperparameters."}
    )
    num_eval_prompts: int = field(default=1000, metadata={"help": "Seeded sample of evaluation prompts."})
    num_generation_prompts: int = field(
        default=200, metadata={"help": "Generation protocol on the first prompts of that sample (SFT, K = 15)."}
    )
    # model
    model_name_or_path: str = field(default="smollm2-135m-instruct", metadata={"help": "Base model."})
    trainable_layers: int = field(default=2, metadata={"help": "LoRA on the top layers only; the rest is cached."})
    lora_r: int = field(default=8, metadata={"help": "LoRA rank (papers: 8)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (papers: 32)."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout (papers: 0.1)."})
    use_trunk_cache: bool = field(
        default=True,
        metadata={
            "help": "Run the frozen layers below the adapter once per row (TrunkCache). Off for full fine-tuning "
            "scale on a GPU, where the cache of a full train split would not fit on disk."
        },
    )
    trunk_autocast: str | None = field(
        default="auto",
        metadata={
            "help": "Autocast dtype of the trunk pass: 'bfloat16', None (fp32), or 'auto' (bfloat16 where it is fast: "
            "a GPU with bf16 or an AVX512-BF16/AMX CPU; emulated on other CPUs, it is far slower than fp32)."
        },
    )
    bf16: bool | None = field(
        default=False,
        metadata={
            "help": "bf16 autocast for the layers above the trunk (training and evaluation); None: where it is fast, "
            "as trunk_autocast 'auto'."
        },
    )
    # hybrid item tokens
    item_tokens: bool = field(
        default=False,
        metadata={
            "help": "Hybrid item tokens (`trl_dynamicpo.item_tokens`): the teacher's item embeddings (item_embeddings"
            ".parquet of the `teacher` build), projected into the LM after every title of the prompt, at the input of "
            "the lowest trainable layer (the trunk caches stay exact). Needs `teacher`. Every cell, SFT included."
        },
    )
    item_features: str = field(
        default="item+state",
        metadata={"help": "'item' (item embedding) or 'item+state' (also its product with the row's teacher state)."},
    )
    item_feature_dropout: float = field(default=0.0, metadata={"help": "Dropout on the teacher's vectors."})
    item_vectors: bool = field(
        default=True,
        metadata={
            "help": "False: the item tokens stay in the prompts but their projector is frozen at zero, the text-only "
            "control on the same prompts and caches."
        },
    )
    fusion_lambda: float | None = field(
        default=None,
        metadata={
            "help": "Report each cell fused with the teacher: score + lambda x log(teacher score). None: on the "
            "validation split every lambda of a grid is reported (choose there), on test none."
        },
    )
    chosen_cell: str | None = field(
        default=None,
        metadata={
            "help": "The cell chosen on the validation split, recorded as `chosen_cell` in results.json of a test "
            "run (it must be in the grid)."
        },
    )
    # SFT
    sft_learning_rate: float = field(default=1e-3, metadata={"help": "SFT learning rate."})
    sft_epochs: float = field(default=1.0, metadata={"help": "SFT epochs over the training rows."})
    # preference optimization (every cell)
    learning_rate: float = field(default=1e-4, metadata={"help": "Learning rate of every preference cell."})
    epochs: float = field(default=1.0, metadata={"help": "Epochs of every preference cell."})
    beta: float = field(default=1.0, metadata={"help": "β of every preference loss (papers: 1)."})
    batch_size: int = field(default=8, metadata={"help": "Rows per device and forward pass (SFT and preference)."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Forward passes per optimizer step (effective batch = batch_size x this)."}
    )
    warmup_ratio: float = field(default=0.05, metadata={"help": "Linear warm-up share, then cosine decay."})
    grid: list[str] = field(
        default_factory=lambda: [
            "dpo@15",
            "sdpo@15",
            "dmpo@15",
            "dynamicpo@15",
            "sdpo@7",
            "dmpo@7",
            "dynamicpo@7",
            "sdpo@3",
            "dmpo@3",
            "dynamicpo@3",
            "sdpo@1",
            "dmpo@1",
            "dynamicpo@1",
        ],
        metadata={"help": "Preference cells as loss@K, K negatives per row drawn from the 19 (re-drawn per epoch)."},
    )
    # evaluation
    score: str = field(default="sum", metadata={"help": "Ranking score: 'sum' or 'mean' (length-normalized)."})
    candidate_orders: int = field(
        default=1,
        metadata={
            "help": "Score every evaluation prompt under this many rotations of its candidate list and average each "
            "candidate's score (`trl_dynamicpo.evaluation.orders`): cancels the model's preference for a place in the "
            "list. 1 = the prompts as built. Each extra order costs a trunk cache of the evaluation rows and one "
            "more ranking pass per cell; generation always uses the prompts as built."
        },
    )
    extrapolation: float = field(
        default=1.0,
        metadata={
            "help": "Also rank every preference cell by s_sft + extrapolation x (s_cell - s_sft): its update from the "
            "SFT start (its reference) extrapolated at scoring time, from the saved scores of the same prompts and "
            "orders (no model runs; `--report_only` applies it to a finished study). 1 = off. Reported beside each "
            "cell's own scores (`extrapolated` in results.json), never instead of them; choose it on validation."
        },
    )
    constrained_generation: bool = field(
        default=False,
        metadata={
            "help": "Also decode every cell's generation prompts restricted to each row's candidate titles "
            "(`generate_candidates`, greedy): its HR@1 next to free generation's (ValidRatio is 1 by construction). "
            "Cached per cell in constrained.json, apart from eval.json, so that turning it on re-evaluates nothing."
        },
    )
    eval_batch_size: int = field(default=8, metadata={"help": "Prompts per ranking forward pass."})
    generation_batch_size: int = field(default=16, metadata={"help": "Prompts per generate call."})
    bootstrap_resamples: int = field(default=2000, metadata={"help": "Bootstrap resamples of the prompts."})
    # control
    cells: list[str] | None = field(
        default=None, metadata={"help": "Run only these cells (e.g. sft dmpo@15); the report uses whatever exists."}
    )
    report_only: bool = field(default=False, metadata={"help": "Only rebuild results.json and the plots."})
    baselines_only: bool = field(
        default=False,
        metadata={
            "help": "Only (re)compute the baselines on the study's prompts and write them into the existing "
            "results.json (its cells are kept), e.g. after adding a `teacher`."
        },
    )

    def __post_init__(self):
        # TrlParser hands YAML values over as YAML typed them: `epochs: 2` arrives as the int 2 while `--epochs 2`
        # arrives as 2.0. The cells' fingerprints hash the values, so without this the same setting written two ways
        # would retrain a cell.
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if _is_float(hints[f.name]) and isinstance(value, int) and not isinstance(value, bool):
                setattr(self, f.name, float(value))
        # Resolved before anything is fingerprinted: a cell or cache records the precision that actually ran.
        if self.trunk_autocast == "auto":
            self.trunk_autocast = "bfloat16" if fast_bf16() else None
        if self.trunk_autocast not in (None, "bfloat16"):
            raise ValueError(f"`trunk_autocast` must be 'bfloat16', 'auto' or None, got {self.trunk_autocast!r}.")
        if self.bf16 is None:
            self.bf16 = fast_bf16()
        if self.train_selection not in ("recent", "random"):
            raise ValueError(f"`train_selection` must be 'recent' or 'random', got {self.train_selection!r}.")
        if self.eval_split not in ("test", "validation"):
            raise ValueError(f"`eval_split` must be 'test' or 'validation', got {self.eval_split!r}.")
        if self.candidate_orders < 1:
            raise ValueError(f"`candidate_orders` must be >= 1, got {self.candidate_orders}.")
        if self.num_generation_prompts > self.num_eval_prompts:
            raise ValueError("`num_generation_prompts` cannot exceed `num_eval_prompts` (they are a subset).")
        for cell in self.grid:
            parse_cell(cell)
        if self.chosen_cell is not None and self.chosen_cell not in ("sft", *self.grid):
            raise ValueError(f"`chosen_cell` {self.chosen_cell!r} is not a cell of the grid {self.grid}.")
        if self.item_tokens and not self.teacher:
            raise ValueError("`item_tokens` needs a `teacher` build (its item_embeddings.parquet and states).")


def _is_float(hint) -> bool:
    """Whether a field annotated `hint` holds a float (`float`, `float | None`)."""
    return hint is float or float in typing.get_args(hint)


def fingerprint(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


# The committed results keep their one-space indent.
write_json = functools.partial(io_utils.write_json, indent=1)
read_json = io_utils.read_json


class Study:
    def __init__(self, args: QualityArguments):
        self.args = args
        self.work = Path(args.work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------------ data
    def data_settings(self) -> dict:
        a = self.args
        return {"dataset": a.dataset_name, "builder": "defaults", "seed": a.seed}

    def build_options(self) -> dict:
        """Options of the dataset build beyond the builder's defaults (none here; a study at another scale, e.g.
        `sft_weight.py`, sets `max_history` / `num_candidates` and names them in `data_settings`)."""
        return {}

    def load_data(self):
        from dataset_builders import BuildConfig, run_build
        from dataset_builders.folder import load_dataset_folder
        from dataset_builders.prepare import existing_raw_dir
        from trl_dynamicpo.data import subsample_indices

        def build(settings: dict, timing: str, **options) -> Path:
            folder = self.work / "data" / fingerprint(settings)
            if not (folder / "build_info.json").is_file():
                raw_dir = existing_raw_dir(self.args.raw_dir, self.args.dataset_name)
                start = time.perf_counter()
                run_build(self.args.dataset_name, folder, BuildConfig(raw_dir=raw_dir, verbose=False, **options))
                self.record_timing(timing, time.perf_counter() - start)
            return folder

        folder = build(self.data_settings(), "data", **self.build_options())
        self.dataset = load_dataset_folder(folder)
        items = load_dataset_folder(folder, config="items")
        self.items = items[next(iter(items))]
        train = self.dataset["train"]
        a = self.args
        latest = a.train_selection == "recent"
        train_index = subsample_indices(len(train), a.train_rows, seed=a.seed, name="train", latest=latest)
        split = self.dataset[a.eval_split]
        eval_index = subsample_indices(len(split), a.num_eval_prompts, seed=a.seed, name=a.eval_split)
        self.train = train.select(train_index)
        self.eval = split.select(eval_index)
        self.eval_index = eval_index
        self.teacher_scores = None
        if a.teacher:
            # The same build with the teacher's columns added: the same rows, so the same prompts by index.
            teacher_folder = build(
                {**self.data_settings(), "teacher": a.teacher},
                f"data_{a.teacher}",
                teacher=a.teacher,
                **self.build_options(),
            )
            teacher_dataset = load_dataset_folder(teacher_folder)
            rows = teacher_dataset[a.eval_split].select(eval_index)
            if rows["prompt"] != self.eval["prompt"]:
                raise RuntimeError(
                    f"The {a.teacher} build's {a.eval_split} rows differ from the study's: rebuild both."
                )
            self.teacher_scores = rows["candidate_scores"]
            self.teacher_folder = teacher_folder
            if a.item_tokens:
                # The same rows with the teacher's columns: `embedding` (the row's state) feeds the item vectors.
                self.train = teacher_dataset["train"].select(train_index)
                self.eval = rows

    def item_token_data(self, tokenizer):
        """The data side of the hybrid item tokens (table, marker, features), or None for text-only cells."""
        if not self.args.item_tokens:
            return None
        from trl_dynamicpo.item_tokens import ItemEmbeddingTable, ItemTokens, default_item_token, item_token_id

        token = default_item_token(tokenizer)
        table = ItemEmbeddingTable.from_folder(self.teacher_folder)
        return ItemTokens(table, token, self.args.item_features, item_token_id(tokenizer, token))

    def user_states(self, rows):
        return rows["embedding"] if self.args.item_tokens else None

    def record_timing(self, key: str, seconds: float) -> None:
        """Keep a one-off cost (data build, trunk caches, reference log-probs) in `timings.json` at once, so that the
        study's total stays known when a later cell is interrupted and the study is resumed."""
        self.timings[key] = seconds
        path = self.work / "timings.json"
        write_json(path, {**(read_json(path) or {}), key: seconds})

    def cache(self, name: str, rows, model, tokenizer, order: str | None = None):
        from trl_dynamicpo.trunk_cache import TrunkCache

        a = self.args
        if not a.use_trunk_cache:
            return None
        settings = {
            **self.data_settings(),
            "rows": name,
            "selection": a.train_selection if name == "train" else a.eval_split,
            "count": len(rows),
            "model": a.model_name_or_path,
            "trainable_layers": a.trainable_layers,
            "autocast": a.trunk_autocast,
            "num_eval_prompts": a.num_eval_prompts if name == "eval" else None,
            "train_rows": a.train_rows if name == "train" else None,
        }
        if a.item_tokens:  # marked prompts; only then, so that the text-only caches keep their names
            settings["item_tokens"] = True
        # A rotated candidate list; only then, so that the caches of the prompts as built keep their name.
        if order is not None:
            settings["candidate_order"] = order
        root = Path(a.cache_dir) if a.cache_dir else self.work / "cache"
        folder = root / f"{name}-{fingerprint(settings)}"
        start = time.perf_counter()
        label = f"{name} rows, candidate order {order}" if order else f"{name} rows"
        print(f"trunk cache of the {label} ({len(rows)}): {folder}", flush=True)
        cache = TrunkCache.build(
            model,
            tokenizer,
            rows,
            folder,
            num_trainable_layers=a.trainable_layers,
            autocast_dtype=a.trunk_autocast,
            batch_size=4,
            item_tokens=self.item_token_data(tokenizer),
        )
        seconds = time.perf_counter() - start
        if seconds > 5:
            self.record_timing(f"cache_{name}" + (f"_order_{order}" if order else ""), seconds)
        return cache

    def eval_trunk_caches(self, model, tokenizer) -> list:
        """The trunk cache of every candidate order of the evaluation rows (order 0: the rows as built), in the order
        `score_over_orders` takes them."""
        from datasets import Dataset

        from trl_dynamicpo.evaluation.orders import order_key, reorder_rows

        caches = [self.cache("eval", self.eval, model, tokenizer)]
        num_orders = self.args.candidate_orders
        for o in range(1, num_orders):
            prompts, candidates = reorder_rows(self.eval["prompt"], self.eval["candidates"], o, num_orders)
            rows = Dataset.from_dict({"prompt": prompts, "candidates": candidates})
            caches.append(self.cache("eval", rows, model, tokenizer, order_key(o, num_orders)))
        return caches

    # ------------------------------------------------------------------ models
    @property
    def device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def load_base(self):
        from trl_dynamicpo.model_utils import load_causal_lm

        model, tokenizer = load_causal_lm(self.args.model_name_or_path, attn_implementation="sdpa")
        return model.to(self.device), tokenizer

    def lora_config(self, model):
        from peft import LoraConfig

        from trl_dynamicpo.model_utils import adapt_top_layers

        a = self.args
        config = LoraConfig(
            r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=a.lora_dropout, target_modules=LORA_TARGETS,
            task_type="CAUSAL_LM",
        )  # fmt: skip
        return adapt_top_layers(config, model, a.trainable_layers)

    def autocast(self):
        import torch

        return torch.autocast(self.device, dtype=torch.bfloat16) if self.args.bf16 else contextlib.nullcontext()

    def trainer_config(self, cell_dir: Path, **overrides):
        from trl_dynamicpo import DynamicPOConfig

        a = self.args
        values = dict(
            output_dir=str(cell_dir / "trainer"),
            per_device_train_batch_size=a.batch_size,
            gradient_accumulation_steps=a.gradient_accumulation_steps,
            lr_scheduler_type="cosine",
            warmup_steps=a.warmup_ratio,  # a float below 1 is a share of the steps (transformers 5)
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            gradient_checkpointing=False,
            bf16=a.bf16,
            seed=a.seed,
            beta=a.beta,
            trunk_cache=str(self.train_cache.cache_dir) if self.train_cache is not None else None,
            disable_tqdm=bool(os.environ.get("TQDM_DISABLE")),
        )
        if a.item_tokens:
            values.update(
                item_embeddings=str(self.teacher_folder),
                item_features=a.item_features,
                item_feature_dropout=a.item_feature_dropout,
            )
        values.update(overrides)
        return DynamicPOConfig(**values)

    def planned_steps(self, cell: str) -> int:
        """Optimizer steps of `cell`, as the Trainer counts them (partial last batch and accumulation included)."""
        a = self.args
        batches = math.ceil(len(self.train) / a.batch_size)
        epochs = a.sft_epochs if cell == "sft" else a.epochs
        return math.ceil(epochs * max(batches // a.gradient_accumulation_steps, 1))

    # ------------------------------------------------------------------ fingerprints
    def sft_settings(self) -> dict:
        a = self.args
        keys = (
            "seed",
            "train_rows",
            "train_selection",
            "model_name_or_path",
            "trainable_layers",
            "lora_r",
            "lora_alpha",
            "lora_dropout",
            "use_trunk_cache",
            "trunk_autocast",
            "bf16",
            "sft_learning_rate",
            "sft_epochs",
            "batch_size",
            "warmup_ratio",
        )
        settings = {"data": self.data_settings(), **{k: getattr(a, k) for k in keys}}
        if a.item_tokens:  # only then, so that the text-only cells keep their fingerprints
            hybrid = ("item_features", "item_feature_dropout", "item_vectors")
            settings["item_tokens"] = {"teacher": a.teacher, **{k: getattr(a, k) for k in hybrid}}
        return settings

    def cell_settings(self, cell: str) -> dict:
        if cell == "sft":
            return self.sft_settings()
        a = self.args
        loss, k = parse_cell(cell)
        keys = ("learning_rate", "epochs", "beta")
        return {"sft": fingerprint(self.sft_settings()), "loss": loss, "k": k, **{k_: getattr(a, k_) for k_ in keys}}

    def eval_settings(self, cell: str) -> dict:
        a = self.args
        _, k = parse_cell(cell)
        generation = cell == "sft" or k == 15
        return {
            "split": a.eval_split,
            "num_eval_prompts": a.num_eval_prompts,
            "num_generation_prompts": a.num_generation_prompts if generation else 0,
            "score": a.score,
            "bf16": a.bf16,
            "seed": a.seed,
            # Only when used, so that the cells evaluated before the option existed stay cached.
            **({"candidate_orders": a.candidate_orders} if a.candidate_orders > 1 else {}),
        }

    # ------------------------------------------------------------------ cells
    def cell_dir(self, cell: str) -> Path:
        return self.work / "cells" / cell

    def trained(self, cell: str) -> dict | None:
        record = read_json(self.cell_dir(cell) / "train.json")
        if record and record["fingerprint"] == fingerprint(self.cell_settings(cell)):
            return record
        return None

    def evaluated(self, cell: str) -> dict | None:
        record = read_json(self.cell_dir(cell) / "eval.json")
        trained = self.trained(cell)
        if (
            record
            and trained
            and record["train_fingerprint"] == trained["fingerprint"]
            and record["fingerprint"] == fingerprint(self.eval_settings(cell))
        ):
            return record
        return None

    def train_cell(self, cell: str, tokenizer) -> dict:
        import torch
        from peft import PeftModel, get_peft_model
        from transformers import set_seed

        from trl_dynamicpo import DynamicPOTrainer
        from trl_dynamicpo.item_tokens import get_item_tokens, load_item_tokens, save_item_tokens

        folder = self.cell_dir(cell)
        if folder.exists():
            shutil.rmtree(folder)  # a stale or half-written cell of this study (work_dir is the study's own)
        folder.mkdir(parents=True)
        loss, k = parse_cell(cell)
        train = (
            self.train if cell == "sft" else self.train_with_reference(tokenizer)
        )  # reference log-probs: once, not timed
        set_seed(self.args.seed)
        model, _ = self.load_base()
        start = time.perf_counter()
        if cell == "sft":
            model = get_peft_model(model, self.lora_config(model))
            args = self.trainer_config(
                folder,
                loss_type=["sft"],
                num_negatives=0,
                learning_rate=self.args.sft_learning_rate,
                num_train_epochs=self.args.sft_epochs,
            )
        else:
            model = PeftModel.from_pretrained(model, str(self.cell_dir("sft") / "adapter"), is_trainable=True)
            load_item_tokens(model, self.cell_dir("sft") / "adapter")
            args = self.trainer_config(
                folder,
                loss_type=[loss],
                num_negatives=k,
                learning_rate=self.args.learning_rate,
                num_train_epochs=self.args.epochs,
                precompute_ref_log_probs=True,
            )
        trainer = DynamicPOTrainer(model, args=args, train_dataset=train, processing_class=tokenizer)
        projector = get_item_tokens(trainer.model)
        if projector is not None and not self.args.item_vectors:
            projector.requires_grad_(False)  # the text-only control: item tokens, no vectors (the projector is zero)
        trainer.train()
        seconds = time.perf_counter() - start
        trainer.model.save_pretrained(str(folder / "adapter"))
        save_item_tokens(trainer.model, folder / "adapter")
        shutil.rmtree(folder / "trainer", ignore_errors=True)
        record = {
            "cell": cell,
            "loss": loss,
            "num_negatives": k,
            "fingerprint": fingerprint(self.cell_settings(cell)),
            "settings": self.cell_settings(cell),
            "train_rows": len(train),
            "steps": trainer.state.global_step,
            "train_seconds": seconds,
            "log_history": trainer.state.log_history,
        }
        write_json(folder / "train.json", record)
        del trainer, model
        torch.set_grad_enabled(True)
        return record

    def train_with_reference(self, tokenizer):
        """The training rows with the SFT adapter's log-probs of all 20 candidates, computed once for every cell."""
        from trl_dynamicpo.evaluation import score_candidates

        path = self.cell_dir("sft") / "reference_logps.npy"
        if not path.is_file():
            model = self.load_cell("sft")
            start = time.perf_counter()
            # fp32 reference log-probs (no autocast): the losses subtract them from the policy's.
            scores = score_candidates(
                model,
                tokenizer,
                self.train["prompt"],
                self.train["candidates"],
                batch_size=self.args.eval_batch_size,
                trunk_cache=self.train_cache,
                show_progress=not os.environ.get("TQDM_DISABLE"),
                item_tokens=self.item_token_data(tokenizer),
                user_states=self.user_states(self.train),
            )
            self.record_timing("reference_logps", time.perf_counter() - start)
            np.save(path, scores)
        scores = np.load(path)
        chosen, rejected = [], []
        for i, (cands, target, negatives) in enumerate(
            zip(self.train["candidates"], self.train["chosen"], self.train["rejected"])
        ):
            position = {title: j for j, title in enumerate(cands)}
            chosen.append(float(scores[i, position[target]]))
            rejected.append([float(scores[i, position[t]]) for t in negatives])
        return self.train.add_column("ref_chosen_logps", chosen).add_column("ref_rejected_logps", rejected)

    def load_cell(self, cell: str):
        """The base model with the cell's adapter (and item projector)."""
        from peft import PeftModel

        from trl_dynamicpo.item_tokens import load_item_tokens

        model, _ = self.load_base()
        model = PeftModel.from_pretrained(model, str(self.cell_dir(cell) / "adapter"))
        load_item_tokens(model, self.cell_dir(cell) / "adapter")
        return model

    def constrained_cell(self, cell: str, tokenizer) -> dict | None:
        """Constrained greedy decoding of the cell's generation prompts (cached in constrained.json), or None for a
        cell without generation prompts."""
        from trl_dynamicpo.evaluation import generate_candidates, generation_metrics

        n = self.eval_settings(cell)["num_generation_prompts"]
        if not n:
            return None
        a = self.args
        key = {"train": self.trained(cell)["fingerprint"], "split": a.eval_split, "prompts": n, "bf16": a.bf16}
        key.update(num_eval_prompts=a.num_eval_prompts, seed=a.seed)
        path = self.cell_dir(cell) / "constrained.json"
        record = read_json(path)
        if record and record["fingerprint"] == fingerprint(key):
            return record
        model, rows = self.load_cell(cell), self.eval.select(range(n))
        start = time.perf_counter()
        with self.autocast():
            answers = generate_candidates(
                model,
                tokenizer,
                rows["prompt"],
                rows["candidates"],
                batch_size=a.generation_batch_size,
                show_progress=not os.environ.get("TQDM_DISABLE"),
                item_tokens=self.item_token_data(tokenizer),
                user_states=self.user_states(rows),
            )
        outputs = [cands[row[0][0]] for row, cands in zip(answers, rows["candidates"])]
        record = {
            "cell": cell,
            "fingerprint": fingerprint(key),
            "seconds": time.perf_counter() - start,
            "metrics": generation_metrics(outputs, rows["candidates"], rows["target"], "title"),
            "outputs": outputs,
        }
        write_json(path, record)
        return record

    def evaluate_cell(self, cell: str, tokenizer) -> dict:
        from trl_dynamicpo.evaluation import generate_answers, generation_metrics, score_over_orders, target_indices

        model = self.load_cell(cell)
        item_tokens = self.item_token_data(tokenizer)
        settings = self.eval_settings(cell)
        start = time.perf_counter()
        with self.autocast():
            per_order = score_over_orders(
                model,
                tokenizer,
                self.eval["prompt"],
                self.eval["candidates"],
                self.args.candidate_orders,
                trunk_caches=self.eval_caches,
                batch_size=self.args.eval_batch_size,
                score=self.args.score,
                show_progress=not os.environ.get("TQDM_DISABLE"),
                item_tokens=item_tokens,
                user_states=self.user_states(self.eval),
            )
        scores = per_order.mean(axis=0)
        ranking_seconds = time.perf_counter() - start
        record = {
            "cell": cell,
            "fingerprint": fingerprint(settings),
            "train_fingerprint": self.trained(cell)["fingerprint"],
            "settings": settings,
            "ranking_seconds": ranking_seconds,
        }
        n = settings["num_generation_prompts"]
        if n:
            start = time.perf_counter()
            rows = self.eval.select(range(n))
            with self.autocast():
                outputs = generate_answers(
                    model,
                    tokenizer,
                    rows["prompt"],
                    batch_size=self.args.generation_batch_size,
                    show_progress=not os.environ.get("TQDM_DISABLE"),
                    item_tokens=item_tokens,
                    user_states=self.user_states(rows),
                )
            record["generation_seconds"] = time.perf_counter() - start
            record["generation"] = generation_metrics(outputs, rows["candidates"], rows["target"], "exact")
            record["generation_outputs"] = outputs
        np.save(self.cell_dir(cell) / "scores.npy", scores)
        if len(per_order) > 1:  # each order's scores (in the rows' own candidate order), for the single-order numbers
            np.save(self.cell_dir(cell) / "scores_per_order.npy", per_order)
        record["target_index"] = target_indices(self.eval["candidates"], self.eval["target"]).tolist()
        write_json(self.cell_dir(cell) / "eval.json", record)
        return record

    # ------------------------------------------------------------------ the run
    def cells(self) -> list[str]:
        cells = ["sft", *self.args.grid]
        if self.args.cells:
            unknown = set(self.args.cells) - set(cells)
            if unknown:
                raise ValueError(f"--cells {sorted(unknown)} are not in the grid {cells}.")
            cells = [c for c in cells if c in self.args.cells]
        return cells

    def run(self) -> None:
        self.load_data()
        if self.args.baselines_only:
            from quality_report import update_baselines

            update_baselines(self)
            return
        if not self.args.report_only:
            model, tokenizer = self.load_base()
            self.train_cache = self.cache("train", self.train, model, tokenizer)
            self.eval_caches = self.eval_trunk_caches(model, tokenizer)
            del model
            cells = self.cells()
            todo = [c for c in cells if self.evaluated(c) is None]
            print(f"{len(cells) - len(todo)} of {len(cells)} cells cached; to run: {' '.join(todo) or 'none'}")
            eta = _Eta(self.train_cache, steps=self.planned_steps)
            for cell in cells:  # cells trained earlier (or copied from another study) measure the speed too
                record = self.trained(cell)
                if record and "train_seconds" in record:
                    eta.trained(cell, record["train_seconds"], record["steps"])
            for i, cell in enumerate(todo, 1):
                start = time.perf_counter()
                if cell != "sft" and self.trained("sft") is None:
                    raise RuntimeError("The SFT cell must be trained first: run with `sft` in --cells.")
                if self.trained(cell) is None:
                    record = self.train_cell(cell, tokenizer)
                    eta.trained(cell, record["train_seconds"], record["steps"])
                    print(f"[{cell}] trained: {record['steps']} steps in {record['train_seconds']:.0f} s", flush=True)
                record = self.evaluate_cell(cell, tokenizer)
                eta.evaluated(record)
                print(
                    f"[{i}/{len(todo)}] {cell}: done in {time.perf_counter() - start:.0f} s; study ETA "
                    f"{eta.remaining(todo[i:], untrained=[c for c in todo[i:] if self.trained(c) is None]) / 60:.0f} min",
                    flush=True,
                )
            if self.args.constrained_generation:
                for cell in cells:
                    if self.evaluated(cell) is not None and self.constrained_cell(cell, tokenizer) is not None:
                        print(f"[{cell}] constrained generation done", flush=True)
        timings_path = self.work / "timings.json"
        timings = {**(read_json(timings_path) or {}), **self.timings}
        write_json(timings_path, timings)
        from quality_report import write_report

        write_report(self, timings)


class _Eta:
    """Remaining time of a study from the cells measured so far.

    A training step costs about `prompt + (K + 1) x answer` tokens per row, so the measured seconds per token and
    step of the trained preference cells (of this run, or cached) predict the others; evaluations cost the same for
    every cell (plus generation for SFT and the K = 15 cells). Until a preference cell has been measured, SFT's
    seconds per token (`prompt + answer`) stand in, so that the first estimate already counts the training of every
    remaining cell. A cell whose training is cached (e.g. copied from another study) counts its evaluation only.

    Args:
        cache: the training rows' `TrunkCache` (their mean prompt and answer lengths), or None for 380 / 12 tokens.
        steps: a cell name -> its optimizer steps (`Study.planned_steps`); None counts 1 step per cell.
    """

    def __init__(self, cache, steps=None):
        rows = [cache._rows[i] for i in range(len(cache))] if cache is not None else []
        self.prompt = float(np.mean([len(r["prompt_ids"]) for r in rows])) if rows else 380.0
        self.answer = float(np.mean([len(a) + 1 for r in rows for a in r["answer_ids"]])) if rows else 12.0
        self.steps = steps or (lambda cell: 1)
        self.per_token: list[float] = []
        self.sft_per_token: list[float] = []
        self.ranking: list[float] = []
        self.generation: list[float] = []

    def tokens(self, k: int) -> float:
        return self.prompt + (k + 1) * self.answer

    def trained(self, cell: str, seconds: float, steps: int | None = None) -> None:
        loss, k = parse_cell(cell)
        rate = seconds / (self.tokens(k) * (steps or self.steps(cell)))
        (self.sft_per_token if loss == "sft" else self.per_token).append(rate)

    def evaluated(self, record: dict) -> None:
        self.ranking.append(record["ranking_seconds"])
        if "generation_seconds" in record:
            self.generation.append(record["generation_seconds"])

    def remaining(self, cells: list[str], untrained: list[str] | None = None) -> float:
        """Seconds left for `cells`, of which `untrained` (default: all) still need training."""
        total, per_token = 0.0, self.per_token or self.sft_per_token
        untrained = cells if untrained is None else untrained
        for cell in cells:
            _, k = parse_cell(cell)
            if per_token and cell in untrained:
                total += np.mean(per_token) * self.tokens(k) * self.steps(cell)
            total += np.mean(self.ranking) if self.ranking else 0.0
            if k == 15 and self.generation:
                total += np.mean(self.generation)
        return total


def main(argv: list[str] | None = None) -> int:
    from trl import TrlParser

    parser = TrlParser((QualityArguments,))
    (args,) = parser.parse_args_and_config(argv)
    Study(args).run()
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    raise SystemExit(main())
