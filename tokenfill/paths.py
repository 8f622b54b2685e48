"""Where the project's files are: the checkout, the bundled model, the benchmark data.

Paths are those of a source checkout (the bundled model and the corpus manifests live beside the
package); the benchmark data lives in `shared/data`, a folder beside the checkout.
"""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BUNDLED_MODEL = REPO_ROOT / "models" / "tokenfill-small"
CORPUS_MANIFEST = REPO_ROOT / "corpus" / "manifest.toml"
HELDOUT_MANIFEST = REPO_ROOT / "corpus" / "heldout.toml"
DEMO_FILE = REPO_ROOT / "examples" / "demo.py"
BENCHMARKS_MD = REPO_ROOT / "BENCHMARKS.md"
PLOTS = REPO_ROOT / "benchmarks"
STATIC = Path(__file__).resolve().parent / "serve" / "static"

SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
HUMANEVAL_DIR = SHARED_DATA / "humaneval-infilling"
HUMANEVAL_SINGLE = HUMANEVAL_DIR / "HumanEval-SingleLineInfilling.jsonl.gz"
HUMANEVAL_MULTI = HUMANEVAL_DIR / "HumanEval-MultiLineInfilling.jsonl.gz"


def shared_data() -> Path | None:
    """The benchmark data folder, or None where the checkout has none beside it."""
    return SHARED_DATA if SHARED_DATA.is_dir() else None


def user_cache() -> Path:
    """$XDG_CACHE_HOME/tokenfill (~/.cache by default): what can be rebuilt (workspace indexes)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokenfill"


def user_state() -> Path:
    """$XDG_STATE_HOME/tokenfill (~/.local/state by default): what this person's use made (the
    language server's telemetry, gates refitted to it)."""
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "tokenfill"
