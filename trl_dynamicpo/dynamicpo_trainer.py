"""[`DynamicPOTrainer`]: TRL's `DPOTrainer` for rows with many negatives (S-DPO, DMPO, NAPO, MPPO, DynamicPO)."""

import contextlib
import copy
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.logging import get_logger
from accelerate.utils import gather_object, is_peft_model
from datasets import Dataset, IterableDataset
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, PreTrainedTokenizerBase, TrainerCallback
from trl import DPOConfig, DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import get_config_model_id, global_then_local_main_first, use_adapter

from .data import check_columns, numbered_rejected_columns, tokenize_rows
from .dynamicpo_config import DynamicPOConfig
from .item_tokens import (
    ItemEmbeddingTable,
    ItemTokenProjector,
    ItemTokens,
    attach_item_tokens,
    default_item_token,
    feature_dim,
    get_item_tokens,
    item_token_id,
    lowest_trainable_layer,
    save_item_tokens,
)
from .losses import LOSS_SPECS, compute_multi_negative_loss, napo_margin, resolve_loss_type, sft_loss
from .model_card import CITATIONS
from .napo import NapoMarginState, share_in_batch_negatives
from .packing import (
    DataCollatorForMultiNegativePreference,
    answer_logps,
    pack_answers,
    unpack_token_tensors,
)
from .trunk_cache import TrunkCache, check_trainable_parameters


logger = get_logger(__name__)

# Columns the collator reads; everything else is removed by `Trainer` (remove_unused_columns) or by `_prepare_dataset`.
_SIGNATURE_COLUMNS = [
    "prompt_ids",
    "chosen_ids",
    "rejected_ids",
    "row_index",
    "ref_chosen_logps",
    "ref_rejected_logps",
    "rejected_scores",
    "embedding",
    "trunk_row",
    "trunk_answers",
    "item_titles",
]
NAPO_STATE_FILE = "napo_state.json"
# Counters of this trainer that `TrainerState` does not hold, saved with each checkpoint so that a resumed run continues
# them (today: the cumulative `num_tokens` metric).
TRAINER_STATE_FILE = "dynamicpo_state.json"
# Optional input columns carried through tokenization unchanged.
_PASSTHROUGH_COLUMNS = ("rejected_scores", "embedding", "ref_chosen_logps", "ref_rejected_logps", "item_titles")


class _NegativeResamplingCallback(TrainerCallback):
    """Tells the collator which epoch it is, so that sampled negatives are re-drawn every epoch."""

    def __init__(self, collator):
        self.collator = collator

    def on_epoch_begin(self, args, state, control, **kwargs):
        # `state.epoch` is exactly the epoch index at a fresh epoch's start ((e - 1) + n/n), and e + k/n (k < n) when a
        # run resumes mid-epoch e: floor gives e in both cases (rounding would draw epoch e + 1's negatives for the rest
        # of epoch e, and the resumed run would train a different model). The 1e-9 only guards float noise.
        self.collator.epoch = math.floor((state.epoch or 0.0) + 1e-9)


class _ItemCurriculumCallback(TrainerCallback):
    """LLaRA's curriculum for hybrid item tokens: the collator's share of rows whose item tokens get their vectors
    rises linearly from 0 to 1 over the first `fraction` of the training steps."""

    def __init__(self, collator, fraction: float):
        self.collator, self.fraction = collator, fraction

    def _update(self, state) -> None:
        # The share after `global_step` steps. The data loader collates one batch ahead, so a batch trains with the
        # share of one step earlier: a lag of a step on a ramp of many.
        ramp = self.fraction * max(state.max_steps, 1)
        self.collator.item_share = min(1.0, state.global_step / ramp)

    def on_train_begin(self, args, state, control, **kwargs):
        self._update(state)  # 0 on a fresh run; a resumed run continues where it stopped

    def on_step_end(self, args, state, control, **kwargs):
        self._update(state)

    def on_train_end(self, args, state, control, **kwargs):
        self.collator.item_share = 1.0  # evaluation after training sees every vector


class DynamicPOTrainer(DPOTrainer):
    """
    Trainer for multi-negative preference optimization of LLM recommenders: DPO averaged over negatives, S-DPO, DMPO,
    NAPO and DynamicPO (Dynamic Boundary Negative Selection + Dual-Margin Dynamic β, as plug-ins on S-DPO, DMPO and
    NAPO).

    A drop-in replacement for [`trl.DPOTrainer`]: it takes the same constructor arguments, and a TRL user changes the
    import and the config class ([`DynamicPOConfig`]). Rows hold a `prompt`, a `chosen` answer and a list of `rejected`
    answers (a single string, S-DPO's `rejected1..rejectedK` columns and the conversational format are accepted too).
    By default every answer of a row is scored in one shared-prefix forward pass (`layout="packed"`), with the prompt
    computed once.

    With a `peft_config` (or a `PeftModel`) and no `ref_model`, the reference is the model with its adapter disabled
    (or, for a `PeftModel` that already holds a trained adapter such as an SFT adapter, a frozen copy of that adapter):
    no second model is kept in memory.

    Example:

    ```python
    >>> from datasets import Dataset
    >>> from trl_dynamicpo import DynamicPOConfig, DynamicPOTrainer

    >>> dataset = Dataset.from_list(
    ...     [{"prompt": "The user watched Heat, Fargo. Pick one of: Alien, Jaws, Up. Answer:",
    ...       "chosen": "Alien", "rejected": ["Jaws", "Up"]}] * 8
    ... )
    >>> trainer = DynamicPOTrainer(
    ...     model="HuggingFaceTB/SmolLM2-135M-Instruct",
    ...     args=DynamicPOConfig("smollm2-dynamicpo", loss_type=["dynamicpo"], max_steps=2),
    ...     train_dataset=dataset,
    ... )  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP
    ```

    Args:
        model (`str`, [`~transformers.PreTrainedModel`] or [`~peft.PeftModel`]):
            Model to train, as in [`trl.DPOTrainer`].
        ref_model ([`~transformers.PreTrainedModel`], *optional*):
            Reference model. If `None`, the initial policy (or the adapter-disabled / frozen-adapter model) is used.
        args ([`DynamicPOConfig`], *optional*):
            Configuration. A plain `DPOConfig` is converted (with its `loss_type`, `"sigmoid"` meaning `"dpo"`).
        data_collator (`DataCollator`, *optional*):
            Defaults to [`DataCollatorForMultiNegativePreference`] with the config's layout and `num_negatives`.
        train_dataset ([`~datasets.Dataset`] or [`~datasets.IterableDataset`]):
            Multi-negative preference rows.
        eval_dataset ([`~datasets.Dataset`], `dict` of them, *optional*):
            Evaluation rows, same format.
        processing_class ([`~transformers.PreTrainedTokenizerBase`], *optional*):
            Tokenizer; loaded from the model when `None`.
        compute_metrics, callbacks, optimizers, quantization_config, peft_config:
            As in [`trl.DPOTrainer`].
    """

    _tag_names = ["trl", "trl-dynamicpo", "recommendation"]
    _name = "DynamicPO"
    _paper = {
        "title": "DynamicPO: Dynamic Preference Optimization for Recommendation",
        "id": "2605.00327",
        "citation": CITATIONS["dynamicpo"],
    }

    def __init__(
        self,
        model,
        ref_model=None,
        args: DynamicPOConfig | DPOConfig | None = None,
        data_collator=None,
        train_dataset: Dataset | IterableDataset | None = None,
        eval_dataset=None,
        processing_class: PreTrainedTokenizerBase | None = None,
        compute_metrics=None,
        callbacks: list[TrainerCallback] | None = None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
    ):
        if args is None:
            model_name = model if isinstance(model, str) else get_config_model_id(model.config)
            args = DynamicPOConfig(f"{str(model_name).rstrip('/').split('/')[-1]}-DynamicPO")
        elif not isinstance(args, DynamicPOConfig):
            args = _to_dynamicpo_config(args)
        # Before any work: an empty dataset would only fail at the first step, with a bare StopIteration.
        for name, dataset in (("train_dataset", train_dataset), ("eval_dataset", eval_dataset)):
            sized = [dataset] if not isinstance(dataset, dict) else list(dataset.values())
            if any(isinstance(d, Dataset) and len(d) == 0 for d in sized):
                raise ValueError(f"`{name}` is empty (0 rows): there is nothing to train or evaluate on.")

        if processing_class is None:
            processing_class = _load_tokenizer(model, args)
        if not isinstance(processing_class, PreTrainedTokenizerBase):
            raise TypeError(
                "DynamicPOTrainer supports text models: `processing_class` must be a tokenizer, got "
                f"{type(processing_class).__name__}."
            )
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        self.trunk_cache = None
        if args.trunk_cache is not None:
            self.trunk_cache = TrunkCache(args.trunk_cache)
            if eval_dataset is not None:
                raise ValueError(
                    "`trunk_cache` covers `train_dataset` only; evaluate with `evaluate_recommender(..., "
                    "trunk_cache=...)` on a cache of the evaluation rows, or pass `eval_dataset=None`."
                )
            if not isinstance(model, str):
                self.trunk_cache.check_model(model)  # before any dataset or reference work is done
        # Hybrid item tokens: attached before `DPOTrainer.__init__`, which may precompute reference log-probs with them.
        self.item_tokens = self._setup_item_tokens(model, args, processing_class, peft_config)
        if data_collator is None:
            data_collator = DataCollatorForMultiNegativePreference(
                pad_token_id=processing_class.pad_token_id,
                layout=args.layout,
                num_negatives=args.num_negatives,
                seed=args.seed if args.negative_sampling_seed is None else args.negative_sampling_seed,
                pad_to_multiple_of=args.pad_to_multiple_of if isinstance(args.pad_to_multiple_of, int) else None,
                # In-batch sharing needs the token ids across processes before packing (done in `_compute_loss`).
                defer_packing=args.in_batch_negatives,
                trunk_cache=self.trunk_cache,
                item_tokens=self.item_tokens,
            )
        self._napo_state = NapoMarginState(decay=args.napo_ema_decay)
        if (
            ref_model is None
            and peft_config is None
            and not isinstance(model, str)
            and not is_peft_model(model)
            and not args.precompute_ref_log_probs
        ):
            # DPOTrainer would reload the reference from the model's name, which fails for a model built from a config
            # or changed in memory; a copy is the same initial policy and costs the same memory.
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        self._loss_flags = {
            name: resolve_loss_type(name, args.dynamic_boundary_selection, args.dynamic_beta)
            for name in args.loss_type
        }
        super().__init__(
            model=model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            compute_metrics=compute_metrics,
            callbacks=callbacks,
            optimizers=optimizers,
            quantization_config=quantization_config,
            peft_config=peft_config,
        )
        if isinstance(self.data_collator, DataCollatorForMultiNegativePreference):
            self.add_callback(_NegativeResamplingCallback(self.data_collator))
            if self.item_tokens is not None and args.item_token_curriculum > 0:
                self.add_callback(_ItemCurriculumCallback(self.data_collator, args.item_token_curriculum))
        projector = get_item_tokens(self.model)
        if projector is not None:
            projector.requires_grad_(True)  # PEFT froze every parameter outside its adapters
        if self.trunk_cache is not None:
            check_trainable_parameters(self.model, self.trunk_cache.first_layer)
            if isinstance(model, str):
                self.trunk_cache.check_model(self.model)

    # ------------------------------------------------------------------ data
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        column_names = dataset.column_names or list(next(iter(dataset)).keys())
        if "prompt_ids" in column_names and "rejected_ids" in column_names:
            return dataset  # already tokenized (idempotent, as TRL)
        check_columns(column_names)
        item_tokens = getattr(self, "item_tokens", None)
        if item_tokens is not None and "item_titles" not in column_names:
            desc = {"desc": f"Marking item tokens in {dataset_name} dataset"} if isinstance(dataset, Dataset) else {}
            dataset = dataset.map(_mark_row, fn_kwargs={"item_tokens": item_tokens}, **desc)
            column_names = dataset.column_names or list(next(iter(dataset)).keys())
        remove = [name for name in column_names if name not in _PASSTHROUGH_COLUMNS]
        map_kwargs = {}
        if isinstance(dataset, Dataset):
            map_kwargs["num_proc"] = args.dataset_num_proc
            map_kwargs["desc"] = f"Tokenizing {dataset_name} dataset"
        with global_then_local_main_first():
            dataset = dataset.map(
                tokenize_rows,
                batched=True,
                with_indices=True,
                remove_columns=remove,
                fn_kwargs={
                    "tokenizer": processing_class,
                    "separator": args.completion_separator,
                    "max_length": args.max_length,
                    "rejected_columns": numbered_rejected_columns(column_names),
                },
                **map_kwargs,
            )
        if getattr(self, "trunk_cache", None) is not None and dataset_name == "train":
            desc = {"desc": "Locating rows in the trunk cache"} if isinstance(dataset, Dataset) else {}
            dataset = dataset.map(_locate_in_trunk_cache, fn_kwargs={"cache": self.trunk_cache}, **desc)
        return dataset

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = list(_SIGNATURE_COLUMNS)

    # ------------------------------------------------------------------ reference log-probs
    def _reference_context(self):
        stack = contextlib.ExitStack()
        projector = get_item_tokens(self.model)
        if projector is not None:
            stack.enter_context(projector.reference())  # the item projector as it was when training started
        if self.ref_model is None and is_peft_model(self.model):
            unwrapped = self.accelerator.unwrap_model(self.model)
            # A PeftModel trained before (e.g. the SFT adapter) gets a frozen copy named "ref" from DPOTrainer.
            stack.enter_context(use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None))
        return stack

    # ------------------------------------------------------------------ hybrid item tokens
    def _setup_item_tokens(self, model, args: DynamicPOConfig, tokenizer, peft_config) -> ItemTokens | None:
        """Attach (or check) the item-token projector and return the data side that marks rows, or None."""
        if args.item_embeddings is None:
            if not isinstance(model, str) and get_item_tokens(model) is not None:
                raise ValueError(
                    "The model has an item-token projector (hybrid item tokens) but `item_embeddings` is not set: "
                    "pass the dataset folder with the teacher's item_embeddings.parquet."
                )
            return None
        if isinstance(model, str):
            raise ValueError("`item_embeddings` needs the model as an instance (load it first), not a name.")
        table = ItemEmbeddingTable.from_folder(args.item_embeddings)
        projector = get_item_tokens(model)
        if projector is None:
            token = args.item_token or default_item_token(tokenizer)
            if args.item_token_layer == "input":
                layer = 0
            elif args.item_token_layer == "trunk":
                if self.trunk_cache is not None:
                    layer = self.trunk_cache.first_layer
                else:
                    layer = lowest_trainable_layer(model, peft_config)
            else:
                layer = int(args.item_token_layer)
            hidden = unwrap_causal_lm_config(model).hidden_size
            projector = attach_item_tokens(
                model,
                ItemTokenProjector(
                    feature_dim(table.dim, args.item_features),
                    hidden,
                    item_token_id(tokenizer, token),
                    layer,
                    item_token=token,
                    features=args.item_features,
                    projector_hidden=args.item_projector_hidden,
                    feature_dropout=args.item_feature_dropout,
                    table_source=str(args.item_embeddings),
                ),
            )
        elif projector.config["in_dim"] != feature_dim(table.dim, projector.config["features"]):
            raise ValueError(
                f"The model's item projector takes {projector.config['in_dim']} features, but the item table in "
                f"{args.item_embeddings} gives {feature_dim(table.dim, projector.config['features'])}: use the table "
                "it was trained with."
            )
        if self.trunk_cache is not None and projector.layer < self.trunk_cache.first_layer:
            raise ValueError(
                f"Item tokens are added at layer {projector.layer}, inside the frozen trunk that the trunk cache "
                f"replaces (layers 0-{self.trunk_cache.first_layer - 1}): use item_token_layer='trunk' with a cache."
            )
        if not args.precompute_ref_log_probs:
            projector.snapshot_reference()
        return ItemTokens(table, projector.config["item_token"], projector.config["features"], projector.item_token_id)

    def training_step(self, *args, **kwargs):
        try:
            return super().training_step(*args, **kwargs)
        finally:
            projector = get_item_tokens(self.model)
            if projector is not None:
                projector._pending = None  # kept through backward for gradient checkpointing's recomputation

    def _save(self, output_dir: str | None = None, state_dict=None):
        super()._save(output_dir, state_dict=state_dict)
        if self.args.should_save:
            # The item table travels with the projector: the saved adapter alone can then score new users.
            folder = output_dir if output_dir is not None else self.args.output_dir
            save_item_tokens(self.model, folder, table=self.args.item_embeddings)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model=model)
        projector = get_item_tokens(model if model is not None else self.model)
        if projector is not None:
            saved = load_item_tokens_state(resume_from_checkpoint)
            if saved is not None:
                projector.net.load_state_dict(saved)

    def compute_ref_log_probs(self, model, inputs) -> torch.Tensor:
        """Reference log-probs `[B, 1 + K]` of a collated batch (answer 0 is the chosen one)."""
        with (
            torch.no_grad(),
            disable_gradient_checkpointing(self.model, self.args.gradient_checkpointing_kwargs),
            self._reference_context(),
        ):
            return answer_logps(model, inputs)

    def _precompute_ref_logps(self, dataset: Dataset, name: str, batch_size: int) -> Dataset:
        if set(dataset.column_names or ()) >= {"ref_chosen_logps", "ref_rejected_logps"}:
            # Given with the rows (as TRL's collator accepts them), e.g. shared by several runs from one reference.
            return dataset
        if isinstance(dataset, IterableDataset):
            raise ValueError(
                "`precompute_ref_log_probs=True` needs a map-style Dataset; got an IterableDataset. Set "
                "`precompute_ref_log_probs=False`."
            )
        # Score every negative of every row, not one epoch's sample, so that any later draw finds its reference.
        collator = dataclasses.replace(self.data_collator, num_negatives=None)
        loader = self.accelerator.prepare(
            DataLoader(dataset, batch_size=batch_size, collate_fn=collator, shuffle=False)
        )
        model = self.ref_model or self.model
        was_training = model.training
        model.eval()
        chunks = []
        for batch in _progress(loader, f"Computing reference log probs for {name} dataset"):
            with self.accelerator.autocast():
                logps = self.compute_ref_log_probs(model, batch)
            logps = self.accelerator.pad_across_processes(logps, dim=1)
            chunks.append(self.accelerator.gather_for_metrics(logps).float().cpu())
        model.train(was_training)
        width = max(chunk.size(1) for chunk in chunks)
        all_logps = torch.cat([torch.nn.functional.pad(c, (0, width - c.size(1))) for c in chunks])
        num_negatives = [len(r) for r in dataset["rejected_ids"]]
        dataset = dataset.add_column("ref_chosen_logps", all_logps[:, 0].tolist())
        return dataset.add_column(
            "ref_rejected_logps", [all_logps[i, 1 : 1 + k].tolist() for i, k in enumerate(num_negatives)]
        )

    # ------------------------------------------------------------------ loss
    def _compute_loss(self, model, inputs, return_outputs):
        mode = "train" if self.model.training else "eval"
        if "answer_tokens" in inputs:
            inputs = self._share_in_batch_negatives(inputs)
        logps, token_counts = answer_logps(model, inputs, return_token_counts=True)
        negative_mask = inputs["answer_mask"][:, 1:]
        if self.precompute_ref_logps:
            ref_logps = inputs["ref_logps"].to(logps.dtype)
        elif self._needs_reference(inputs):
            ref_model = self.model if self.ref_model is None else self.ref_model
            ref_logps = self.compute_ref_log_probs(ref_model, inputs)
        else:
            ref_logps = None  # MPPO, or reference-free NAPO with teacher scores: no reference forward at all
        chosen_logps, rejected_logps = logps[:, 0], logps[:, 1:]
        ref_chosen = None if ref_logps is None else ref_logps[:, 0]
        ref_rejected = None if ref_logps is None else ref_logps[:, 1:]
        gamma = (
            self._napo_margin(mode, inputs, ref_rejected, token_counts[:, 1:]) if "napo" in self.loss_types else 0.0
        )

        loss = 0.0
        first_output = None
        for loss_type, weight in zip(self.loss_types, self.loss_weights, strict=True):
            if loss_type == "sft":
                nll = sft_loss(chosen_logps, token_counts[:, 0]).mean()
                self._metrics[mode]["sft/nll"].append(self.accelerator.gather(nll.detach().reshape(1)).mean().item())
                loss = loss + nll * weight
                continue
            _, selection, dynamic_beta = self._loss_flags[loss_type]
            output = compute_multi_negative_loss(
                loss_type,
                chosen_logps,
                rejected_logps,
                ref_chosen,
                ref_rejected,
                negative_mask,
                self.beta,
                boundary_selection=selection,
                dynamic_beta=dynamic_beta,
                boundary_clusters=self.args.boundary_clusters,
                beta_scale=self.args.beta_scale,
                beta_margin=self.args.beta_margin,
                eps=self.args.beta_eps,
                gamma=gamma,
                napo_use_reference=self.args.napo_use_reference,
            )
            loss = loss + output.losses.mean() * weight
            first_output = first_output or output

        if mode == "train" and not torch.isfinite(loss).all():
            # Stop before the optimizer writes NaN into the adapter (a NaN loss can be logged as 0.0 by the averaging
            # of metrics, and every later step then trains a corrupted model).
            raise FloatingPointError(
                f"Non-finite training loss ({loss.item()}) at step {self.state.global_step + 1}: the adapter was not "
                "updated with it. Check the rows' log-probs and scores (`rejected_scores`, reference columns) for "
                "NaN/inf and the learning rate."
            )
        if mode == "train":
            # Tokens actually fed to the model (padding excluded), summed over processes, cumulative as in TRL.
            tokens = (inputs["segment_ids"] >= 0).sum() if "segment_ids" in inputs else inputs["attention_mask"].sum()
            self._total_train_tokens += int(self.accelerator.gather(tokens.reshape(1)).sum().item())
        self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        if ref_logps is None:  # reference-free: rewards are the policy log-probs themselves
            ref_chosen, ref_rejected = torch.zeros_like(chosen_logps), torch.zeros_like(rejected_logps)
        if first_output is not None:
            self._log_batch_metrics(
                mode, chosen_logps, rejected_logps, ref_chosen, ref_rejected, negative_mask, first_output
            )
        else:  # SFT alone: no negatives, no rewards
            mean_chosen = self.accelerator.gather(chosen_logps.detach().mean().reshape(1)).mean().item()
            self._metrics[mode]["logps/chosen"].append(mean_chosen)
        if return_outputs:
            return loss, {"logps": logps.detach()}
        return loss

    def _needs_reference(self, inputs) -> bool:
        for loss_type in self.loss_types:
            if LOSS_SPECS[loss_type].reference_free:  # SFT's NLL, MPPO's raw probabilities
                continue
            if loss_type != "napo" or self.args.napo_use_reference:
                return True
        # NAPO's confidence score falls back to the reference's probability of each negative.
        return "napo" in self.loss_types and "rejected_scores" not in inputs

    # ------------------------------------------------------------------ NAPO
    def _share_in_batch_negatives(self, inputs):
        """Add answers of other rows of the global batch as negatives, then pack the batch for the forward pass."""
        prompts, answers = unpack_token_tensors(inputs)
        embeddings = inputs.get("embedding")
        local = {
            "answers": answers,
            "row_index": inputs["row_index"].tolist(),
            "embedding": None if embeddings is None else embeddings.float().cpu().tolist(),
        }
        # One object per process, in process order: every process sees the same global batch.
        gathered = gather_object([local])
        offset = sum(len(part["answers"]) for part in gathered[: self.accelerator.process_index])
        global_embeddings = None
        if self.args.in_batch_selection == "similarity":
            if any(part["embedding"] is None for part in gathered):
                raise ValueError("`in_batch_selection='similarity'` needs an `embedding` column in the dataset.")
            global_embeddings = np.array([vec for part in gathered for vec in part["embedding"]], dtype=np.float64)
        extended = share_in_batch_negatives(
            [a for part in gathered for a in part["answers"]],
            range(offset, offset + len(answers)),
            fraction=self.args.in_batch_fraction,
            selection=self.args.in_batch_selection,
            embeddings=global_embeddings,
            include_chosen=self.args.in_batch_share_chosen,
            max_negatives=self.args.max_negatives,
            seed=self.data_collator.seed,
            step=self.state.global_step,
            row_ids=[r for part in gathered for r in part["row_index"]],
        )
        batch = pack_answers(
            prompts,
            extended,
            self.processing_class.pad_token_id,
            layout=self.args.layout,
            pad_to_multiple_of=self.data_collator.pad_to_multiple_of,
        )
        own = torch.zeros_like(batch["answer_mask"][:, 1:])
        for b, row in enumerate(answers):
            own[b, : len(row) - 1] = True
        batch["own_negative_mask"] = own
        batch["num_shared"] = torch.tensor([len(e) - len(a) for e, a in zip(extended, answers)], dtype=torch.float)
        if "rejected_scores" in inputs:
            scores = torch.zeros(own.shape)
            scores[:, : inputs["rejected_scores"].size(1)] = inputs["rejected_scores"].cpu()
            batch["rejected_scores"] = scores
        batch["row_index"] = inputs["row_index"].cpu()
        device = self.accelerator.device
        return {key: value.to(device) for key, value in batch.items()}

    def _napo_margin(self, mode, inputs, ref_rejected, rejected_token_counts) -> torch.Tensor:
        """NAPO's γ = γ0·(1 − α·(M_b − M)), with M_b and M reduced over all processes (M updated before the loss)."""
        with torch.no_grad():
            if "rejected_scores" in inputs:
                # A teacher's scores exist only for each row's own negatives, not for shared ones.
                confidence = inputs["rejected_scores"].float()
                mask = inputs.get("own_negative_mask", inputs["answer_mask"][:, 1:])
            else:
                # The reference's per-token probability of the negative (geometric mean), in [0, 1] like a score.
                confidence = torch.exp(ref_rejected.float() / rejected_token_counts.clamp(min=1))
                mask = inputs["answer_mask"][:, 1:]
            local = torch.stack([(confidence * mask).sum(), mask.float().sum()])
            total, count = self.accelerator.gather(local.unsqueeze(0)).sum(dim=0).tolist()
        state = self._napo_state
        batch_mean = total / count if count > 0 else (state.running_mean or 0.0)
        running_mean = state.update(batch_mean) if mode == "train" else (state.running_mean or batch_mean)
        gamma = napo_margin(self.args.napo_gamma0, self.args.napo_alpha, batch_mean, running_mean)
        metrics = self._metrics[mode]
        metrics["napo/gamma"].append(float(gamma))
        metrics["napo/batch_mean"].append(batch_mean)
        metrics["napo/running_mean"].append(running_mean)
        if "num_shared" in inputs:
            shared = self.accelerator.gather(inputs["num_shared"].float()).mean().item()
            metrics["in_batch/shared_negatives"].append(shared)
        return gamma.to(inputs["answer_mask"].device)

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.is_world_process_zero():
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            with open(os.path.join(folder, TRAINER_STATE_FILE), "w") as f:
                json.dump({"num_tokens": self._total_train_tokens}, f)
            if "napo" in self.loss_types:
                with open(os.path.join(folder, NAPO_STATE_FILE), "w") as f:
                    json.dump(self._napo_state.state_dict(), f)

    def _load_rng_state(self, checkpoint):
        # Called by `Trainer` when resuming from `checkpoint` (at the step it resumes from, before training it): restore
        # the token count and NAPO's running mean with the RNG states.
        super()._load_rng_state(checkpoint)
        if not checkpoint:
            return
        path = os.path.join(checkpoint, TRAINER_STATE_FILE)
        if os.path.exists(path):
            with open(path) as f:
                self._total_train_tokens = int(json.load(f)["num_tokens"])
        path = os.path.join(checkpoint, NAPO_STATE_FILE)
        if os.path.exists(path):
            with open(path) as f:
                self._napo_state.load_state_dict(json.load(f))

    def _log_batch_metrics(self, mode, chosen_logps, rejected_logps, ref_chosen, ref_rejected, mask, output):
        """Log TRL's reward metrics (over valid negatives) and DynamicPO's, gathered across processes in one call."""
        with torch.no_grad():
            mask_f = mask.float()
            has_negative = mask.any(dim=1).float()
            chosen_rewards = self.beta * (chosen_logps - ref_chosen).detach()
            rejected_rewards = self.beta * (rejected_logps - ref_rejected).detach()
            neg_count = mask_f.sum(dim=1)
            mean_rejected = (rejected_rewards * mask_f).sum(dim=1) / neg_count.clamp(min=1)
            max_rejected = rejected_rewards.masked_fill(~mask, float("-inf")).max(dim=1).values
            beta_valid = output.beta.float()
            stats = torch.stack(
                [
                    chosen_rewards.sum(),
                    (rejected_rewards * mask_f).sum(),
                    ((chosen_rewards > max_rejected).float() * has_negative).sum(),
                    ((chosen_rewards - mean_rejected) * has_negative).sum(),
                    chosen_logps.detach().sum(),
                    (rejected_logps.detach() * mask_f).sum(),
                    (output.boundary_mask.float() * mask_f).sum(),
                    (output.fallback.float() * has_negative).sum(),
                    (beta_valid * mask_f).sum(),
                    output.nonboundary_grad_share.detach().float() * has_negative.sum(),
                    torch.tensor(float(chosen_logps.size(0)), device=chosen_logps.device),
                    mask_f.sum(),
                    has_negative.sum(),
                ]
            ).float()
            extremes = torch.stack(
                [
                    beta_valid.masked_fill(~mask, float("inf")).min(),
                    -beta_valid.masked_fill(~mask, float("-inf")).max(),
                ]
            ).float()
            stats = self.accelerator.gather(stats.unsqueeze(0)).sum(dim=0).tolist()
            extremes = self.accelerator.gather(extremes.unsqueeze(0)).min(dim=0).values.tolist()
        (r_c, r_r, acc, margin, lp_c, lp_r, boundary, fallback, beta_sum, grad_share, rows, negatives, valid_rows) = (
            stats
        )
        metrics = self._metrics[mode]
        metrics["rewards/chosen"].append(r_c / max(rows, 1))
        metrics["rewards/rejected"].append(r_r / max(negatives, 1))
        metrics["rewards/accuracies"].append(acc / max(valid_rows, 1))
        metrics["rewards/margins"].append(margin / max(valid_rows, 1))
        metrics["logps/chosen"].append(lp_c / max(rows, 1))
        metrics["logps/rejected"].append(lp_r / max(negatives, 1))
        metrics["num_negatives"].append(negatives / max(rows, 1))
        metrics["dynamicpo/boundary_fraction"].append(boundary / max(negatives, 1))
        metrics["dynamicpo/fallback_rate"].append(fallback / max(valid_rows, 1))
        metrics["dynamicpo/beta_mean"].append(beta_sum / max(negatives, 1))
        if math.isfinite(extremes[0]):
            metrics["dynamicpo/beta_min"].append(extremes[0])
            metrics["dynamicpo/beta_max"].append(-extremes[1])
        metrics["dynamicpo/nonboundary_grad_share"].append(grad_share / max(valid_rows, 1))

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys: list[str] | None = None):
        # There are no logits to return for multi-negative rows; evaluation reports the loss and the logged metrics.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs, return_outputs=False)
        return loss.detach(), None, None

    # ------------------------------------------------------------------ model card
    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None, tags=None, **kwargs):
        """Write this library's model card (tags, the loss and its hyperparameters, citations) to `output_dir`.

        TRL's hook (called by `save_model`, `push_to_hub` and each checkpoint): the card is rendered by
        [`~trl_dynamicpo.model_card.build_model_card`] from this package's template instead of TRL's `lm_model_card.md`.
        """
        if not self.is_world_process_zero():
            return
        from .model_card import build_model_card

        base = get_config_model_id(self.model.config)
        base_model = base if base and not os.path.isdir(base) else None
        extra_tags = [tags] if isinstance(tags, str) else list(tags or [])
        card = build_model_card(
            model_name=model_name or Path(self.args.output_dir).name,
            base_model=base_model,
            loss_type=list(self.loss_types),
            hyperparameters=self.loss_hyperparameters(),
            dataset_name=dataset_name,
            hub_model_id=self.hub_model_id if self.args.push_to_hub else None,
            tags=extra_tags,
            library_name="peft" if is_peft_model(self.model) else "transformers",
            **kwargs,
        )
        card.save(os.path.join(self.args.output_dir, "README.md"))

    def loss_hyperparameters(self) -> dict[str, Any]:
        """The loss settings that define a run, for model cards and logs ([`DynamicPOConfig.card_hyperparameters`])."""
        return self.args.card_hyperparameters()


def _locate_in_trunk_cache(row: dict[str, Any], cache: TrunkCache) -> dict[str, Any]:
    """`Dataset.map` function: the cached row and answer indices of a tokenized row (checks that they match)."""
    index = int(row["row_index"])
    answers = [row["chosen_ids"], *row["rejected_ids"]]
    fields = ["chosen", *(f"rejected[{k}]" for k in range(len(row["rejected_ids"])))]
    return {"trunk_row": index, "trunk_answers": cache.locate(index, row["prompt_ids"], answers, fields)}


def _mark_row(row: dict[str, Any], item_tokens: ItemTokens) -> dict[str, Any]:
    """`Dataset.map` function: the prompt with an item token after each title line, and the marked titles."""
    prompt, titles = item_tokens.mark([row["prompt"]])
    return {"prompt": prompt[0], "item_titles": titles[0]}


def unwrap_causal_lm_config(model):
    from .model_utils import unwrap_causal_lm

    return unwrap_causal_lm(model).config.get_text_config()


def load_item_tokens_state(folder) -> dict | None:
    from safetensors.torch import load_file

    from .item_tokens import WEIGHTS_FILE

    path = Path(folder) / WEIGHTS_FILE
    return load_file(str(path)) if path.is_file() else None


def _progress(iterable, desc):
    from accelerate.utils import tqdm

    return tqdm(iterable=iterable, desc=desc, disable=bool(os.environ.get("TQDM_DISABLE", "")))


def _to_dynamicpo_config(args: DPOConfig) -> DynamicPOConfig:
    """Convert a `DPOConfig` (a TRL user's config) into a `DynamicPOConfig` with the same values."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(DPOConfig) if f.init}
    # Fields TrainingArguments resolves in __post_init__ must be passed as given, not as resolved objects.
    for name in ("accelerator_config", "fsdp_config", "deepspeed"):
        if name in values and not isinstance(values[name], dict | str | type(None)):
            values.pop(name)
    logger.warning(
        "Converting a DPOConfig to a DynamicPOConfig; pass a DynamicPOConfig to choose multi-negative losses."
    )
    return DynamicPOConfig(**values)


def _load_tokenizer(model, args: DynamicPOConfig):
    if isinstance(model, str):
        kwargs = {k: v for k, v in (args.model_init_kwargs or {}).items() if k in ("revision", "gguf_file")}
        return AutoTokenizer.from_pretrained(model, trust_remote_code=args.trust_remote_code, **kwargs)
    return AutoTokenizer.from_pretrained(get_config_model_id(model.config), trust_remote_code=args.trust_remote_code)
