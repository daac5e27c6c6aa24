"""`Recommender`: from a Hub id (loopback Hub) or a folder to a ranked list, prompted exactly as training did."""

import ast
import contextlib
import io
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from peft import LoraConfig, get_peft_model

from trl_dynamicpo.evaluation import generate_candidates, score_candidates
from trl_dynamicpo.hub import push_adapter_folder
from trl_dynamicpo.item_tokens import (
    ITEM_TABLE_FILE,
    ItemEmbeddingTable,
    ItemTokenProjector,
    ItemTokens,
    attach_item_tokens,
    item_token_id,
    save_item_tokens,
)
from trl_dynamicpo.model_card import build_model_card
from trl_dynamicpo.recommend import Recommendation, Recommender, RecommenderConfig, main

from .testing_utils import make_tiny_model, make_tokenizer


DOCS = Path(__file__).resolve().parents[1] / "docs" / "recommend.md"
TEMPLATE = "user has watched\n{history}\nchoose from the following {num_candidates} movies\n{candidates}\nAnswer:"
TITLES = ["heat", "fargo", "alien", "jaws", "rocky", "psycho", "star wars", "toy story", "up", "cars", "coco", "dune"]
USERS = [
    (["heat", "fargo"], ["alien", "jaws", "rocky", "star wars"]),
    (["toy story"], ["up", "cars", "coco", "brave"]),
    (["dune", "alien", "heat"], ["psycho", "jaws"]),
]


def _tokenizer():
    tokenizer = make_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": ["<item>"]})
    return tokenizer


def _adapter(base_folder, seed=0):
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_folder, dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(base, config).eval()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("base")
    tokenizer = _tokenizer()
    make_tiny_model(tokenizer, attn_implementation="sdpa").save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _save(model, folder, titles=(*TITLES, "brave"), **config):
    model.save_pretrained(folder)
    _tokenizer().save_pretrained(folder)
    RecommenderConfig(template=TEMPLATE, dataset="tiny-movies", **config).save(folder, item_titles=list(titles))
    return folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory, base):
    model = _adapter(base)
    return _save(model, tmp_path_factory.mktemp("adapter"))


def _expected(folder, users, k=10):
    """The ranking a user would compute by hand: the training prompt, `score_candidates`, sorted."""
    from trl_dynamicpo.hub import load_recommender

    model, tokenizer = load_recommender(folder)
    config = RecommenderConfig.from_folder(folder)
    prompts = [config.prompt(h, c) for h, c in users]
    scores = score_candidates(model, tokenizer, prompts, [c for _, c in users], show_progress=False)
    ranked = []
    for row, (_, cands) in zip(scores, users):
        order = np.argsort(-row[: len(cands)], kind="stable")[:k]
        ranked.append([Recommendation(cands[i], float(row[i])) for i in order])
    return ranked


def test_hub_round_trip_equals_local_scoring(hub_server, folder):
    repo_id = "tester/recommend-round-trip"
    push_adapter_folder(folder, repo_id)
    assert {"recommender.json", "item_titles.json"} <= set(hub_server.files(repo_id))
    recommender = Recommender.from_pretrained(repo_id)
    expected = _expected(folder, USERS)
    # Many users at once, and each one alone: the same lists, the same scores, as local scoring.
    assert recommender.recommend([h for h, _ in USERS], [c for _, c in USERS]) == expected
    for (history, cands), ranked in zip(USERS, expected):
        assert recommender.recommend(history, cands, k=2) == ranked[:2]
    assert recommender.prompts([USERS[0][0]], [USERS[0][1]])[0] == (
        "user has watched\nheat\nfargo\nchoose from the following 4 movies\nalien\njaws\nrocky\nstar wars\nAnswer:"
    )


def test_generate_is_constrained_to_the_candidates(folder):
    recommender = Recommender.from_pretrained(folder)
    prompts = recommender.prompts([h for h, _ in USERS], [c for _, c in USERS])
    beams = generate_candidates(
        recommender.model, recommender.tokenizer, prompts, [c for _, c in USERS], k=3, show_progress=False
    )
    for (history, cands), answers in zip(USERS, beams):
        top = recommender.recommend(history, cands, k=3, method="generate")
        assert [r.item for r in top] == [cands[i] for i, _ in answers] and len(set(r.item for r in top)) == len(top)
        (best,) = recommender.recommend(history, cands, k=1, method="generate")
        assert best.item in cands
    (free,) = recommender.recommend(*USERS[0], method="generate", constrained=False)
    assert isinstance(free.item, str) and np.isnan(free.score)


def test_cli_prints_the_ranked_list(folder, capsys):
    history, cands = USERS[0]
    assert main(["--adapter", str(folder), "--history", *history, "--candidates", *cands, "--k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    expected = _expected(folder, [USERS[0]], k=3)[0]
    assert lines == [f"{rank}. {item}\t{score:.4f}" for rank, (item, score) in enumerate(expected, start=1)]


def test_bad_input_names_the_problem(folder, tmp_path, base, capsys):
    recommender = Recommender.from_pretrained(folder)
    with pytest.raises(
        ValueError, match=r"User 0: unknown item 'fargo \(1996\)' in history\[1\].*Did you mean 'fargo'"
    ):
        recommender.recommend(["heat", "fargo (1996)"], ["alien", "jaws"])
    with pytest.raises(ValueError, match="User 1: the history is empty"):
        recommender.recommend([["heat"], []], [["alien"], ["jaws"]])
    with pytest.raises(
        ValueError, match=r"User 0: duplicate candidate 'jaws' \(candidates\[0\] and candidates\[2\]\)"
    ):
        recommender.recommend(["heat"], ["jaws", "alien", "jaws"])
    with pytest.raises(ValueError, match="User 0: there are no candidates"):
        recommender.recommend(["heat"], [])
    with pytest.raises(ValueError, match="`method` must be one of"):
        recommender.recommend(["heat"], ["alien"], method="sample")
    # More candidates than the prompt fits: refused rather than truncated.
    short = _save(_adapter(base), tmp_path / "short", max_length=20, num_candidates=4)
    with pytest.raises(ValueError, match=r"User 0: the prompt with 12 candidates \(trained with 4\) is \d+ tokens"):
        Recommender.from_pretrained(short).recommend(["heat"], TITLES)
    # No template saved: the error says how to give one.
    bare = tmp_path / "bare"
    _adapter(base).save_pretrained(bare)
    with pytest.raises(FileNotFoundError, match="recommender.json.*template="):
        Recommender.from_pretrained(bare)
    assert Recommender.from_pretrained(bare, template=TEMPLATE).recommend(["heat"], ["alien", "jaws"], k=1)
    # The command line reports the error and exits with status 2.
    with pytest.raises(SystemExit) as exit_info:
        main(["--adapter", str(folder), "--history", "nope", "--candidates", "alien"])
    assert exit_info.value.code == 2 and "unknown item 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("features", ["item", "item+state"])
def test_hybrid_model_reads_the_table_saved_with_the_adapter(base, tmp_path, features):
    tokenizer = _tokenizer()
    rng = np.random.default_rng(0)
    titles = [*TITLES, "brave"]
    embeddings = rng.normal(size=(len(titles), 6)).astype(np.float32)
    data = tmp_path / "data"
    data.mkdir()
    pq.write_table(pa.table({"title": titles, "embedding": embeddings.tolist()}), data / ITEM_TABLE_FILE)
    model = _adapter(base)
    projector = ItemTokenProjector(
        6 * (2 if features == "item+state" else 1), 32, item_token_id(tokenizer, "<item>"), 1,
        item_token="<item>", features=features, projector_hidden=8,
    )  # fmt: skip
    with torch.no_grad():
        projector.net[2].weight.normal_(0.0, 0.5)  # non-zero: the vectors change the scores
    attach_item_tokens(model, projector)
    folder = _save(model, tmp_path / "adapter")
    assert save_item_tokens(model, folder, table=data) and (folder / ITEM_TABLE_FILE).is_file()

    recommender = Recommender.from_pretrained(folder)
    states = rng.normal(size=(len(USERS), 6)).tolist() if features == "item+state" else None
    prompts = recommender.prompts([h for h, _ in USERS], [c for _, c in USERS])
    tokens = ItemTokens.for_model(model, ItemEmbeddingTable.from_folder(data))
    scores = score_candidates(
        model, tokenizer, prompts, [c for _, c in USERS], item_tokens=tokens, user_states=states, show_progress=False
    )
    ranked = recommender.recommend([h for h, _ in USERS], [c for _, c in USERS], user_states=states)
    for row, (_, cands), got in zip(scores, USERS, ranked):
        order = np.argsort(-row[: len(cands)], kind="stable")
        assert got == [Recommendation(cands[i], float(row[i])) for i in order]
    if features == "item+state":
        with pytest.raises(ValueError, match="item_features='item\\+state': pass each user's teacher state"):
            recommender.recommend(*USERS[0])


def _run_snippet(snippet: str) -> tuple[dict, str]:
    namespace, output = {}, io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(snippet, "snippet", "exec"), namespace)
    return namespace, output.getvalue()


def test_model_card_snippet_ranks_a_test_user(hub_server, folder):
    repo_id = "tester/recommend-card"
    history, cands = USERS[0]
    card = build_model_card(
        model_name="tiny", base_model=None, loss_type="dynamicpo", hyperparameters={}, hub_model_id=repo_id,
        usage_example={"history": history, "candidates": cands},
    )  # fmt: skip
    (folder / "README.md").write_text(str(card))
    push_adapter_folder(folder, repo_id)
    [snippet] = re.findall(r"```python\n(.*?)```", str(card), re.DOTALL)
    assert f'Recommender.from_pretrained("{repo_id}")' in snippet and "load_recommender" not in snippet
    namespace, printed = _run_snippet(snippet)
    expected = _expected(folder, [USERS[0]], k=3)[0]
    assert printed == f"{expected}\n"


@pytest.mark.parametrize("page", [DOCS, DOCS.parents[1] / "README.md"], ids=["docs", "readme"])
def test_docs_snippet_runs_as_written(hub_server, base, tmp_path, page):
    """The five lines of docs/recommend.md and of the README, from a Hub id to a ranked list, run against the
    loopback Hub."""
    text = page.read_text(encoding="utf-8")
    snippet = re.search(r"<!-- snippet -->\n```python\n(.*?)```", text, re.DOTALL).group(1)
    repo_id = re.search(r'Recommender\.from_pretrained\("([^"]+)"\)', snippet).group(1)
    history = ast.literal_eval(re.search(r"history = (\[.*\])", snippet).group(1))
    candidates = ast.literal_eval(re.search(r"candidates = (\[.*\])", snippet).group(1))
    titles = [*history, *candidates]  # the snippet's titles are among the published item titles
    push_adapter_folder(_save(_adapter(base, seed=3), tmp_path / "adapter", titles=titles), repo_id)
    namespace, printed = _run_snippet(snippet)
    ranked = namespace["recommender"].recommend(history, candidates, k=3)
    assert len(ranked) == 3 and all(item in candidates for item, _ in ranked)
    assert printed == f"{ranked}\n"
