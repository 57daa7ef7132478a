"""The user's objects are guests: run their code, and leave their state as it was found.

- `user_scope`: the user's folder is importable while their code runs; `sys.path` and the
  modules imported meanwhile are restored when the outermost scope ends.
- `call_user` / `describe_exception`: user code that raises becomes one `UserCodeError`
  message style, "<what> raised ValueError: text (at file.py:12)".
- `preserved_state`, `RngState`, `init_cuda`, `exact_float32`: RNG (torch CPU and CUDA,
  Python, numpy), default dtype, grad mode and TF32 flags restored however a block ends;
  `seeded_rng`: the RNGs seeded for a block (loading the user's file), then restored.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import site
import sys
import sysconfig
import traceback
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import torch

from .errors import UserCodeError

try:  # numpy is a dependency, but a missing one must not break torch-only use
    import numpy as np
except ImportError:  # pragma: no cover
    np = None  # type: ignore[assignment]

# --- the user's folder, and where their code raised -----------------------------------------

_OWN_DIR = str(Path(__file__).resolve().parent)


def _library_roots() -> tuple[str, ...]:
    """Where installed packages and the standard library live: this interpreter's scheme,
    and its site-packages folders (a distribution's dist-packages, the user site)."""
    roots = [sysconfig.get_paths()[k] for k in ("purelib", "platlib", "stdlib", "platstdlib")]
    roots += getattr(site, "getsitepackages", list)()
    if site.ENABLE_USER_SITE:
        roots.append(site.getusersitepackages())
    return tuple({os.path.realpath(r) for r in roots if r})


_LIBRARY_ROOTS = _library_roots()


def _library_file(path: str) -> bool:
    """Installed packages (torch) and the standard library, by real path."""
    return any(path.startswith(root + os.sep) for root in _LIBRARY_ROOTS)


def user_frame(tb: types.TracebackType | None, folder: Path | None) -> str | None:
    """`file.py:LINE` of the innermost traceback frame in the user's code: inside `folder`
    when given, else the innermost frame that is not gradtool's, torch's or Python's."""
    found = None
    folder_str = str(folder.resolve()) if folder is not None else None
    for frame in traceback.extract_tb(tb):
        try:
            frame_path = str(Path(frame.filename).resolve())
        except OSError:
            continue
        # the user's own code: not gradtool, torch or Python (a venv inside the user's
        # folder holds torch too), and inside their folder when that is known
        mine = not frame.filename.startswith("<") and not _library_file(frame_path)
        mine = mine and not frame_path.startswith(_OWN_DIR + os.sep)
        if folder_str is not None:
            mine = mine and frame_path.startswith(folder_str + os.sep)
        if mine:
            found = f"{os.path.relpath(frame.filename)}:{frame.lineno}"
    return found


def describe_exception(exc: BaseException, folder: Path | None) -> str:
    """'ValueError: text (at file.py:12)' — the user's own words, with where it happened."""
    if isinstance(exc, SystemExit):
        text = f"sys.exit({exc.code!r})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    where = user_frame(exc.__traceback__, folder)
    return f"{text} (at {where})" if where else text


def _installed_module(module: types.ModuleType) -> bool:
    """Modules from site-packages or the standard library stay imported: removing a C
    extension from sys.modules and importing it again can break it."""
    origin = getattr(module, "__file__", None)
    return bool(origin) and _library_file(os.path.realpath(origin))


_scopes: list[str] = []  # folders of the user scopes now open, outermost first


@contextlib.contextmanager
def user_scope(folder: Path) -> Iterator[None]:
    """The user's folder is importable while their code runs (the import, build_model,
    forward, loss_fn); when the outermost scope ends, sys.path is restored and the modules
    imported meanwhile are dropped from sys.modules (installed packages and the standard
    library excepted: re-importing a C extension can break it)."""
    entry = str(folder.resolve())
    outermost = not _scopes  # a nested scope leaves the restoring to the outermost one
    saved_path = list(sys.path) if outermost else None
    saved_modules = dict(sys.modules) if outermost else None
    if outermost or entry not in sys.path:
        sys.path.insert(0, entry)
    _scopes.append(entry)
    try:
        yield
    finally:
        _scopes.pop()
        if outermost:
            sys.path[:] = saved_path
            for name in list(sys.modules):
                if name not in saved_modules and not _installed_module(sys.modules[name]):
                    del sys.modules[name]
            for name, mod in saved_modules.items():
                if sys.modules.get(name) is not mod:
                    sys.modules[name] = mod


def call_user(
    fn: Callable[..., Any],
    *args: Any,
    what: str,
    folder: Path | None = None,
    hint: str | None = None,
    **kwargs: Any,
) -> Any:
    """Run user code; any exception (sys.exit included) becomes a UserCodeError repeating
    its text, at the innermost line of the user's code (inside `folder` when given)."""
    try:
        return fn(*args, **kwargs)
    except (Exception, SystemExit) as exc:
        raise UserCodeError(f"{what} raised {describe_exception(exc, folder)}", hint=hint) from exc


# --- state: RNG, default dtype, grad mode, TF32 ---------------------------------------------


@dataclasses.dataclass
class RngState:
    """torch (CPU and every CUDA device), Python `random` and numpy generator states."""

    torch_cpu: torch.Tensor
    torch_cuda: list[torch.Tensor] | None
    python: Any
    numpy: Any

    @classmethod
    def capture(cls) -> RngState:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
        return cls(
            torch.get_rng_state(),
            cuda,
            random.getstate(),
            np.random.get_state() if np is not None else None,
        )

    @classmethod
    def seeded(cls, seed: int) -> RngState:
        """The state every evaluation starts from, made without disturbing the current one.

        CUDA's generators are seeded (and fixed per evaluation) only once CUDA is
        initialized: call `init_cuda` first when the work will run there. While it is not,
        `torch.manual_seed` would queue the seed for CUDA's lazy initialization, where
        restoring cannot undo it and it would replace the user's own queued seed.
        """
        with preserved_state():
            torch.default_generator.manual_seed(seed)
            if torch.cuda.is_initialized():
                torch.cuda.manual_seed_all(seed)
            random.seed(seed)
            if np is not None:
                np.random.seed(seed % 2**32)
            return cls.capture()

    def restore(self) -> None:
        torch.set_rng_state(self.torch_cpu)
        if self.torch_cuda is not None:
            torch.cuda.set_rng_state_all(self.torch_cuda)
        random.setstate(self.python)
        if np is not None and self.numpy is not None:
            np.random.set_state(self.numpy)


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """The global RNGs seeded with `seed` while the block runs, and the caller's states
    restored however it ends: a user's file that builds its model or inputs from the global
    RNG (at import, in build_model(), in example_inputs()) builds the same ones every run and
    in every process, and a caller's own RNG (a test under the pytest plugin) is untouched.
    Only the RNGs: what else the file sets (the default dtype) stays, as the run needs it."""
    kept = RngState.capture()
    try:
        RngState.seeded(seed).restore()
        yield
    finally:
        kept.restore()


def init_cuda(device: torch.device | None) -> None:
    """Initialize CUDA before RNG state is captured when the work will run there, so that
    its generators are fixed per evaluation and restored afterwards like the CPU's."""
    if device is not None and device.type == "cuda":
        torch.cuda.init()


@contextlib.contextmanager
def exact_float32(active: bool) -> Iterator[None]:
    """No TensorFloat-32 while a float32 check runs on CUDA: TF32 matmuls and convolutions
    (cuDNN's default for convolutions on Ampere and later GPUs) round float32 operands to 10
    mantissa bits, far coarser than the finite differences of a float32 check. The user's
    settings are restored however the block ends."""
    undo: list[Callable[[], Any]] = []
    try:
        if active:
            try:
                matmul = torch.get_float32_matmul_precision()
            except RuntimeError:  # torch >= 2.9 after the user set the new flag API
                new_api = torch.backends.cuda.matmul
                kept = new_api.fp32_precision
                undo.append(lambda: setattr(new_api, "fp32_precision", kept))
                new_api.fp32_precision = "ieee"
            else:
                undo.append(lambda: torch.set_float32_matmul_precision(matmul))
                torch.set_float32_matmul_precision("highest")
            cudnn = torch.backends.cudnn
            try:
                conv = cudnn.allow_tf32
            except RuntimeError:  # torch >= 2.9 after a mix of the legacy and the new flag API
                saved = [(op, op.fp32_precision) for op in (cudnn.conv, cudnn.rnn)]
                undo.append(lambda: [setattr(op, "fp32_precision", v) for op, v in saved])
                for op, _ in saved:
                    op.fp32_precision = "ieee"
            else:
                undo.append(lambda: setattr(cudnn, "allow_tf32", conv))
                cudnn.allow_tf32 = False
        yield
    finally:
        for step in reversed(undo):
            step()


@contextlib.contextmanager
def preserved_state() -> Iterator[None]:
    """Restore RNG state, default dtype and grad mode however the block ends."""
    rng = RngState.capture()
    dtype = torch.get_default_dtype()
    grad = torch.is_grad_enabled()
    try:
        yield
    finally:
        rng.restore()
        torch.set_default_dtype(dtype)
        torch.set_grad_enabled(grad)


@contextlib.contextmanager
def no_inference_fast_paths() -> Iterator[None]:
    """Finite differences must run the same code as the analytic pass. Under torch.no_grad()
    nn.MultiheadAttention and nn.TransformerEncoder(Layer) take a fused inference path (with
    a key-padding mask, a nested tensor that zeroes the padded positions) that the pass with
    grad enabled does not: off while a check runs, and the user's setting restored."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):  # older torch: no switch
        yield
        return
    kept = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(kept)
