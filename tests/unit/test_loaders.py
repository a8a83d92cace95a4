"""Model loaders: both shipped schemes really compute, load time and memory are measured,
bad URIs are one-line LoaderErrors naming the URI."""

from __future__ import annotations

import importlib
import sys
import textwrap

import numpy as np
import pytest

from streams.errors import PitError
from streams.pool.loaders import (
    MIB,
    LoadedModel,
    LoaderError,
    LoaderRegistry,
    RawModel,
    default_registry,
    load,
    write_mlp,
)

FACTORY_MODULE = textwrap.dedent("""
    import numpy as np

    closed = []

    class Scaler:
        def __init__(self):
            self.weights = np.arange(250_000, dtype=np.float64)  # 2 MB held
            self.test_input = [1.0, 2.0]

        def infer(self, inputs):
            return [2.0 * x for x in inputs]

        def close(self):
            closed.append(True)

    def make_model():
        return Scaler()

    def make_callable():
        return lambda inputs: sum(inputs)

    def make_nothing():
        return 42

    def make_broken():
        raise RuntimeError("weights\\nmissing")

    NOT_CALLABLE = 3
""")


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "pit_test_factories.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("pit_test_factories", None)
    mod = importlib.import_module("pit_test_factories")
    yield mod
    sys.modules.pop("pit_test_factories", None)


def reference_mlp(path, x):
    d = np.load(path)
    h = np.maximum(x @ d["W1"] + d["b1"], 0)
    z = h @ d["W2"] + d["b2"]
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_npz_mlp_really_computes(tmp_path):
    path = write_mlp(tmp_path / "m.npz", inputs=16, hidden=32, outputs=5, seed=3)
    model = load(f"npz:{path}")
    x = np.random.default_rng(1).standard_normal((7, 16))
    out = model.infer(x)
    assert out.shape == (7, 5)
    np.testing.assert_allclose(out, reference_mlp(path, x), rtol=1e-12)
    np.testing.assert_allclose(out.sum(axis=1), 1.0)
    one = model.infer(x[0])  # a single vector works too
    np.testing.assert_allclose(one, out[0])
    assert model.infer(model.test_input).shape == (5,)  # the health-check input fits
    assert model.scheme == "npz"
    assert load(f"npz://{path}").infer(x[0]).shape == (5,)  # npz:///abs/path form


def test_write_mlp_is_seeded(tmp_path):
    a = write_mlp(tmp_path / "a.npz", 4, 8, 3, seed=9)
    b = write_mlp(tmp_path / "b.npz", 4, 8, 3, seed=9)
    c = write_mlp(tmp_path / "c", 4, 8, 3, seed=10)  # no suffix: the name is kept
    assert c.exists() and c.name == "c"
    da, db, dc = np.load(a), np.load(b), np.load(c)
    for k in ("W1", "b1", "W2", "b2"):
        np.testing.assert_array_equal(da[k], db[k])
    assert not np.array_equal(da["W1"], dc["W1"])


def test_npz_load_time_and_memory_are_measured(tmp_path):
    path = write_mlp(tmp_path / "big.npz", inputs=512, hidden=1024, outputs=10, seed=0)
    model = load(f"npz:{path}")
    weights = (512 * 1024 + 1024 + 1024 * 10 + 10) * 8
    expected_bytes = weights + 512 * 8  # the weights and the held test input
    assert model.array_bytes == expected_bytes
    assert model.load_ms > 0
    assert model.memory_mb >= expected_bytes / MIB
    assert model.memory_mb == max(model.rss_growth_bytes, model.array_bytes) / MIB
    assert model.report_memory_mb >= 4 and isinstance(model.report_memory_mb, int)
    assert model.report_load_ms >= 1


def test_python_loader_object_with_infer(factory_module):
    model = load("python:pit_test_factories:make_model")
    assert model.infer([1.0, 3.0]) == [2.0, 6.0]
    assert model.test_input == [1.0, 2.0]
    assert model.load_ms > 0
    assert model.array_bytes == 250_000 * 8
    assert model.memory_mb >= 250_000 * 8 / MIB
    model.close()
    model.close()  # idempotent
    assert factory_module.closed == [True]
    with pytest.raises(LoaderError, match="closed"):
        model.infer([1.0])


def test_python_loader_plain_callable(factory_module):
    model = load("python:pit_test_factories:make_callable")
    assert model.infer([1, 2, 3]) == 6
    assert model.test_input is None
    model.close()


@pytest.mark.parametrize(("uri", "fragment"), [
    ("nosuch:thing", "unknown model URI scheme 'nosuch'"),
    ("no-colon-at-all", "expected 'scheme:target'"),
    ("npz:", "empty target"),
    ("npz:/definitely/not/here.npz", "no such file"),
    ("python:pit_test_factories", "expected 'python:package.module:factory'"),
    ("python:a:b:c", "expected 'python:package.module:factory'"),
    ("python:pit_no_such_module_xyz:make", "cannot import module 'pit_no_such_module_xyz'"),
    ("python:pit_test_factories:missing", "has no attribute 'missing'"),
    ("python:pit_test_factories:NOT_CALLABLE", "is not callable"),
    ("python:pit_test_factories:make_nothing", "neither callable nor with infer()"),
    ("python:pit_test_factories:make_broken", "RuntimeError: weights missing"),
])
def test_bad_uris_give_one_line_loader_errors(factory_module, uri, fragment):
    with pytest.raises(LoaderError) as info:
        load(uri)
    message = str(info.value)
    assert isinstance(info.value, PitError)
    assert "\n" not in message
    assert repr(uri) in message
    assert fragment in message


def test_bad_npz_contents(tmp_path):
    np.savez(tmp_path / "partial.npz", W1=np.zeros((2, 3)), b1=np.zeros(3))
    with pytest.raises(LoaderError, match="missing arrays"):
        load(f"npz:{tmp_path / 'partial.npz'}")
    np.savez(tmp_path / "shapes.npz", W1=np.zeros((2, 3)), b1=np.zeros(4),
             W2=np.zeros((3, 2)), b2=np.zeros(2))
    with pytest.raises(LoaderError, match="inconsistent MLP shapes"):
        load(f"npz:{tmp_path / 'shapes.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(LoaderError, match=r"not a readable \.npz") as info:
        load(f"npz:{tmp_path / 'junk.npz'}")
    assert "\n" not in str(info.value)


def test_registry_is_pluggable():
    registry = LoaderRegistry()
    registry.register("const", lambda target, uri: RawModel(infer=lambda x: target,
                                                           test_input=0))
    model = registry.load("const:hello")
    assert isinstance(model, LoadedModel)
    assert model.infer(None) == "hello"
    assert registry.schemes == ["const"]
    with pytest.raises(LoaderError, match="known: const"):
        registry.load("npz:/x.npz")
    assert {"npz", "python"} <= set(default_registry.schemes)
    with pytest.raises(ValueError):
        registry.register("bad scheme", lambda t, u: RawModel(infer=lambda x: x))
