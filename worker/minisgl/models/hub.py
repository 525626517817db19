"""Where a model comes from: a built-in name ('demo'), a local directory, or the Hugging Face
Hub (downloaded into its cache, reused without contacting the Hub when cached)."""

from __future__ import annotations

import re
from pathlib import Path

from minisgl.env import ENV

BUILTIN_MODELS = {"demo": Path(__file__).parent / "demo"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILES = ["*.json", "*.jinja", "*.txt", "*.model", "tokenizer*"]


def resolve_model_path(model_path: str, weights: bool = True) -> Path:
    """A built-in model name ('demo'), a local directory holding config.json, or a Hugging
    Face repo id (`org/name`) fetched into the Hub cache ($HF_HOME, token from $HF_TOKEN,
    revision from $MINISGL_MODEL_REVISION). weights=False skips the safetensors
    (--dummy-weight). A repo already in the cache is used without contacting the Hub."""
    if model_path in BUILTIN_MODELS:
        return BUILTIN_MODELS[model_path]
    path = Path(model_path).expanduser()
    if (path / "config.json").is_file():
        return path
    if _REPO_ID.match(model_path) and not path.exists():
        return _from_hub(model_path, weights)
    raise ValueError(
        f"--model-path {model_path!r} is neither a directory with config.json nor a Hugging Face "
        f"repo id (built-in models: {', '.join(BUILTIN_MODELS)})"
    )


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def resolve_tokenizer_path(path: str) -> Path:
    """A directory with tokenizer files (no config.json needed), or anything resolve_model_path takes."""
    local = Path(path).expanduser()
    if path not in BUILTIN_MODELS and any((local / f).is_file() for f in TOKENIZER_FILES):
        return local
    try:
        return resolve_model_path(path, weights=False)
    except ValueError as e:
        raise ValueError(f"--tokenizer-path {path!r}: no tokenizer files there ({e})") from e


def _from_hub(repo_id: str, weights: bool) -> Path:
    from huggingface_hub import snapshot_download

    patterns = _FILES + (["*.safetensors"] if weights else [])
    kwargs = dict(allow_patterns=patterns, revision=ENV.model_revision)
    try:
        return Path(snapshot_download(repo_id, local_files_only=True, **kwargs))
    except Exception:  # not cached (or only partly): download
        pass
    try:
        local = Path(snapshot_download(repo_id, token=ENV.hf_token, **kwargs))
    except Exception as e:
        raise ValueError(f"--model-path {repo_id!r} is not a local directory and fetching it from "
                         f"the Hugging Face Hub failed: {str(e).splitlines()[0]}") from e
    if not (local / "config.json").is_file():
        raise ValueError(f"Hugging Face repo {repo_id!r} has no config.json")
    return local
