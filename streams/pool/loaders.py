"""Model loaders for a pool host (issue 3, "Models and hosts"): a pluggable registry keyed by
URI scheme. `load(uri)` returns a `LoadedModel` that answers `infer(inputs)`, carries a
`test_input` for health checks, and `close()`s.

Shipped schemes:
* ``python:package.module:factory`` imports the module, resolves ``factory`` (a dotted
  attribute path is allowed) and calls it with no arguments. The result is either an object
  with an ``infer`` method or a plain callable. Its optional ``test_input`` attribute becomes
  the model's test input, its optional ``close`` method runs on close.
* ``npz:/path/to/weights.npz`` reads a two-layer MLP (arrays ``W1`` (in, hidden), ``b1``
  (hidden,), ``W2`` (hidden, out), ``b2`` (out,)) and really computes
  ``softmax(relu(x @ W1 + b1) @ W2 + b2)`` for one input vector or a batch (rows).
  ``npz:///abs/path`` is accepted too.

Load time and memory are measured, not declared:
* ``load_ms``: ``time.perf_counter`` around the whole load (import / file read + building).
* ``memory_mb``: the larger of two measurements, in MiB:
  - resident set growth: ``/proc/self/statm`` resident pages (times the page size) read just
    before and just after the load (falling back to ``resource.getrusage`` peak RSS where
    there is no /proc, which can only over-approximate growth from a new peak);
  - the byte size (``nbytes``) of the NumPy arrays the model holds (for ``python:`` models,
    arrays found on the model object, its attributes and in lists/dicts of them, two levels
    deep).
  The RSS delta sees everything the load allocated (code, Python objects) but can read low
  when the allocator reuses freed memory; the array total is exact for weights but blind to
  the rest. Taking the larger never under-reports the weights. Both figures are kept on the
  model (``rss_growth_bytes``, ``array_bytes``); ``report_memory_mb`` is the whole-MB figure
  (rounded up, at least 1) that ``ReportModelLoaded.memory_mb`` carries.

Any failure to load (unknown scheme, malformed URI, missing module or file, bad arrays, a
factory that raises) is a `LoaderError` whose one-line message names the URI.
"""

from __future__ import annotations

import importlib
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from streams.errors import PitError

__all__ = [
    "LoadedModel",
    "LoaderError",
    "LoaderRegistry",
    "RawModel",
    "default_registry",
    "load",
    "register_loader",
    "write_mlp",
]

MIB = 1024 * 1024


class LoaderError(PitError):
    """A model URI cannot be loaded (unknown scheme, bad URI, missing target, bad weights)."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


@dataclass
class RawModel:
    """What a scheme's loader function returns; the registry measures and wraps it."""

    infer: Callable[[Any], Any]
    test_input: Any = None
    close: Callable[[], None] | None = None
    held: Any = None  # objects whose NumPy arrays count towards memory


@dataclass
class LoadedModel:
    uri: str
    scheme: str
    test_input: Any
    load_ms: float
    memory_mb: float
    rss_growth_bytes: int
    array_bytes: int
    _infer: Callable[[Any], Any] = field(repr=False)
    _close: Callable[[], None] | None = field(default=None, repr=False)
    closed: bool = False

    def infer(self, inputs: Any) -> Any:
        if self.closed:
            raise LoaderError(f"model {self.uri!r} is closed")
        return self._infer(inputs)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._close is not None:
            self._close()

    @property
    def report_memory_mb(self) -> int:
        """Whole MB for ReportModelLoaded: rounded up, at least 1."""
        return max(1, math.ceil(self.memory_mb))

    @property
    def report_load_ms(self) -> int:
        """Whole ms for ReportModelLoaded: rounded up, at least 1."""
        return max(1, math.ceil(self.load_ms))


# --- measurement ----------------------------------------------------------------------------

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int:
    """Current resident set size of this process, in bytes."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB else


def array_bytes(obj: Any, depth: int = 2) -> int:
    """Bytes of the distinct NumPy arrays reachable from obj (attributes, lists, dicts)."""
    seen: set[int] = set()

    def walk(o: Any, d: int) -> int:
        if id(o) in seen:
            return 0
        seen.add(id(o))
        if isinstance(o, np.ndarray):
            return int(o.nbytes)
        if d <= 0:
            return 0
        if isinstance(o, dict):
            return sum(walk(v, d - 1) for v in o.values())
        if isinstance(o, list | tuple | set | frozenset):
            return sum(walk(v, d - 1) for v in o)
        attrs = getattr(o, "__dict__", None)
        if isinstance(attrs, dict):
            return sum(walk(v, d - 1) for v in attrs.values())
        return 0

    return walk(obj, depth)


# --- the registry ---------------------------------------------------------------------------

LoaderFn = Callable[[str, str], RawModel]  # (target, uri) -> RawModel


class LoaderRegistry:
    def __init__(self) -> None:
        self._loaders: dict[str, LoaderFn] = {}

    def register(self, scheme: str, fn: LoaderFn) -> None:
        if not scheme or not scheme.replace("+", "").replace("-", "").isalnum():
            raise ValueError(f"invalid URI scheme {scheme!r}")
        self._loaders[scheme] = fn

    @property
    def schemes(self) -> list[str]:
        return sorted(self._loaders)

    def load(self, uri: str) -> LoadedModel:
        if not isinstance(uri, str) or ":" not in uri:
            raise LoaderError(f"bad model URI {uri!r}: expected 'scheme:target'")
        scheme, target = uri.split(":", 1)
        fn = self._loaders.get(scheme)
        if fn is None:
            raise LoaderError(
                f"unknown model URI scheme {scheme!r} in {uri!r} "
                f"(known: {', '.join(self.schemes)})")
        if not target:
            raise LoaderError(f"bad model URI {uri!r}: empty target")
        rss_before = resident_bytes()
        t0 = time.perf_counter()
        try:
            raw = fn(target, uri)
        except LoaderError:
            raise
        except Exception as e:  # a loader or user factory failing is a load failure
            raise LoaderError(
                f"cannot load {uri!r}: {type(e).__name__}: {_one_line(e)}") from e
        load_ms = (time.perf_counter() - t0) * 1000.0
        rss_growth = max(0, resident_bytes() - rss_before)
        held = array_bytes(raw.held if raw.held is not None else raw.infer)
        return LoadedModel(
            uri=uri, scheme=scheme, test_input=raw.test_input, load_ms=load_ms,
            memory_mb=max(rss_growth, held) / MIB, rss_growth_bytes=rss_growth,
            array_bytes=held, _infer=raw.infer, _close=raw.close)


# --- python: --------------------------------------------------------------------------------

def _load_python(target: str, uri: str) -> RawModel:
    if target.count(":") != 1:
        raise LoaderError(f"bad model URI {uri!r}: expected 'python:package.module:factory'")
    module_name, attr_path = target.split(":")
    if not module_name or not attr_path:
        raise LoaderError(f"bad model URI {uri!r}: expected 'python:package.module:factory'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise LoaderError(f"cannot load {uri!r}: cannot import module {module_name!r}: "
                          f"{_one_line(e)}") from e
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise LoaderError(f"cannot load {uri!r}: {module_name!r} has no "
                              f"attribute {attr_path!r}") from e
    if not callable(obj):
        raise LoaderError(f"cannot load {uri!r}: {attr_path!r} is not callable")
    model = obj()
    infer = getattr(model, "infer", None)
    if not callable(infer):
        if not callable(model):
            raise LoaderError(f"cannot load {uri!r}: the factory returned "
                              f"{type(model).__name__}, neither callable nor with infer()")
        infer = model
    close = getattr(model, "close", None)
    return RawModel(infer=infer, test_input=getattr(model, "test_input", None),
                    close=close if callable(close) else None, held=model)


# --- npz: -----------------------------------------------------------------------------------

_MLP_KEYS = ("W1", "b1", "W2", "b2")


class NpzMLP:
    """softmax(relu(x @ W1 + b1) @ W2 + b2), for one vector or a batch of rows."""

    def __init__(self, W1: np.ndarray, b1: np.ndarray, W2: np.ndarray, b2: np.ndarray):
        self.W1, self.b1, self.W2, self.b2 = W1, b1, W2, b2
        # a fixed, seeded test input of the right width for health checks
        self.test_input = np.random.default_rng(0).standard_normal(W1.shape[0])

    def infer(self, inputs: Any) -> np.ndarray:
        x = np.asarray(inputs, dtype=self.W1.dtype)
        h = np.maximum(x @ self.W1 + self.b1, 0.0)
        z = h @ self.W2 + self.b2
        z = z - z.max(axis=-1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=-1, keepdims=True)


def _load_npz(target: str, uri: str) -> RawModel:
    if target.startswith("//"):
        target = target[2:]
    path = Path(target)
    if not path.is_file():
        raise LoaderError(f"cannot load {uri!r}: no such file {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [k for k in _MLP_KEYS if k not in data.files]
            if missing:
                raise LoaderError(f"cannot load {uri!r}: missing arrays {missing} "
                                  f"(an MLP needs {list(_MLP_KEYS)})")
            W1, b1, W2, b2 = (np.ascontiguousarray(data[k], dtype=np.float64)
                              for k in _MLP_KEYS)
    except LoaderError:
        raise
    except Exception as e:  # not a zip, truncated, pickled objects
        raise LoaderError(f"cannot load {uri!r}: not a readable .npz "
                          f"({type(e).__name__}: {_one_line(e)})") from e
    if not (W1.ndim == 2 and W2.ndim == 2 and b1.shape == (W1.shape[1],)
            and W2.shape[0] == W1.shape[1] and b2.shape == (W2.shape[1],)):
        raise LoaderError(
            f"cannot load {uri!r}: inconsistent MLP shapes W1{W1.shape} b1{b1.shape} "
            f"W2{W2.shape} b2{b2.shape}")
    model = NpzMLP(W1, b1, W2, b2)
    return RawModel(infer=model.infer, test_input=model.test_input, held=model)


def write_mlp(path: str | os.PathLike[str], inputs: int, hidden: int, outputs: int,
              seed: int = 0) -> Path:
    """Write a random, seeded two-layer MLP to `path` (.npz) for tests and demos."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    with open(path, "wb") as f:  # a file object: savez would append .npz to a bare name
        np.savez(
            f,
            W1=rng.standard_normal((inputs, hidden)) / math.sqrt(inputs),
            b1=rng.standard_normal(hidden) * 0.1,
            W2=rng.standard_normal((hidden, outputs)) / math.sqrt(hidden),
            b2=rng.standard_normal(outputs) * 0.1,
        )
    return path


default_registry = LoaderRegistry()
default_registry.register("python", _load_python)
default_registry.register("npz", _load_npz)


def register_loader(scheme: str, fn: LoaderFn) -> None:
    """Plug a loader for a new URI scheme into the default registry."""
    default_registry.register(scheme, fn)


def load(uri: str, registry: LoaderRegistry | None = None) -> LoadedModel:
    """Load the model at `uri` through `registry` (the default one unless given)."""
    return (registry or default_registry).load(uri)
