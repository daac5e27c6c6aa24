"""The README's Python example runs as written; the loss table of docs/training.md lists every loss."""

import math
import re
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
TRAINING = ROOT / "docs" / "training.md"  # the loss table moved there from the README


def test_readme_python_example_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    trainer = namespace["trainer"]
    assert trainer.state.global_step == 2
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses)


def test_readme_loss_table_lists_every_registered_loss():
    from trl_dynamicpo.losses import LOSS_ALIASES, LOSS_SPECS

    table = re.search(r"\| `loss_type` \| objective \|\n\|---\|---\|\n((?:\|.*\|\n)+)", TRAINING.read_text())
    assert table, "docs/training.md has no loss table"
    listed = re.findall(r"^\| `(\w+)`", table.group(1), flags=re.M)
    assert sorted(listed) == sorted(name for name in LOSS_SPECS if name != "sft")  # SFT has its own section
    for alias, target in LOSS_ALIASES.items():
        assert f"`{target}` (alias `{alias}`)" in table.group(1)
