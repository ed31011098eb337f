"""One training batch end to end, rmbandit's loop vs TRL's online DPO, side by side in one
run on this CPU: the same policy (SmolLM2-135M-Instruct GGUF, float32), LoRA q/v r16,
4 prompts x 4 samples, 48 new tokens at T = 0.8, 8 pairs (2 per prompt), beta 0.1.
rmbandit runs twice: with its default sampler (``sampling.weights=bfloat16``: bfloat16
copies of the weights, float32 activations and accumulation) and with the policy's float32
weights, as TRL samples; TRL trains and samples in float32.

rmbandit's batch: sample (and the prompts' contexts from the same prefill), LASeR routing
over three rule-based RMs, scoring, pairs, reference log-probs, the DPO step, the router's
update.  TRL's: ``experiments/benchmarks/trl_online_dpo.py`` (its docstring says what it
runs and how it is timed) in its own venv, run as a subprocess before and after ours, so
that load on the shared cores hits both.

    PYTHONPATH=. python experiments/benchmarks/train_batch.py [--bench-python /work/bench-venv/bin/python]

Compiles are kept out: a batch whose prompt width or real response tokens (bucketed) are
new compiles its sampling and step programs; the median is over the batches after
``--warmup`` that traced and compiled nothing (``jax.monitoring``'s trace, lowering and
backend-compile events), and those seconds are reported apart.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import tempfile
import time

RESULTS = pathlib.Path(__file__).parent / "results" / "train_batch.json"
# three rule-based RMs that always give pairs (noisy correctness, three noise streams): every
# batch trains, as every TRL batch does, and the router still chooses among three
POOL = ("pool=[{name: noisy-a, kind: verifier, verifier: correctness, noise: 1.0, seed: 0}, "
        "{name: noisy-b, kind: verifier, verifier: correctness, noise: 1.0, seed: 1}, "
        "{name: noisy-c, kind: verifier, verifier: correctness, noise: 1.0, seed: 2}]")
# a batch with any of these traced or compiled something (a retrace can reuse an executable,
# so XLA's compile alone misses some)
COMPILE_EVENTS = ("backend_compile_duration", "jaxpr_trace_duration", "jaxpr_to_mlir_module_duration")
PHASES = ("time_sample", "time_router", "time_score", "time_step", "time_batch")


def rmbandit_batches(warmup: int, batches: int, sampling_weights: str) -> dict:
    import jax.monitoring

    from rmbandit import config as config_lib
    from rmbandit.training import loop
    from rmbandit.training.config import TrainConfig

    with tempfile.TemporaryDirectory() as run_dir:
        config = config_lib.load(TrainConfig, None, [
            f"run_dir={run_dir}", POOL, "train.prompts_per_batch=4",
            "sampling.num_samples=4", "sampling.max_new_tokens=48", "sampling.pairs_per_prompt=2",
            f"sampling.weights={sampling_weights}", "step.learning_rate=5e-6", "data.batching=shuffled",
            f"train.batches_per_iteration={warmup + batches}"])
        trainer = loop.Trainer(config, log=lambda m: None)
        compiling = [0.0]          # seconds of tracing, lowering and XLA compile in the batch
        jax.monitoring.register_event_duration_secs_listener(
            lambda event, seconds, **_: compiling.__setitem__(0, compiling[0] + seconds)
            if event.endswith(COMPILE_EVENTS) else None)
        state, rows = trainer.fresh_state(), []
        for step in range(warmup + batches):
            compiling[0] = 0.0
            state, row = trainer.train_batch(state, step)
            rows.append({**row, "compile_s": compiling[0]})
            print(f"rmbandit ({sampling_weights} sampling) batch {step}: " + " ".join(f"{p[5:]} {row[p]:.2f}" for p in PHASES)
                  + f" (compiling {compiling[0]:.1f})", flush=True)
    timed = [r for r in rows[warmup:] if not r["skipped"] and r["compile_s"] == 0.0]
    if not timed:
        raise SystemExit("every timed batch compiled something: run with more --batches")
    return {"timed_batches": len(timed), "compile_s": [round(r["compile_s"], 1) for r in rows],
            "median_seconds": {p[5:]: statistics.median(r[p] for r in timed) for p in PHASES},
            "fastest_batch": {p[5:]: v for p, v in min(timed, key=lambda r: r["time_batch"]).items() if p in PHASES},
            "router_share": statistics.median(r["time_router"] / r["time_batch"] for r in timed),
            "pairs": [r["pairs"] for r in timed], "rms": [r["rm"] for r in timed]}


def trl_batches(python: str, warmup: int, batches: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        path = pathlib.Path(out) / "trl.json"
        subprocess.run([python, str(pathlib.Path(__file__).parent / "trl_online_dpo.py"), "--warmup", str(warmup),
                        "--batches", str(batches), "--out", str(path)], check=True,
                       env={**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[2])})
        return json.loads(path.read_text())


def main():
    from rmbandit import host
    host.retain_freed_memory()          # before JAX runs anything, as the rmbandit command does
    parser = argparse.ArgumentParser()
    parser.add_argument("--bench-python", default="/work/bench-venv/bin/python",
                        help="a Python with torch, trl and peft (see trl_online_dpo.py)")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--batches", type=int, default=12)
    args = parser.parse_args()
    start = time.time()
    trl_first = trl_batches(args.bench_python, 1, 3)
    ours = rmbandit_batches(args.warmup, args.batches, "bfloat16")           # the default
    ours_float32 = rmbandit_batches(args.warmup, args.batches, "policy")     # float32 weights, as TRL samples
    trl_second = trl_batches(args.bench_python, 1, 3)
    trl_total = statistics.median([trl_first["median_seconds"]["total"], trl_second["median_seconds"]["total"]])
    trl_fastest = min(trl_first["fastest_batch"]["total"], trl_second["fastest_batch"]["total"])
    result = {
        "host": platform.processor() or platform.machine(), "cores": os.cpu_count(), "wall_s": time.time() - start,
        "rmbandit": ours, "trl_runs": [trl_first["median_seconds"], trl_second["median_seconds"]],
        "trl_median_total_s": trl_total, "trl_fastest_total_s": trl_fastest,
        "speedup_median": trl_total / ours["median_seconds"]["batch"],
        "speedup_fastest": trl_fastest / ours["fastest_batch"]["batch"],
        "rmbandit_float32_sampling": ours_float32,
        "speedup_median_float32_sampling": trl_total / ours_float32["median_seconds"]["batch"],
        "load_average_after": os.getloadavg(),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k not in ("trl_runs",)}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
