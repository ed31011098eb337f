"""The process settings of the ``rmbandit`` command: the allocator (a second call of a
compiled program reuses the memory the first one freed instead of faulting it in again) and
the persistent compilation cache."""
import json
import os
import platform
import subprocess
import sys

import pytest

from rmbandit import host

PROGRAM = """
import resource, sys
from rmbandit import host
applied = host.retain_freed_memory() if sys.argv[1] == "retain" else False
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sum(jnp.exp(x @ x) * x))       # a 64 MB temporary
x = jnp.ones((4096, 4096), jnp.float32) * 1e-4
f(x).block_until_ready(); f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
f(x).block_until_ready()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(mode):
    out = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, check=True)
    applied, count = out.stdout.split()
    return applied == "True", int(count)


def test_retained_memory_is_reused_without_page_faults():
    applied, retained = faults("retain")
    if not applied:
        pytest.skip("not glibc: mallopt is unavailable")
    _, default = faults("default")
    assert default > 8000            # the 64 MB temporary (16k pages), faulted in on every call
    assert retained < default / 10


# --- the persistent compilation cache --------------------------------------------------------

CACHE_PROGRAM = """
import json, sys
import jax.monitoring
from rmbandit import host
events = []
jax.monitoring.register_event_listener(lambda event, **_: events.append(event))
directory = host.use_compile_cache(sys.argv[1] if len(sys.argv) > 1 else None)
import jax, jax.numpy as jnp
jax.jit(lambda x: jnp.tanh(x @ x.T).sum())(jnp.ones((64, 64))).block_until_ready()
print(json.dumps({"directory": None if directory is None else str(directory),
                  "hits": sum(e.endswith("cache_hits") for e in events),
                  "misses": sum(e.endswith("cache_misses") for e in events)}))
"""


def cache_env(**extra):
    """This environment without a cache directory of its own (the test fixtures' ones), plus ``extra``."""
    unset = ("JAX_COMPILATION_CACHE_DIR", "RMBANDIT_COMPILE_CACHE")
    return {**{k: v for k, v in os.environ.items() if k not in unset}, **extra}


def cached_run(*args, **env):
    # JAX writes only programs that took a second to compile, unless told otherwise
    env = cache_env(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", **env)
    out = subprocess.run([sys.executable, "-c", CACHE_PROGRAM, *args], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return {**json.loads(out.stdout.splitlines()[-1]), "stderr": out.stderr}


def test_a_second_process_loads_the_compiled_program_from_the_host_cache(tmp_path):
    first = cached_run(RMBANDIT_COMPILE_CACHE=str(tmp_path))
    assert first["directory"] == str(tmp_path / host.host_key())
    assert first["hits"] == 0 and first["misses"] >= 1
    assert list((tmp_path / host.host_key()).iterdir())            # the program was written
    second = cached_run(RMBANDIT_COMPILE_CACHE=str(tmp_path))
    assert second["hits"] >= 1 and second["misses"] == 0


def test_the_cache_can_be_turned_off_and_jax_own_setting_wins(tmp_path):
    off = cached_run(RMBANDIT_COMPILE_CACHE="off")
    assert off["directory"] is None and off["hits"] == off["misses"] == 0
    theirs = tmp_path / "theirs"
    kept = cached_run(str(tmp_path / "ours"), JAX_COMPILATION_CACHE_DIR=str(theirs))
    assert kept["directory"] == str(theirs)
    assert not (tmp_path / "ours").exists()


def test_an_unwritable_cache_is_a_clear_error_and_the_command_stops(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    env = cache_env(RMBANDIT_COMPILE_CACHE=str(blocker))
    out = subprocess.run([sys.executable, "-m", "rmbandit", "simulate", "--pairs", "64"], capture_output=True,
                         text=True, env=env)
    assert out.returncode == 2
    assert "RMBANDIT_COMPILE_CACHE" in out.stderr and str(blocker) in out.stderr and "off" in out.stderr


CPUINFO = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile

processor\t: 1
model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu avx2 avx512f amx_bf16 amx_tile
"""


def test_host_key_names_the_cpu_model_and_its_instruction_set():
    same = host.host_key(CPUINFO)
    assert same == host.host_key(CPUINFO.replace("processor\t: 1", "processor\t: 7"))
    assert same != host.host_key(CPUINFO.replace("amx_bf16 amx_tile", "", 1))        # no AMX: other code
    assert same != host.host_key(CPUINFO.replace("8481C", "8581C"))
    assert host.host_key().startswith(platform.machine())


LOWERING_PROGRAM = """
import hashlib, jax, jax.numpy as jnp, numpy as np
from rmbandit.models import LlamaModel, ModelConfig
from rmbandit.models.sampling import generate, with_bfloat16_weights
from rmbandit.training import step as step_lib
config = ModelConfig(model_type="llama", vocab_size=61, hidden_size=32, intermediate_size=48, num_layers=4,
                     num_heads=4, num_kv_heads=2, head_dim=8)
model = LlamaModel(config)
params = jax.tree.map(lambda x: getattr(x, "value", x), model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))[
    "params"], is_leaf=lambda x: hasattr(x, "value"))
step_config = step_lib.StepConfig(lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"))
state = step_lib.init_state(jax.random.key(1), params, step_config)
ones = lambda *shape: jnp.ones(shape, jnp.int32)
batch = step_lib.PairBatch(ones(2, 6), ones(2, 6), ones(2, 2, 5), ones(2, 2, 5), jnp.zeros((2, 1), jnp.int32),
                           ones(2, 1), jnp.ones((2, 1)), jnp.zeros((2, 2)))
step = step_lib.jit_train_step(model, step_config).lower(state, params, batch, response_tokens=64)
merged = lambda trained: with_bfloat16_weights(model, step_lib.policy_params(params, trained, step_config))
sample = jax.jit(lambda trained, key: generate(*merged(trained), ones(2, 6), ones(2, 6), key, max_new_tokens=4,
                                               num_samples=2)).lower(state.params, jax.random.key(2))
print(" ".join(hashlib.sha256(low.as_text().encode()).hexdigest() for low in (step, sample)))
"""


def test_the_loop_programs_are_the_same_text_in_every_process():
    """The persistent cache finds a program by its text: iterating a set of names (whose
    order follows each process's string hashes) would give every run new keys."""
    texts = set()
    for seed in ("1", "2", "3"):
        out = subprocess.run([sys.executable, "-c", LOWERING_PROGRAM], capture_output=True, text=True,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.returncode == 0, out.stderr[-2000:]
        texts.add(out.stdout.splitlines()[-1])         # the step's and the sampler's digests
    assert len(texts) == 1


def test_an_unwritable_default_cache_warns_and_the_run_goes_on(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    out = cached_run(XDG_CACHE_HOME=str(blocker))             # no RMBANDIT_COMPILE_CACHE: the default place
    assert out["directory"] is None and out["hits"] == out["misses"] == 0
    assert "running without a compilation cache" in out["stderr"] and "RMBANDIT_COMPILE_CACHE" in out["stderr"]
