"""Import shims for running LLaMA-Factory 0.9.5 next to torch 2.15 (the project's torch).

The newest torchaudio on PyPI (2.11.0) is built for CUDA 13.0 and refuses to import beside
torch 2.15 (CUDA 13.2); no torchaudio matches torch 2.15. LLaMA-Factory imports torchaudio at
module level (``data/mm_plugin.py``) but calls it only to decode audio inputs, which the text
benchmarks never have. So the peer's workers register an empty ``torchaudio`` module that
fails loudly if anything does call into it.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types


class _NoAudio(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        raise RuntimeError(f"torchaudio.{name}: audio is not available in the benchmark's peer venv")


def text_only_torchaudio() -> None:
    """Register the empty ``torchaudio`` unless a working one imports."""
    try:
        import torchaudio  # noqa: F401
    except (ImportError, RuntimeError, OSError):
        for name in [m for m in sys.modules if m == "torchaudio" or m.startswith("torchaudio.")]:
            del sys.modules[name]
        stub = _NoAudio("torchaudio")
        stub.__spec__ = importlib.machinery.ModuleSpec("torchaudio", loader=None)
        sys.modules["torchaudio"] = stub
