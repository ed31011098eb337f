"""The DPO step with LoRA adapters unmerged (the default, ``lora.unmerged``) against merged
kernels (``step.merge_adapters=true``), side by side in one process on this CPU: three
real batches of the training loop (SmolLM2-135M-Instruct float32, LoRA q/v r16, 4 prompts
x 4 samples, at most 48 new tokens, as ``train_batch.py``); for each way, the seconds to
trace, lower and compile the reference pass and the step for each batch shape, and the
median of 5 timed reference + step calls.

    PYTHONPATH=. python experiments/benchmarks/lora_step.py
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import statistics
import sys
import tempfile
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from train_batch import POOL  # noqa: E402

RESULTS = pathlib.Path(__file__).parent / "results" / "lora_step.json"
BATCHES = (1, 3, 5)


def loop_batches(trainer, state) -> list:
    """The (base, reference adapters, batch, real tokens) the loop's reference pass gets."""
    seen, reference = [], trainer._reference
    trainer._reference = lambda *args: (seen.append(args), reference(*args))[1]
    for step in BATCHES:              # each from the same state: the same samples for both ways
        trainer.train_batch({**state, "train": jax.tree.map(jnp.copy, state["train"])}, step)
    trainer._reference = reference
    return seen


def measure(model, config, state, batches, repeats=5) -> list[dict]:
    from rmbandit.training import step as step_lib
    reference = jax.jit(lambda base, ref, batch, tokens: step_lib.reference_logprobs(
        model, base, ref, batch, config, tokens), static_argnums=3)
    train_step = step_lib.jit_train_step(model, config)
    rows = []
    for base, adapters, batch, tokens in batches:
        start = time.perf_counter()
        reference.lower(base, adapters, batch, tokens).compile()
        train_step.lower(state, base, batch, response_tokens=tokens).compile()
        compile_s = time.perf_counter() - start
        batch = batch._replace(reference=jax.block_until_ready(reference(base, adapters, batch, tokens)))
        jax.block_until_ready(train_step(jax.tree.map(jnp.copy, state), base, batch, response_tokens=tokens))
        times = []
        for _ in range(repeats):
            copy = jax.tree.map(jnp.copy, state)
            start = time.perf_counter()
            jax.block_until_ready(reference(base, adapters, batch, tokens))
            jax.block_until_ready(train_step(copy, base, batch, response_tokens=tokens))
            times.append(time.perf_counter() - start)
        rows.append({"prompt_width": batch.prompt_ids.shape[1], "response_tokens": tokens,
                     "trace_lower_compile_s": compile_s, "reference_plus_step_s": statistics.median(times)})
    return rows


def main():
    from rmbandit import config as config_lib
    from rmbandit.training import loop
    from rmbandit.training.config import TrainConfig

    with tempfile.TemporaryDirectory() as run_dir:
        config = config_lib.load(TrainConfig, None, [
            f"run_dir={run_dir}", POOL, "train.prompts_per_batch=4", "sampling.num_samples=4",
            "sampling.max_new_tokens=48", "sampling.pairs_per_prompt=2", "data.batching=shuffled",
            "train.batches_per_iteration=16"])
        trainer = loop.Trainer(config, log=lambda m: None)
        state = trainer.fresh_state()
        batches = loop_batches(trainer, state)
        result = {}
        for name, merge in (("unmerged", False), ("merged", True), ("unmerged_again", False)):
            step_config = dataclasses.replace(config.step, merge_adapters=merge)
            result[name] = measure(trainer.model, step_config, state["train"], batches)
            print(name, json.dumps(result[name]), flush=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
