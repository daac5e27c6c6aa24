"""Shared test setup: a loopback Hugging Face Hub for the whole session.

`huggingface_hub` and `datasets` read their endpoint, cache folders and Xet switch when they are imported, so this
module starts the in-memory Hub server (`tests/hub_server.py`) and sets the environment at import time, before any
test module imports a Hugging Face library:

- `HF_ENDPOINT` = the loopback server (port chosen by the OS), so nothing can reach the real Hub;
- `HF_HUB_DISABLE_XET=1` (Xet is the default upload path and has no fallback), a dummy `HF_TOKEN`
  (`DUMMY_HF_TOKEN`), `HF_HUB_DISABLE_TELEMETRY=1`, `TOKENIZERS_PARALLELISM=false`;
- a temporary `HF_HOME` (removed at exit) with `HF_HUB_CACHE` and `HF_DATASETS_CACHE` inside it;
- `HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE` / `HF_DATASETS_OFFLINE` unset (they would block the loopback Hub too).

Starting the server costs about a millisecond and no heavy library is imported here. Tests that need the Hub take
the session fixture `hub_server` (a `HubServer`: `.url`, `.inject_fault(method, path_regex, status=..., drop=...,
times=..., skip=...)`, `.clear_faults()`, `.set_offline()`, `.reset()`, `.files(repo_id, repo_type)`,
`.commit_count(...)`, `.requests`). Use repo ids of your own (e.g. with a counter) rather than `.reset()`, which
would delete the repos of other tests of the session.
"""

import atexit
import os
import shutil
import tempfile

from .hub_server import HubServer


DUMMY_HF_TOKEN = "hf_loopbackDummyToken000000000000000000"

_HUB_SERVER = HubServer().start()
_HF_HOME = tempfile.mkdtemp(prefix="trl_dynamicpo_hf_home_")
atexit.register(shutil.rmtree, _HF_HOME, ignore_errors=True)
atexit.register(_HUB_SERVER.stop)

os.environ.update(
    {
        "HF_ENDPOINT": _HUB_SERVER.url,
        "HF_HUB_DISABLE_XET": "1",
        "HF_TOKEN": DUMMY_HF_TOKEN,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HOME": _HF_HOME,
        "HF_HUB_CACHE": os.path.join(_HF_HOME, "hub"),
        "HF_DATASETS_CACHE": os.path.join(_HF_HOME, "datasets"),
        "TOKENIZERS_PARALLELISM": "false",
    }
)
for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
    os.environ.pop(_name, None)

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def hub_server() -> HubServer:
    """The loopback Hub every Hugging Face client of the session talks to (see `tests/hub_server.py`)."""
    import huggingface_hub

    # If a plugin imported huggingface_hub before this conftest, the clients would not use the loopback server.
    if huggingface_hub.constants.ENDPOINT != _HUB_SERVER.url:
        pytest.fail(f"huggingface_hub was imported before tests/conftest.py set HF_ENDPOINT={_HUB_SERVER.url}")
    return _HUB_SERVER
