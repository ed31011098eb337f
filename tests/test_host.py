"""The allocator setting of the ``rmbandit`` command: a second call of a compiled program
reuses the memory the first one freed instead of faulting it in again."""
import subprocess
import sys

import pytest

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
