#!/usr/bin/env python
"""Train, evaluate and publish an LLM recommender from one recipe file.

The recipe layer, one concern per module: the schema and command line (`recipes/recipe_config.py`), the stage
folders' bookkeeping (`recipes/stage_folders.py`), each stage's work (`recipes/stages.py`) and, here, the driver.

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

One job per run folder: a job holds `<output_dir>/.run.lock` (`recipes/run_lock.py`) while it runs, and a second job
on the same folder stops at once (exit code 2) with a message naming the first one's PID. The lock goes with the
process that held it, so a killed job never blocks the next.

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
import shlex
import sys
import time
from pathlib import Path


if __package__ in (None, ""):  # run as a script: make `recipes` and the library importable from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dataset_builders.errors import (  # noqa: E402
    AmbiguousRawFilesError,
    MissingRawFilesError,
    OutputFolderError,
    RawDataError,
)
from recipes.recipe_config import (  # noqa: E402
    SECTIONS,
    STAGES,
    RecipeArguments,
    RecipeError,
    format_help,
    load_recipe,
    parse_command_line,
)
from recipes.run_lock import OutputDirError, RunLock, RunLockedError  # noqa: E402
from recipes.stage_folders import ForeignFilesError, StageFolder, StageRecord  # noqa: E402
from recipes.stages import EVALUATED_STAGES, DataStageError, StageWork  # noqa: E402
from trl_dynamicpo.checkpoints import find_resume_checkpoint, set_aside  # noqa: E402
from trl_dynamicpo.device import use_cpu  # noqa: E402
from trl_dynamicpo.evaluation import format_comparison_table, format_value  # noqa: E402
from trl_dynamicpo.io_utils import read_json, write_json  # noqa: E402
from trl_dynamicpo.redaction import redact, redact_text  # noqa: E402


# Inputs of each stage: the recipe keys whose change makes a finished stage stale (re-run), besides upstream stages.
STAGE_KEYS = {
    "data": ("data", "seed"),
    "sft": ("model", "trunk_cache", "sft", "seed"),
    "preference": ("model", "trunk_cache", "preference", "seed", "sft_adapter"),
    "evaluate": ("model", "trunk_cache", "evaluation"),
    "publish": ("publish",),
}
# The builders' errors about the raw data (missing, not downloadable offline, ambiguous, malformed) and the data
# stage's about the rows: the message says what to do, so it is printed without a traceback (exit code 2), like a
# recipe error.
INPUT_ERRORS = (MissingRawFilesError, AmbiguousRawFilesError, RawDataError, OutputFolderError, DataStageError)
STAGE_DIRS = {"data": "data", "sft": "sft", "preference": "preference", "evaluate": "evaluate", "publish": "final"}


class StageInputError(RuntimeError):
    """A stage needs the output of another stage that is neither selected nor finished."""


class RecipeRun(StageWork):
    """Runs the stages of a validated recipe in one process of an `accelerate launch` (or a plain `python`) job;
    `command` is the command line, for the retry hint of a failed push. The stages' work is [`StageWork`]'s."""

    def __init__(self, recipe: RecipeArguments, command: str | None = None):
        from accelerate import PartialState

        self.recipe = recipe
        self.command = redact_text(command or f"python recipes/run.py {recipe.source}")  # printed: no token
        self.state = PartialState(cpu=use_cpu())  # the same state the trainers' TrainingArguments build
        self.is_main = self.state.is_main_process
        self.output_dir = Path(recipe.output_dir)
        self.records: list[StageRecord] = []
        self.collectives = self.state.num_processes > 1  # False once the training processes have split up
        self.folders = {stage: StageFolder(stage, self.output_dir / name) for stage, name in STAGE_DIRS.items()}
        # `final/` is uploaded as it is: the publish stage records its start beside it.
        self.folders["publish"].inputs_path = self.output_dir / "publish_inputs.json"

    # -------------------------------------------------------------- bookkeeping
    def stage_dir(self, stage: str) -> Path:
        return self.folders[stage].path

    def done(self, stage: str) -> dict | None:
        return self.folders[stage].done

    def check_outputs(self) -> None:
        """Fail before any work when a stage that will run would write into a folder holding files of the user's: an
        unfinished stage, one whose inputs changed, and one downstream of a stage that will run (its upstream id will
        change), so that e.g. a `final/` holding a file of the user's stops the run before `evaluate` re-runs."""
        problems, will_run = [], set()
        for stage in self.recipe.stages:
            folder = self.folders[stage]
            if set(self.upstream(stage)) & will_run or not folder.reusable(self.inputs(stage), self.recipe.overwrite):
                will_run.add(stage)
            foreign = folder.foreign_files() if stage in will_run else []
            if foreign:
                problems.append(str(folder.foreign_files_error(foreign)))
        if problems:
            raise ForeignFilesError("\n".join(problems))

    def barrier(self) -> None:
        if self.collectives:
            self.state.wait_for_everyone()

    def main_first(self):
        """The main process first (e.g. a GGUF conversion, a `map` cache), then the others; no-op in one process."""
        return self.state.main_process_first() if self.collectives else contextlib.nullcontext()

    def evaluated_stages(self) -> list[str]:
        return [EVALUATED_STAGES[m] for m in self.recipe.evaluation.models if m in EVALUATED_STAGES]

    def upstream(self, stage: str) -> dict[str, str | None]:
        """Ids of the finished stages (or adapter folders) whose outputs `stage` consumes."""
        if stage == "publish":
            return {s: (self.done(s) or {}).get("id") for s in ("sft", "preference", "evaluate")}
        ids = {} if stage == "data" else {"data": (self.done("data") or {}).get("id")}
        if stage == "preference":
            ids["sft"] = self.done("sft")["id"] if self.done("sft") else self.recipe.sft_adapter
        elif stage == "evaluate":
            ids.update({s: (self.done(s) or {}).get("id") for s in self.evaluated_stages()})
        return ids

    def inputs(self, stage: str) -> dict:
        recipe = self.recipe
        values = {key: recipe.raw.get(key) if key in SECTIONS else getattr(recipe, key) for key in STAGE_KEYS[stage]}
        # Hashed without tokens: a new token is not a new input (and no hash of it is stored).
        digest = hashlib.sha256(json.dumps(redact(values), sort_keys=True, default=str).encode()).hexdigest()[:16]
        return {"recipe": digest, "upstream": self.upstream(stage)}

    def check_inputs(self) -> None:
        """Fail before any work when a selected stage needs an output that no stage will produce."""
        selected = set(self.recipe.stages)
        for stage in self.recipe.stages:
            needs = ["data"] if stage in ("sft", "preference", "evaluate") else []
            if stage == "evaluate":
                needs += self.evaluated_stages()
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
        """Run the selected stages holding the run folder's lock ([`RunLock`]: one job per `output_dir`); returns the
        process exit code (0, or 1 when the Hub push failed)."""
        self.check_inputs()  # read-only: a recipe that cannot run creates nothing, not even the run folder
        lock, problem = RunLock(self.output_dir, self.command) if self.is_main else None, None
        if lock is not None:
            try:
                lock.acquire()
            except (RunLockedError, OutputDirError) as err:
                problem = err
        if self.collectives:  # every process of the job stops when the main one could not take the folder
            from accelerate.utils import broadcast_object_list

            problem = broadcast_object_list([problem])[0]
        if problem is not None:
            raise problem
        try:
            return self.run_stages()
        finally:
            if lock is not None:
                lock.release()

    def run_stages(self) -> int:
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
                note = redact_text(f"{type(err).__name__}: {err}")[:200]
                self.records.append(StageRecord(stage, "failed", time.perf_counter() - started, note=note))
                if self.is_main:
                    try:
                        self.write_summary()
                    except Exception as summary_err:  # e.g. the same full disk: the stage's error is the one to see
                        print(
                            f"warning: could not write {self.output_dir / 'run_summary.json'} after the '{stage}' "
                            f"stage failed: {type(summary_err).__name__}: {summary_err}",
                            file=sys.stderr,
                        )
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

        folder, inputs = self.folders[stage], self.inputs(stage)
        reuse = folder.reusable(inputs, self.recipe.overwrite)
        # Checked on every process, so that all of them stop together (none waits at the barrier below).
        foreign = [] if reuse else folder.foreign_files()
        self.barrier()  # every process has read the same state before the main process changes it
        if reuse:
            done = folder.done
            if self.is_main:
                print(f"    reusing the finished stage in {folder.path} (--overwrite re-runs it)")
            return StageRecord(
                stage, "reused", done.get("seconds", 0.0), done.get("metrics", {}), done.get("outputs", {})
            )
        if foreign:
            raise folder.foreign_files_error(foreign)
        if self.is_main:
            folder.start(inputs, self.recipe.overwrite)
        self.barrier()
        start = time.perf_counter()
        record = getattr(self, f"stage_{stage}")()
        record.seconds = time.perf_counter() - start
        if record.status == "ran" and self.is_main:
            folder.finish(inputs, record.seconds, record.metrics, record.outputs)
        self.barrier()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return record

    def resume_checkpoint(self, stage: str) -> str | None:
        """The last complete `checkpoint-N` of an unfinished training stage, or None to train from the start. Newer
        checkpoints a kill cut while they were saved are set aside (renamed, never deleted), with a message."""
        folder = self.folders[stage]
        last, cut = find_resume_checkpoint(folder.path, folder.requires_checkpoint_marker())
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
                    else f"    no complete checkpoint in {folder.path}: training starts from the beginning"
                )
        self.barrier()
        return str(last) if last is not None else None

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
        print(f"\nRun summary: {path}")
        evaluation = read_json(self.stage_dir("evaluate") / "eval_results.json")
        if evaluation and any(r.stage == "evaluate" and r.status in ("ran", "reused") for r in self.records):
            names = {n: d for n, d, _ in self.evaluated_models()}
            print("\n" + closing_lines(evaluation, names, run_slice(self.recipe, self.records)))


def run_slice(recipe: RecipeArguments, records: list[StageRecord]) -> dict:
    """What the closing lines say about a run's data: training rows, history items and candidates per prompt."""
    from dataset_builders.config import BuildConfig

    data = recipe.data
    record = next((r for r in records if r.stage == "data"), None)
    rows = (record.metrics.get("train_rows") if record else None) or data.max_train_rows
    if data.dataset_name is None:  # a built dataset: its build options are not the recipe's
        return {"train_rows": rows, "subsampled": data.max_train_rows is not None}
    options = {f.name: f.default for f in dataclasses.fields(BuildConfig)} | dict(data.build_options)
    return {
        "train_rows": rows,
        "subsampled": data.max_train_rows is not None,
        "history": options.get("max_history"),
        "candidates": options.get("num_candidates"),
    }


QUALITY_STUDY = "docs/quality_study.md"  # where the full result lives; the closing lines point there


def closing_lines(evaluation: dict, names: dict[str, str], data_slice: dict) -> str:
    """The last lines a run prints: every evaluated model's HR@1 next to the baselines (95% intervals), then what they
    show, in words a newcomer can read: the slice of data the run used, whether the preference stage improved on SFT
    (with the intervals), where the run stands against popularity, and where the full result is.

    Args:
        evaluation (`dict`): model name -> flat results of `evaluate_recommender` (`evaluate/eval_results.json`).
        names (`dict`): model name -> display name, in column order (`sft` -> "SFT", `final` -> "DynamicPO").
        data_slice (`dict`): [`run_slice`]: `train_rows`, `subsampled` (`data.max_train_rows` is set), and when
            known `history` and `candidates` (per prompt).
    """
    table = format_comparison_table(evaluation, names).splitlines()
    lines = [line for line in table if line.startswith("HR@1 (")]
    sft, final = evaluation.get("sft", {}), evaluation.get("final", {})
    if "ranking/hr@1" not in final:
        return "\n".join(lines)
    count = final.get("ranking/num_samples", final.get("num_samples"))
    ci = final.get("ranking/hr@1_ci")
    lines += [
        "",
        "How to read it: HR@1 is the share of test prompts whose top-ranked candidate is the item the user chose next.",
    ]
    rows, history, candidates = (data_slice.get(k) for k in ("train_rows", "history", "candidates"))
    facts = [f"{rows:,} training rows" if rows else "the full training split"]
    facts += [
        f"{history} history items" if history else None,
        f"{candidates} candidates per prompt" if candidates else None,
    ]
    random_note = f" (a random pick is right 1 time in {candidates})" if candidates else ""
    what = "This run is a small slice, sized for minutes of CPU" if data_slice.get("subsampled") else "This run"
    lines.append(f"- {what}: {', '.join(f for f in facts if f)}{random_note}, {count} test prompts.")
    name = names.get("final", "the preference model")
    if "ranking/hr@1" in sft:
        diff = final["ranking/hr@1"] - sft["ranking/hr@1"]
        sft_ci = sft.get("ranking/hr@1_ci")
        line = (
            f"- The preference stage moved HR@1 from {sft['ranking/hr@1']:.3f} (SFT, the model it started from) to "
            f"{final['ranking/hr@1']:.3f} ({name}): {diff:+.3f}"
        )
        if ci and sft_ci:
            apart = ci[0] > sft_ci[1] or ci[1] < sft_ci[0]
            line += f"; the 95% intervals, [{sft_ci[0]:.3f}, {sft_ci[1]:.3f}] and [{ci[0]:.3f}, {ci[1]:.3f}], " + (
                "do not overlap." if apart else f"overlap, so on {count} prompts it is a trend, not a proof."
            )
        lines.append(line + ("" if line.endswith(".") else "."))
    popularity, pop_ci = final.get("baseline_popularity/hr@1"), final.get("baseline_popularity/hr@1_ci")
    if popularity is None:
        popularity, pop_ci = sft.get("baseline_popularity/hr@1"), sft.get("baseline_popularity/hr@1_ci")
    if popularity is not None and ci and pop_ci:
        if ci[1] < pop_ci[0]:
            reason = f": {rows:,} rows are too few to learn what popularity knows." if rows else "."
            lines.append(f"- Popularity ({popularity:.3f}) is ahead on this slice{reason}")
        elif ci[0] > pop_ci[1]:
            lines.append(f"- {name} is above popularity ({popularity:.3f}) on these prompts.")
        else:
            lines.append(f"- {name} is level with popularity ({popularity:.3f}) within the intervals.")
    lines.append(
        f"- The full result, DynamicPO above popularity on 1,000 test prompts (4,096 rows, 20 candidates): {QUALITY_STUDY}"
    )
    return "\n".join(lines)


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
    except (RecipeError, StageInputError, ForeignFilesError, RunLockedError, OutputDirError, *INPUT_ERRORS) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
