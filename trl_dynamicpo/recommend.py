"""Recommendations from a published adapter: `Recommender.from_pretrained(repo_or_path).recommend(history, candidates)`.

A trained adapter answers prompts written in the template its dataset used. The recipes save that template, the
dataset's item table and the evaluation settings next to the adapter (`recommender.json`, [`RecommenderConfig`]; the
item titles in `item_titles.json`), and [`Recommender`] rebuilds every prompt exactly as training did:

- `method="rank"` (default): every candidate is scored by the summed log-probability of its title after the prompt
  ([`~trl_dynamicpo.evaluation.score_candidates`], the ranking protocol), the top `k` are returned;
- `method="generate"`: decoding restricted to the candidates ([`~trl_dynamicpo.evaluation.generate_candidates`]; greedy
  for `k=1`, beam search for a top-`k` list), or, with `constrained=False`, the model's free greedy answer.

Models trained with hybrid item tokens ([`trl_dynamicpo.item_tokens`]) read the item-embedding table saved with the
adapter (`item_embeddings.parquet`); with `item_features="item+state"` each user's teacher state is passed as
`user_states=`.

Example:

```python
from trl_dynamicpo.recommend import Recommender

recommender = Recommender.from_pretrained("my-user/ml100k-dynamicpo")
recommender.recommend(["Heat (1995)", "Fargo (1996)"], ["Casino (1995)", "Babe (1995)", "Jumanji (1995)"], k=2)
# [Recommendation(item='Casino (1995)', score=-4.1), Recommendation(item='Babe (1995)', score=-6.3)]
```

Command line:

```bash
python -m trl_dynamicpo.recommend --adapter my-user/ml100k-dynamicpo --history "Heat (1995)" "Fargo (1996)" \\
    --candidates "Casino (1995)" "Babe (1995)" "Jumanji (1995)" --k 2
```
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple


CONFIG_FILE = "recommender.json"
ITEM_TITLES_FILE = "item_titles.json"
METHODS = ("rank", "generate")


class Recommendation(NamedTuple):
    """One recommended item: its title and its score (summed log-probability; NaN for a free-text answer)."""

    item: str
    score: float


@dataclass
class RecommenderConfig:
    """How to prompt an adapter as it was trained, saved next to it as `recommender.json`.

    Example:

    ```python
    >>> config = RecommenderConfig(template="Seen:\\n{history}\\nPick one of {num_candidates}:\\n{candidates}\\nAnswer:")
    >>> print(config.prompt(["Heat (1995)"], ["Fargo (1996)", "Babe (1995)"]))
    Seen:
    Heat (1995)
    Pick one of 2:
    Fargo (1996)
    Babe (1995)
    Answer:
    ```
    """

    template: str = field(
        metadata={
            "help": "The prompt template of the training data (`{history}`, `{candidates}`, `{num_candidates}`; one "
            "title per line; ends with 'Answer:'). With several templates (rotated per row), the first one."
        }
    )
    templates: list[str] = field(
        default_factory=list, metadata={"help": "Every template of the training data, the first one used here."}
    )
    domain: str | None = field(default=None, metadata={"help": "The data's domain (movies, music, books, items)."})
    dataset: str | None = field(
        default=None, metadata={"help": "The training dataset: a builder name, a Hub dataset id or a folder name."}
    )
    item_table: str | None = field(
        default=None,
        metadata={
            "help": "Where the dataset's item table comes from (e.g. the dataset id and its `items` config); its "
            "titles are saved in item_titles.json and every history and candidate must be one of them."
        },
    )
    separator: str = field(default=" ", metadata={"help": "Text between the prompt and an answer (the trainer's)."})
    max_prompt_length: int = field(
        default=1024, metadata={"help": "Prompt token budget of the evaluation; longer prompts are refused."}
    )
    max_length: int | None = field(
        default=None,
        metadata={"help": "Training budget of prompt + answer tokens; a prompt that leaves no room is refused."},
    )
    max_history: int | None = field(default=None, metadata={"help": "History items per training prompt."})
    num_candidates: int | None = field(default=None, metadata={"help": "Candidates per training prompt."})
    score: str = field(default="sum", metadata={"help": "Ranking score: 'sum' or 'mean' of the token log-probs."})
    format_version: int = field(default=1, metadata={"help": "Version of this file's format."})

    def __post_init__(self):
        from dataset_builders.templates import PromptTemplate

        PromptTemplate(self.template)  # validates the placeholders and the "Answer:" ending
        if not self.templates:
            self.templates = [self.template]

    def prompt(self, history: Sequence[str], candidates: Sequence[str]) -> str:
        """The prompt of one user, rendered as the dataset builders render it (one title per line)."""
        from dataset_builders.templates import PromptTemplate

        return PromptTemplate(self.template).render(list(history), list(candidates))

    def save(self, folder: str | os.PathLike, item_titles: Sequence[str] | None = None) -> Path:
        """Write `recommender.json` (and `item_titles.json` with `item_titles`) to `folder`; returns the config's path."""
        from .io_utils import write_json

        folder = Path(folder)
        if item_titles is not None:
            write_json(folder / ITEM_TITLES_FILE, list(item_titles))
        return write_json(folder / CONFIG_FILE, dataclasses.asdict(self))

    @classmethod
    def from_folder(cls, folder: str | os.PathLike) -> RecommenderConfig | None:
        """The config saved in `folder`, or None when there is none."""
        path = Path(folder) / CONFIG_FILE
        if not path.is_file():
            return None
        values = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


class Recommender:
    """A trained recommender LM with the prompt and settings of its training: top-k items for users.

    Build it with [`Recommender.from_pretrained`] (an adapter folder or Hub repo id), or from a loaded model.

    Args:
        model: The causal LM (`PeftModel` or `PreTrainedModel`), in eval mode.
        tokenizer: Its tokenizer.
        config ([`RecommenderConfig`]): The template and settings of its training.
        item_titles (`Sequence[str]`, *optional*): The dataset's item titles; when given, unknown items are refused.
        item_table ([`~trl_dynamicpo.item_tokens.ItemEmbeddingTable`], *optional*): For a model with hybrid item
            tokens, the item-embedding table it was trained with.
    """

    def __init__(self, model, tokenizer, config: RecommenderConfig, item_titles=None, item_table=None):
        from .item_tokens import ItemTokens, get_item_tokens

        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.item_titles = frozenset(item_titles) if item_titles is not None else None
        self.item_tokens = None
        if get_item_tokens(model) is not None:
            if item_table is None:
                raise ValueError(
                    "The model uses hybrid item tokens but no item-embedding table was given: save the adapter with "
                    "its table (item_embeddings.parquet, `save_item_tokens(model, folder, table=...)`) or pass "
                    "`item_table=`."
                )
            self.item_tokens = ItemTokens.for_model(model, item_table)
            if self.item_titles is None:
                self.item_titles = frozenset(item_table.titles)

    @classmethod
    def from_pretrained(
        cls,
        repo_id_or_path: str | os.PathLike,
        base_model: str | None = None,
        *,
        template: str | None = None,
        revision: str | None = None,
        token: str | None = None,
        **kwargs,
    ) -> Recommender:
        """Load an adapter (Hub repo id or folder) with its `recommender.json`, item titles and item table.

        Args:
            repo_id_or_path (`str` or `os.PathLike`): Hub repo id of the adapter, or its folder.
            base_model (`str`, *optional*): Base model, if not the one the adapter config names.
            template (`str`, *optional*): Prompt template, for an adapter saved without `recommender.json` (it must be
                the template of its training data).
            revision (`str`, *optional*): Branch, tag or commit of the adapter repo.
            token (`str`, *optional*): Hub token, for private repos.
            **kwargs: Passed to [`~trl_dynamicpo.hub.load_recommender`] (`dtype`, `device`, `gguf_file`, ...).

        Raises:
            FileNotFoundError: As `load_recommender`, or when the adapter has no `recommender.json` and no `template`
                is given.

        Example:

        ```python
        recommender = Recommender.from_pretrained("outputs/quickstart/final")
        ```
        """
        from .hub import load_recommender, resolve_adapter_folder
        from .item_tokens import ITEM_TABLE_FILE, ItemEmbeddingTable, get_item_tokens

        local_files_only = bool(kwargs.pop("local_files_only", False))
        folder = resolve_adapter_folder(
            repo_id_or_path, revision=revision, token=token, local_files_only=local_files_only
        )
        config = RecommenderConfig.from_folder(folder)
        if template is not None:
            config = dataclasses.replace(config, template=template) if config else RecommenderConfig(template)
        if config is None:
            raise FileNotFoundError(
                f"{repo_id_or_path} has no {CONFIG_FILE}, so the prompt template of its training is unknown: train and "
                "publish it with the recipes (recipes/run.py), write one with `RecommenderConfig(template=...).save("
                "folder)`, or pass `template=` (the template of its training data)."
            )
        model, tokenizer = load_recommender(
            folder, base_model, token=token, local_files_only=local_files_only, **kwargs
        )
        titles_path = Path(folder) / ITEM_TITLES_FILE
        titles = json.loads(titles_path.read_text(encoding="utf-8")) if titles_path.is_file() else None
        table = None
        if get_item_tokens(model) is not None and (Path(folder) / ITEM_TABLE_FILE).is_file():
            table = ItemEmbeddingTable.from_folder(folder)
        return cls(model, tokenizer, config, item_titles=titles, item_table=table)

    # ------------------------------------------------------------------ input checks
    def _check_user(self, user: int, history: Sequence[str], candidates: Sequence[str]) -> None:
        where = f"User {user}: "
        if isinstance(history, str) or isinstance(candidates, str):
            raise TypeError(f"{where}`history` and `candidates` must be lists of titles, not one string.")
        if len(history) == 0:
            raise ValueError(
                f"{where}the history is empty: the model needs at least one item the user interacted with."
            )
        if len(candidates) == 0:
            raise ValueError(f"{where}there are no candidates to recommend from.")
        seen: dict[str, int] = {}
        for position, title in enumerate(candidates):
            if title in seen:
                raise ValueError(
                    f"{where}duplicate candidate {title!r} (candidates[{seen[title]}] and candidates[{position}]): "
                    "each candidate must appear once."
                )
            seen[title] = position
        for name, titles in (("history", history), ("candidates", candidates)):
            for position, title in enumerate(titles):
                if not isinstance(title, str) or not title.strip() or "\n" in title:
                    raise ValueError(
                        f"{where}{name}[{position}] = {title!r} is not a title (a non-empty string on one line)."
                    )
                if self.item_titles is not None and title not in self.item_titles:
                    close = difflib.get_close_matches(title, list(self.item_titles), n=1, cutoff=0.5)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    source = self.config.item_table or self.config.dataset or "the training data"
                    raise ValueError(
                        f"{where}unknown item {title!r} in {name}[{position}]: it is not among the "
                        f"{len(self.item_titles):,} items of {source} (titles are spelled exactly as in the item "
                        f"table).{hint}"
                    )

    def _check_length(self, user: int, prompt: str, candidates: Sequence[str]) -> None:
        """A prompt the model cannot read whole: truncation would silently drop history or candidates."""
        from .data import tokenize_prompt_answers

        prompt_ids, answer_ids = tokenize_prompt_answers(
            self.tokenizer, prompt, list(candidates), separator=self.config.separator
        )
        longest = max(len(ids) for ids in answer_ids)
        budget = self.config.max_prompt_length
        if self.config.max_length is not None:
            budget = min(budget, self.config.max_length - longest)
        if len(prompt_ids) > budget:
            trained = f" (trained with {self.config.num_candidates})" if self.config.num_candidates else ""
            raise ValueError(
                f"User {user}: the prompt with {len(candidates)} candidates{trained} is {len(prompt_ids)} tokens, more "
                f"than the {budget} the model reads (max_prompt_length={self.config.max_prompt_length}, "
                f"max_length={self.config.max_length}): pass fewer candidates or a shorter history."
            )

    # ------------------------------------------------------------------ the call
    def prompts(self, histories: Sequence[Sequence[str]], candidates: Sequence[Sequence[str]]) -> list[str]:
        """The checked prompts of several users, as training wrote them."""
        if len(histories) != len(candidates):
            raise ValueError(f"Got {len(histories)} histories and {len(candidates)} candidate lists: one per user.")
        prompts = []
        for user, (history, cands) in enumerate(zip(histories, candidates)):
            self._check_user(user, history, cands)
            prompt = self.config.prompt(history, cands)
            self._check_length(user, prompt, cands)
            prompts.append(prompt)
        return prompts

    def recommend(
        self,
        history: Sequence[str] | Sequence[Sequence[str]],
        candidates: Sequence[str] | Sequence[Sequence[str]],
        k: int = 10,
        method: str = "rank",
        constrained: bool = True,
        *,
        user_states: Sequence[Sequence[float]] | Sequence[float] | None = None,
        batch_size: int = 8,
        show_progress: bool = False,
    ) -> list[Recommendation] | list[list[Recommendation]]:
        """The top-`k` candidates for one user (a list of titles) or for many (a list of lists), best first.

        Args:
            history (`list[str]` or `list[list[str]]`): The items the user interacted with, oldest first, or one such
                list per user.
            candidates (`list[str]` or `list[list[str]]`): The items to choose from (per user).
            k (`int`, defaults to `10`): How many items to return (at most the number of candidates).
            method (`str`, defaults to `"rank"`): `"rank"` scores every candidate (exact top-k); `"generate"` decodes.
            constrained (`bool`, defaults to `True`): With `method="generate"`, decode only candidate titles (greedy
                for `k=1`, beam search with `k` beams otherwise). `False` returns the model's free greedy answer (one
                text, score NaN), which may name no candidate.
            user_states (*optional*): The teacher's state of each user, for models with
                `item_features="item+state"`.
            batch_size (`int`, defaults to `8`): Users per forward pass.
            show_progress (`bool`, defaults to `False`): Show a tqdm bar.

        Returns:
            `list[Recommendation]` (one user) or one such list per user: `(item, score)` pairs, best first; the score
            is the summed log-probability of the title after the prompt (EOS included).

        Raises:
            ValueError: Naming the user and the problem: an empty history, no or duplicate candidates, an unknown item
                (when the item table is known), a prompt longer than the model reads, a missing user state.

        Example:

        ```python
        recommender.recommend(["Heat (1995)", "Fargo (1996)"], ["Casino (1995)", "Babe (1995)"], k=1)
        ```
        """
        from .evaluation import generate_answers, generate_candidates, score_candidates
        from .evaluation.config import _check_choice

        _check_choice("method", method, METHODS)
        if k < 1:
            raise ValueError(f"`k` must be at least 1, got {k}.")
        single = isinstance(history, Sequence) and not isinstance(history, str) and _is_titles(history)
        histories = [history] if single else list(history)
        candidate_lists = [candidates] if single else list(candidates)
        if single and user_states is not None:
            user_states = [user_states]
        prompts = self.prompts(histories, candidate_lists)
        item_tokens = self._item_tokens(user_states, len(prompts))
        common = {
            "batch_size": batch_size,
            "max_prompt_length": self.config.max_prompt_length,
            "show_progress": show_progress,
            "item_tokens": item_tokens,
            "user_states": user_states,
        }
        if method == "rank":
            scores = score_candidates(
                self.model, self.tokenizer, prompts, candidate_lists, score=self.config.score,
                separator=self.config.separator, **common,
            )  # fmt: skip
            results = []
            for row, cands in zip(scores, candidate_lists):
                order = sorted(range(len(cands)), key=lambda i: -row[i])  # stable: ties keep the given order
                results.append([Recommendation(cands[i], float(row[i])) for i in order[:k]])
        elif constrained:
            answers = generate_candidates(
                self.model, self.tokenizer, prompts, candidate_lists, k=k, separator=self.config.separator, **common
            )
            results = [[Recommendation(c[i], s) for i, s in row] for row, c in zip(answers, candidate_lists)]
        else:
            texts = generate_answers(self.model, self.tokenizer, prompts, **common)
            results = [[Recommendation(text.strip(), math.nan)] for text in texts]
        return results[0] if single else results

    def _item_tokens(self, user_states, num_users: int):
        if self.item_tokens is None:
            return None
        if self.item_tokens.features == "item+state":
            if user_states is None:
                raise ValueError(
                    "This model uses hybrid item tokens with item_features='item+state': pass each user's teacher "
                    "state as `user_states=` (the `embedding` column of a `--teacher` dataset build)."
                )
            if len(user_states) != num_users:
                raise ValueError(f"Got {len(user_states)} user states for {num_users} users: one per user.")
        return self.item_tokens


def _is_titles(values: Sequence[Any]) -> bool:
    """Whether a `history` argument is one user's list of titles (rather than one list per user)."""
    return len(values) == 0 or isinstance(values[0], str)


def main(argv: list[str] | None = None) -> int:
    """`python -m trl_dynamicpo.recommend --adapter REPO --history ... --candidates ...`: print the ranked list."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m trl_dynamicpo.recommend",
        description="Rank candidate items for one user with a trained recommender (an adapter folder or Hub repo).",
    )
    parser.add_argument("--adapter", required=True, help="Hub repo id or local folder of the adapter.")
    parser.add_argument("--history", nargs="+", required=True, help="Titles the user interacted with, oldest first.")
    parser.add_argument("--candidates", nargs="+", required=True, help="Titles to rank.")
    parser.add_argument("--k", type=int, default=10, help="How many items to print (default 10).")
    parser.add_argument("--method", choices=METHODS, default="rank", help="rank (default) or generate.")
    parser.add_argument("--free", action="store_true", help="With --method generate: unconstrained decoding.")
    parser.add_argument("--base_model", help="Base model, if not the one the adapter config names.")
    parser.add_argument("--revision", help="Branch, tag or commit of the adapter repo.")
    args = parser.parse_args(argv)
    try:
        recommender = Recommender.from_pretrained(args.adapter, args.base_model, revision=args.revision)
        ranked = recommender.recommend(
            args.history, args.candidates, k=args.k, method=args.method, constrained=not args.free
        )
    except (ValueError, FileNotFoundError, NotADirectoryError) as error:
        parser.exit(2, f"error: {error}\n")
    width = len(str(len(ranked)))
    for rank, (item, score) in enumerate(ranked, start=1):
        print(f"{rank:>{width}}. {item}\t{score:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
