"""experiments/benchmarks/gpu_loop.py, the run prepared for a lent GPU, on toy shapes on this
CPU: a lease is minutes, so the script must not be found broken there."""
import importlib.util
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rmbandit import parallel
from rmbandit.models import LlamaModel, ModelConfig

SCRIPT = pathlib.Path(__file__).parents[1] / "experiments" / "benchmarks" / "gpu_loop.py"


@pytest.fixture(scope="module")
def gpu_loop():
    spec = importlib.util.spec_from_file_location("gpu_loop", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_random_params_have_the_model_shapes_and_scales(gpu_loop):
    model = LlamaModel(ModelConfig(model_type="llama", **gpu_loop.SHAPES["tiny"]), dtype=jnp.bfloat16)
    params = gpu_loop.random_params(model, jax.random.key(0))
    shapes = parallel.abstract_params(model, (jnp.zeros((1, 1), jnp.int32),))
    assert jax.tree.structure(params) == jax.tree.structure(shapes)
    for leaf, shape in zip(jax.tree.leaves(params), jax.tree.leaves(shapes)):
        assert (leaf.shape, leaf.dtype) == (shape.shape, shape.dtype)
        values = np.asarray(leaf, np.float32)
        if leaf.ndim == 1:                       # norm scales
            np.testing.assert_array_equal(values, 1.0)
        else:
            assert abs(values.std() - 0.02) < 0.004 and abs(values.mean()) < 0.004
    matrices = [np.asarray(x, np.float32) for x in jax.tree.leaves(params) if x.ndim == 2]
    assert not any(np.array_equal(a, b) for i, a in enumerate(matrices) for b in matrices[i + 1:] if a.shape == b.shape)


@pytest.mark.parametrize("variant", [dict(), dict(real_tokens=True, attention="xla")])
def test_the_step_part_runs_and_shares_the_weights_of_a_shape(gpu_loop, variant, tmp_path):
    cache = {}
    args = ("tiny", 2, 2, 8, 8, 1)
    first = gpu_loop.step_benchmark(*args, dtype=jnp.float32, params_cache=cache, **variant)
    # the adapters start at zero: the policy is the reference and the DPO loss is log 2
    assert first["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert first["step_ms"] > 0 and first["reference_ms"] > 0 and first["step_mfu"] > 0
    assert {"reference", "step", "lower", "wall"} <= set(first["compile_s"])
    assert first["tokens_per_step"] == 2 * (8 + 2 * 8)
    (weights,) = cache.values()
    second = gpu_loop.step_benchmark(*args, dtype=jnp.float32, params_cache=cache, compile_threads=1,
                                     profile_dir=tmp_path / "profile", **variant)
    assert next(iter(cache.values())) is weights          # drawn once per shape
    assert second["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert second["profile"]["by_category"], second["profile"]
