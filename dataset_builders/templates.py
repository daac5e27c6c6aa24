"""Prompt templates per domain (movies, music, books, generic items).

List format (the choice documented in every dataset card): the history and the candidates are written ONE TITLE PER
LINE, verbatim, with no quotes, numbers or bullets. Titles are whitespace-normalized by the pipeline (no newline can
occur inside a title) and unique, so every line is exactly one title and no title can be confused with another, even
titles containing commas or quotes ("Sex, Lies, and Videotape (1989)"). The prompt ends with "Answer:" and no trailing
space; the answer is the bare title (the trainer adds the separating space).

Placeholders: `{history}`, `{candidates}`, `{num_candidates}`. They are substituted in a single pass, so a title that
happens to contain "{candidates}" is left alone.
"""

from __future__ import annotations

import json
import re
from pathlib import Path


_PLACEHOLDER = re.compile(r"\{(history|candidates|num_candidates)\}")

# The first template of each domain is the fixed default; further ones are rotated with `templates=N` (S-DPO picks one
# of ~10 templates per example at random).
DOMAIN_TEMPLATES: dict[str, list[str]] = {
    "movies": [
        "This user has watched these movies recently:\n{history}\nPredict the next movie this user will watch. "
        "Choose the answer from the following {num_candidates} movies:\n{candidates}\nAnswer:",
        "A user watched the following movies, oldest first:\n{history}\nWhich of these {num_candidates} movies will "
        "the user watch next?\n{candidates}\nAnswer:",
        "Recently watched by this person:\n{history}\nPick the movie this person is most likely to watch next from "
        "these candidates:\n{candidates}\nAnswer:",
        "Here are the movies a user has seen lately:\n{history}\nRecommend the next movie for this user, answering "
        "with one title from this list of {num_candidates} movies:\n{candidates}\nAnswer:",
        "Given this viewing history:\n{history}\nwhich movie comes next? Options:\n{candidates}\nAnswer:",
    ],
    "music": [
        "This user has listened to these artists recently:\n{history}\nPredict the next artist this user will listen "
        "to. Choose the answer from the following {num_candidates} artists:\n{candidates}\nAnswer:",
        "A listener played music from these artists, oldest first:\n{history}\nWhich of these {num_candidates} "
        "artists will the listener play next?\n{candidates}\nAnswer:",
        "Recently listened to by this person:\n{history}\nPick the band or artist this person is most likely to "
        "listen to next from these candidates:\n{candidates}\nAnswer:",
        "Here are the artists a user has enjoyed lately:\n{history}\nRecommend the next artist for this user, "
        "answering with one name from this list of {num_candidates} artists:\n{candidates}\nAnswer:",
        "Given this listening history:\n{history}\nwhich artist comes next? Options:\n{candidates}\nAnswer:",
    ],
    "books": [
        "This user has read these books recently:\n{history}\nPredict the next book this user will read. Choose the "
        "answer from the following {num_candidates} books:\n{candidates}\nAnswer:",
        "A reader finished the following books, oldest first:\n{history}\nWhich of these {num_candidates} books will "
        "the reader pick up next?\n{candidates}\nAnswer:",
        "Recently read by this person:\n{history}\nPick the book this person is most likely to read next from these "
        "candidates:\n{candidates}\nAnswer:",
        "Here are the books a user has read lately:\n{history}\nRecommend the next book for this user, answering "
        "with one title from this list of {num_candidates} books:\n{candidates}\nAnswer:",
        "Given this reading history:\n{history}\nwhich book comes next? Options:\n{candidates}\nAnswer:",
    ],
    "items": [
        "This user has interacted with these items recently:\n{history}\nPredict the next item this user will "
        "interact with. Choose the answer from the following {num_candidates} items:\n{candidates}\nAnswer:",
        "A user interacted with the following items, oldest first:\n{history}\nWhich of these {num_candidates} "
        "items comes next?\n{candidates}\nAnswer:",
        "Recent items of this user:\n{history}\nPick the item this user is most likely to choose next from these "
        "candidates:\n{candidates}\nAnswer:",
    ],
}


class PromptTemplate:
    """A validated template, pre-split into literal text and placeholders for fast rendering.

    Args:
        text (`str`): template with `{history}` and `{candidates}` (and optionally `{num_candidates}`), ending with
            `"Answer:"`.

    Example:
    ```python
    >>> t = PromptTemplate("Seen:\\n{history}\\nPick one of {num_candidates}:\\n{candidates}\\nAnswer:")
    >>> print(t.render(["A (1995)", "B, The (1990)"], ["C", "D"]))
    Seen:
    A (1995)
    B, The (1990)
    Pick one of 2:
    C
    D
    Answer:
    ```
    """

    def __init__(self, text: str):
        if not isinstance(text, str):
            raise ValueError(f"a template must be a string, got {type(text).__name__}")
        for needed in ("{history}", "{candidates}"):
            if needed not in text:
                raise ValueError(f"template lacks {needed}: {text!r}")
        if not text.endswith("Answer:"):
            raise ValueError(f"template must end with 'Answer:' (no trailing space): {text!r}")
        self.text = text
        # A str.format pattern with the literal braces escaped: values are never parsed, so titles may hold braces.
        parts = _PLACEHOLDER.split(text)  # literal, name, literal, name, ..., literal
        self._format = "".join(
            part.replace("{", "{{").replace("}", "}}") if i % 2 == 0 else "{" + part + "}"
            for i, part in enumerate(parts)
        )

    def render(self, history: list[str], candidates: list[str]) -> str:
        return self._format.format(
            history="\n".join(history), candidates="\n".join(candidates), num_candidates=len(candidates)
        )


def resolve_templates(templates: int | list[str] | str, domain: str) -> list[PromptTemplate]:
    """Turn the `templates` parameter into a list of [`PromptTemplate`].

    Args:
        templates (`int`, `list[str]` or `str`): the number N of built-in templates of `domain` to use (the first N),
            a list of template strings, or the path of a JSON file holding such a list.
        domain (`str`): one of `DOMAIN_TEMPLATES`.
    """
    if isinstance(templates, str) and not templates.strip().isdigit():
        path = Path(templates)
        try:
            templates = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"cannot read templates from {path}: {error}") from None
        if not isinstance(templates, list) or not templates:
            raise ValueError(f"{path} must hold a non-empty JSON list of template strings")
    if isinstance(templates, str):
        templates = int(templates)
    if isinstance(templates, int):
        builtin = DOMAIN_TEMPLATES[domain]
        if not 1 <= templates <= len(builtin):
            raise ValueError(f"templates must be between 1 and {len(builtin)} for domain {domain!r}, got {templates}")
        templates = builtin[:templates]
    if not templates:
        raise ValueError("templates must not be empty")
    return [PromptTemplate(text) for text in templates]
