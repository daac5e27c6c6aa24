"""The README and docs/ stay true: links resolve, the commands they show name existing files and options their scripts
accept, the quick start's output block is what `recipes/run.py` prints, the results table is what the committed
per-prompt ranks give, and the README stays a front door (at most 250 lines)."""

import functools
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]

# Pages that land from other branches (the recommend API, the GPU guide): the README links them already. Remove a
# name once its page is on this branch.
PENDING: set[str] = set()

FENCE = re.compile(r"^```(\w*)\n(.*?)^```", flags=re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def _prose(text: str) -> str:
    """The page without its fenced blocks (links and headings inside code are not links and headings)."""
    return FENCE.sub("", text)


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@functools.cache
def _anchors(path: Path) -> set[str]:
    anchors, seen = set(), {}
    for heading in re.findall(r"^#{1,6} (.+)$", _prose(path.read_text(encoding="utf-8")), flags=re.M):
        slug = _slug(heading)
        anchors.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def _links():
    for page in PAGES:
        for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
            if not re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                yield page, target


@pytest.mark.parametrize(("page", "target"), list(_links()), ids=lambda x: x.name if isinstance(x, Path) else x)
def test_relative_link_resolves(page, target):
    path, _, anchor = target.partition("#")
    resolved = (page.parent / path).resolve() if path else page
    relative = resolved.relative_to(ROOT).as_posix() if resolved.is_relative_to(ROOT) else str(resolved)
    if relative in PENDING:
        return
    assert resolved.exists(), f"{page.name}: the link {target} points to {relative}, which does not exist"
    if anchor and resolved.suffix == ".md":
        assert anchor in _anchors(resolved), f"{page.name}: {relative} has no heading with the anchor #{anchor}"


def test_pending_pages_are_still_pending():
    """A pending page that has landed is checked like any other: take it out of PENDING."""
    assert not [name for name in PENDING if (ROOT / name).exists()], "remove the pages that exist from PENDING"


# ---------------------------------------------------------------------------------------------- commands
def _commands():
    """Every command of a bash block of the README and docs/: (page, the command's words)."""
    for page in PAGES:
        for language, body in FENCE.findall(page.read_text(encoding="utf-8")):
            if language not in ("bash", "sh", "shell"):
                continue
            for line in body.replace("\\\n", " ").splitlines():
                line = line.split(" # ")[0].split("  #")[0].strip()
                if not line or line.startswith("#"):
                    continue
                for command in line.split("&&"):
                    words = [w for w in shlex.split(command) if w != "..."]
                    if words:
                        yield page, words


COMMANDS = list(_commands())


def _script_and_args(words: list[str]) -> tuple[str | None, list[str]]:
    """The file a command runs and its arguments; None for commands that run no file of the repository."""
    while words and (words[0] == "nohup" or words[0] == "nice"):  # launchers in front of the command
        words = words[3:] if words[:2] == ["nice", "-n"] else words[1:]
    kept = []
    for i, word in enumerate(words):  # backgrounding and redirections (with their targets) are the shell's
        if word == "&" or word.startswith((">", "2>")) or (i and words[i - 1] in (">", ">>", "2>")):
            continue
        kept.append(word)
    words = kept
    program, rest = Path(words[0]).name, words[1:]
    if program == "bash":
        return rest[0], rest[1:]
    if program in ("python", "python3"):
        if rest[:2] == ["-m", "pytest"]:
            return "pytest", rest[2:]
        if rest[:1] == ["-m"]:  # a module of the package: its file, run for --help by path
            return rest[1].replace(".", "/") + ".py", rest[2:]
        return rest[0], rest[1:]
    if program == "accelerate" and rest[:1] == ["launch"]:
        rest, launcher = rest[1:], []
        while rest and rest[0].startswith("--"):  # the launcher's own options, up to the script
            takes_value = rest[0] in ("--config_file", "--num_processes", "--num_cpu_threads_per_process")
            launcher += [rest.pop(0)] + ([rest.pop(0)] if takes_value else [])
        if "--config_file" in launcher:
            config = launcher[launcher.index("--config_file") + 1]
            assert (ROOT / config).is_file(), f"accelerate config {config} does not exist"
        return rest[0], rest[1:]
    if program == "pip":
        return None, []
    raise AssertionError(f"a command the docs test does not know how to check: {shlex.join(words)}")


@functools.cache
def _help(script: str) -> str:
    # A module of the package runs with -m (its relative imports need the package).
    target = ["-m", script[: -len(".py")].replace("/", ".")] if script.startswith("trl_dynamicpo/") else [script]
    result = subprocess.run(
        [sys.executable, *target, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, f"{script} --help failed: {result.stderr[-2000:]}"
    return result.stdout


@pytest.mark.parametrize(
    ("page", "words"), COMMANDS, ids=[f"{p.name}:{shlex.join(w)[:60]}" for p, w in COMMANDS]
)  # fmt: skip
def test_command_names_existing_files_and_accepted_options(page, words):
    script, args = _script_and_args(words)
    if script is None:
        return
    if script == "pytest":  # the test files and folders it names exist
        paths = [a.split("::")[0] for a in args if not a.startswith("-") and "/" in a]
        assert all((ROOT / p).exists() for p in paths), f"{page.name}: {shlex.join(words)} names a missing test"
        return
    assert (ROOT / script).is_file(), f"{page.name}: {shlex.join(words)} runs {script}, which does not exist"
    if script.endswith(".sh") or "--help" in args or "-h" in args:
        return
    if script == "recipes/run.py":  # parsed and validated as the run does it, before any work
        from recipes.recipe_config import load_recipe, parse_command_line

        path, overrides = parse_command_line(args)
        load_recipe(path if Path(path).is_absolute() else ROOT / path, overrides)
        return
    options = {a.split("=")[0] for a in args if a.startswith("--")}
    usage = _help(script)
    if "TrlParser" in (ROOT / script).read_text(encoding="utf-8"):
        usage += " --config"  # TrlParser reads `--config FILE` before argparse (its --help does not list it)
    unknown = sorted(o for o in options if not re.search(rf"{re.escape(o)}\b", usage))
    assert not unknown, f"{page.name}: {script} --help lists no {unknown}"
    for value in [a for a in args if not a.startswith("-")]:  # files the command reads
        if re.search(r"\.(ya?ml|json)$", value) and not value.startswith("outputs/"):
            assert (ROOT / value).is_file(), f"{page.name}: {shlex.join(words)} reads {value}, which does not exist"


# ---------------------------------------------------------------------------------------------- quick start
# The quick start's evaluation on the AVX2-only CPU (fp32, 2026-12-05; docs/quickstart.md): the numbers of the
# README's output block. HR@1 on 300 test prompts (ranking) and 16 (generation), with their 95% intervals.
_BASELINES = {
    "baseline_popularity/hr@1": 88 / 300,
    "baseline_popularity/hr@1_ci": [0.243, 0.350],
    "baseline_random/hr@1": 0.12,
    "baseline_random/hr@1_ci": [0.087, 0.157],
}
QUICKSTART_RESULTS = {
    "sft": {
        "num_samples": 300,
        "generation/hr@1": 0.125,
        "generation/hr@1_ci": [0.0, 0.3125],
        "generation/num_samples": 16,
        "ranking/hr@1": 0.15,
        "ranking/hr@1_ci": [0.11, 0.19],
        "ranking/num_samples": 300,
        **_BASELINES,
    },
    "final": {
        "num_samples": 300,
        "generation/hr@1": 0.125,
        "generation/hr@1_ci": [0.0, 0.3125],
        "generation/num_samples": 16,
        "ranking/hr@1": 0.19,
        "ranking/hr@1_ci": [0.15, 0.237],
        "ranking/num_samples": 300,
        **_BASELINES,
    },
}


def _quickstart_closing_lines(results) -> str:
    from recipes.recipe_config import load_recipe
    from recipes.run import closing_lines, run_slice

    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml")
    assert recipe.evaluation.models == ["sft", "final"] and recipe.preference.loss_type == ["dynamicpo"]
    return closing_lines(results, {"sft": "SFT", "final": "DynamicPO"}, run_slice(recipe, []))


def test_readme_quickstart_output_is_what_the_run_prints():
    blocks = [body for language, body in FENCE.findall(README.read_text(encoding="utf-8")) if not language]
    shown = next((b for b in blocks if b.startswith("HR@1 (")), None)
    assert shown is not None, "the README shows no quick-start output"
    assert shown.rstrip("\n") == _quickstart_closing_lines(QUICKSTART_RESULTS)


def test_closing_lines_read_the_numbers():
    text = _quickstart_closing_lines(QUICKSTART_RESULTS)
    assert "512 training rows, 5 history items, 10 candidates per prompt" in text
    assert "+0.040" in text and "overlap" in text and "docs/quality_study.md" in text
    assert (ROOT / "docs" / "quality_study.md").is_file()
    # Intervals apart, and a model above popularity: the words follow the numbers.
    better = json.loads(json.dumps(QUICKSTART_RESULTS))
    better["final"].update({"ranking/hr@1": 0.4, "ranking/hr@1_ci": [0.36, 0.45]})
    text = _quickstart_closing_lines(better)
    assert "do not overlap." in text and "DynamicPO is above popularity (0.293)" in text
    # Without an SFT model or intervals, only what is known is said.
    text = _quickstart_closing_lines({"final": {k: v for k, v in better["final"].items() if not k.endswith("_ci")}})
    assert "preference stage" not in text and "Popularity" not in text and text.endswith("docs/quality_study.md")


def test_closing_lines_of_a_full_split_run_do_not_call_it_a_slice():
    from recipes.recipe_config import load_recipe, parse_overrides
    from recipes.run import closing_lines, run_slice
    from recipes.stage_folders import StageRecord

    recipe = load_recipe(ROOT / "recipes" / "quickstart.yaml", parse_overrides(["--data.max_train_rows", "null"]))
    data_slice = run_slice(recipe, [StageRecord("data", "reused", metrics={"train_rows": 77729})])
    assert data_slice == {"train_rows": 77729, "subsampled": False, "history": 5, "candidates": 10}
    text = closing_lines(QUICKSTART_RESULTS, {"sft": "SFT", "final": "DynamicPO"}, data_slice)
    assert "- This run: 77,729 training rows, 5 history items, 10 candidates per prompt" in text


# ---------------------------------------------------------------------------------------------- results table
def test_readme_results_table_is_what_the_committed_ranks_give():
    """Every interval of the README's results table, recomputed from benchmarks/results/ml100k-cpu-final3."""
    from benchmarks.quality_report import paired_block

    folder = ROOT / "benchmarks" / "results" / "ml100k-cpu-final3"
    results = json.loads((folder / "results.json").read_text())
    ranks = {name: np.asarray(cell["ranks"]) for name, cell in json.loads((folder / "ranks.json").read_text())["cells"].items()}  # fmt: skip
    resamples, seed = results["settings"]["bootstrap_resamples"], results["settings"]["seed"]
    best = next(cell for cell in results["cells"] if cell["name"] == "dynamicpo@15")
    table = README.read_text(encoding="utf-8").split("## Results", 1)[1].split("\n## ", 1)[0]

    def interval(values, signed=False):
        fmt = (lambda v: f"{v:+.3f}".replace("-", "−")) if signed else (lambda v: f"{v:.3f}")
        return f"{fmt(values[0])} [{fmt(values[1][0])}, {fmt(values[1][1])}]"

    rows = {
        "DynamicPO, K = 15": (best, None),
        "popularity (full train split)": (results["baselines"]["popularity"], "baseline:popularity"),
        "SFT (DynamicPO's start)": (next(c for c in results["cells"] if c["name"] == "sft"), "sft"),
        "random": (results["baselines"]["random"], "baseline:random"),
        "SASRec (a classical sequential recommender)": (results["baselines"]["sasrec"], "baseline:sasrec"),
    }
    for label, (metrics, ranks_name) in rows.items():
        line = next((row for row in table.splitlines() if row.strip("| *").startswith(label)), None)
        assert line is not None, f"the results table has no row {label!r}"
        assert interval((metrics["hr@1"], metrics["hr@1_ci"])) in line.replace("*", ""), label
        assert interval((metrics["ndcg@10"], metrics["ndcg@10_ci"])) in line.replace("*", ""), label
        if ranks_name:
            paired = paired_block(ranks["dynamicpo@15"], ranks[ranks_name], resamples, seed)
            assert interval((paired["hr@1"], paired["hr@1_ci"]), signed=True) in line.replace("*", ""), label


# ---------------------------------------------------------------------------------------------- size
def test_readme_is_a_front_door():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 250
