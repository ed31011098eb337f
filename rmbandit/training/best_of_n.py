"""Best-of-n with a routed RM: LASeR without policy training (ALGORITHMS.md section 2,
"Best-of-n mode"; LASeR section 3.3, used there on LongBench).

The policy stays fixed.  For each batch of training prompts:
  1. sample n responses per prompt (the Trainer's jitted sampler; the prefill gives LASeR's
     context, the prompts' last hidden states)
  2. the router picks the batch's RM; that RM scores the batch's samples and, per prompt,
     its best-scored response is the pick (``pick_best``)
  3. the router observes the picks' length-normalised NLL under the policy (``response_nll``)
     as the batch's loss: the bandit reward is its negative, quantile-rescaled over the
     reward history like LASeR's loss reward ("the negative normalized NLL loss")
Then the learned router routes the TEST set, batch by batch (no more learning), and every
RM scores those samples too, so the table compares on the same samples: the routed RM's
picks, each single RM's picks for all batches, the mean of the z-scored RM scores
(``ensembles.weighted_scores``), a uniformly random pick (its expected accuracy: the mean
correctness of the n samples) and pass@n (some sample is correct: the ceiling of any pick).
Accuracy is ``data.is_correct`` of the pick, per category; ``all`` is their mean.

Outputs in ``run_dir`` (named so that they never clobber a training run's files there):
``best_of_n.json`` (accuracies, RM utilisation, each training batch's row, the config) and
``best_of_n_rewards.png`` (the bandit reward per batch).  A run is short (sampling and
scoring only) and keeps no checkpoint: run it again to redo it.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rmbandit import config as config_lib
from rmbandit import data, parallel, routers, text
from rmbandit.models import lora as lora_lib
from rmbandit.training import report
from rmbandit.training.config import TrainConfig, check
from rmbandit.training.ensembles import weighted_scores
from rmbandit.training.evaluate import decode_responses
from rmbandit.training.loop import Trainer, batch_schedule, category_of

RESULTS_FILE = "best_of_n.json"
REWARDS_PLOT = "best_of_n_rewards.png"


@dataclasses.dataclass(frozen=True)
class BestOfNSection:
    test_prompts_per_batch: int | None = None   # prompts per routed test batch (None: train.prompts_per_batch)


@dataclasses.dataclass(frozen=True)
class BestOfNConfig(TrainConfig):
    """A training config (its policy, data, sampling, train, router, pool, eval and mesh
    sections; step is only read for the LoRA layout, which stays zero) plus ``best_of_n``.
    The training prompts: train.iterations x train.batches_per_iteration batches of
    train.prompts_per_batch; the test set: eval.per_category tasks per category."""
    run_dir: str = "runs/best_of_n"
    best_of_n: BestOfNSection = BestOfNSection()


def check_config(config: BestOfNConfig) -> None:
    """``training.config.check`` (less its pair and step checks) plus this mode's keys; a
    ValueError names the key."""
    check(config, pairs=False)
    picking = ("laser", "laser_exp3", "laser_neural_ucb", "single_rm", "random", "round_robin", "classifier")
    if config.router.name not in picking:
        raise ValueError(f"router.name={config.router.name}: best-of-n needs a router that picks one RM per batch "
                         f"({', '.join(picking)}); ensembles and per-pair routers label pairs, not picks")
    if config.router.join or config.router.cold_start is not None:
        raise ValueError("router.join and router.cold_start are training-run options; best-of-n starts its router "
                         "fresh with the whole pool")
    size = config.best_of_n.test_prompts_per_batch
    if size is not None and size < 1:
        raise ValueError(f"best_of_n.test_prompts_per_batch must be at least 1 (or null: train.prompts_per_batch), "
                         f"got {size}")


# ---- the pure pieces ---------------------------------------------------------------------------

def pick_best(scores) -> tuple[jax.Array, jax.Array]:
    """[P, n] scores (NaN: dropped) -> (index of each prompt's best-scored sample [P],
    whether it has one [P]).  Ties go to the first sample: the n samples are exchangeable
    draws, so that is a uniformly random one among the tied."""
    scores = jnp.asarray(scores, jnp.float32)
    finite = jnp.isfinite(scores)
    return jnp.argmax(jnp.where(finite, scores, -jnp.inf), axis=-1).astype(jnp.int32), finite.any(-1)


def response_nll(logprobs, mask) -> jax.Array:
    """Per-token negative log-likelihood of each sampled response under the policy:
    -sum log p(token) / length, from the sampler's log-probs [rows, T] (temperature 1)."""
    mask = jnp.asarray(mask, jnp.float32)
    return -jnp.sum(jnp.asarray(logprobs) * mask, -1) / jnp.maximum(mask.sum(-1), 1.0)


def test_batches(tasks: Sequence[data.Task], size: int, grouped: bool) -> list[list[data.Task]]:
    """The test set in batches of ``size`` (the last of a group may be smaller): one category
    per batch when ``grouped`` (as the training batches), else in the suite's order."""
    groups: dict[str, list[data.Task]] = {}
    for task in tasks:
        groups.setdefault(task.category if grouped else "", []).append(task)
    return [group[i:i + size] for group in groups.values() for i in range(0, len(group), size)]


def accuracy_of(correct: np.ndarray, categories: Sequence[str]) -> dict[str, float]:
    """Per-prompt correctness [N] -> per category and ``all`` (the mean of the categories)."""
    categories = np.asarray(categories)
    result = {str(c): float(np.mean(correct[categories == c])) for c in dict.fromkeys(categories.tolist())}
    result["all"] = float(np.mean(list(result.values()))) if result else float("nan")
    return result


@dataclasses.dataclass
class SampledBatch:
    """One batch of prompts with n responses each (rows i * n + j: sample j of prompt i)."""
    tasks: list[data.Task]
    prompt_ids: np.ndarray          # [P, L] left-padded chat prompts and their mask
    prompt_mask: np.ndarray
    tokens: np.ndarray              # [P * n, T] the responses' tokens and mask (EOS included)
    token_mask: np.ndarray
    responses: list[str]
    nll: np.ndarray                 # [P, n] per-token NLL of each response under the policy
    contexts: jax.Array             # [P, d] the router's contexts

    def correct(self) -> np.ndarray:
        """[P, n] whether each response answers its task."""
        n = self.nll.shape[1]
        return np.asarray([[data.is_correct(t, self.responses[i * n + j]) for j in range(n)]
                           for i, t in enumerate(self.tasks)], bool).reshape(self.nll.shape)


class BestOfN(Trainer):
    """Best-of-n runs on the Trainer's setup (policy, tokenizer, pool, router, jitted
    sampler and prompt embedding); ``run()`` learns the router, evaluates, writes the results."""

    forms_pairs = False

    def __init__(self, config: BestOfNConfig, log: Callable[[str], None] = print, progress: bool = False):
        check_config(config)
        super().__init__(config, log, progress)
        self._pick = jax.jit(pick_best)
        self._nll = jax.jit(response_nll)

    # ---- state --------------------------------------------------------------------------
    def fresh_state(self) -> dict:
        """The policy as the sampler takes it (zero LoRA adapters: the base itself; or the
        full params) and a fresh router; no optimiser, no reference."""
        key = jax.random.key(self.config.seed)
        if self.config.step.full_finetune:
            policy = self.base
        else:
            policy = self._replicated(lora_lib.init_lora(jax.random.fold_in(key, 1), self.base,
                                                         self.config.step.lora))
        router = self._replicated(self.router.init(jax.random.fold_in(key, 2), len(self.pool),
                                                   self.model.config.hidden_size))
        return {"policy": policy, "router": router}

    # ---- one batch ----------------------------------------------------------------------
    def sample(self, state: dict, tasks: list[data.Task], key: jax.Array) -> SampledBatch:
        cfg = self.config
        enc = text.encode_prompts(self.tokenizer, [t.prompt for t in tasks], cfg.policy.max_prompt_tokens)
        ids, mask = self._batch_sharded(enc["input_ids"]), self._batch_sharded(enc["attention_mask"])
        n = cfg.sampling.num_samples
        samples = self._sample(self.base, state["policy"], ids, mask, key, n, cfg.sampling.temperature,
                               cfg.sampling.max_new_tokens, weights=cfg.sampling.weights)
        tokens, token_mask = np.asarray(samples.tokens), np.asarray(samples.mask)
        nll = np.asarray(self._nll(samples.logprobs, samples.mask)).reshape(len(tasks), n)
        contexts = samples.prompt_hidden if cfg.router.pooling == "last" else self._embed(
            self.base, state["policy"], ids, mask)
        return SampledBatch(list(tasks), enc["input_ids"], enc["attention_mask"], tokens, token_mask,
                            decode_responses(self.tokenizer, tokens, token_mask), nll, contexts)

    def score(self, rm_index: int, batch: SampledBatch, rows: np.ndarray | None = None) -> np.ndarray:
        """RM ``rm_index``'s scores [len(rows), n] of the samples of prompts ``rows`` (all by default)."""
        n = batch.nll.shape[1]
        rows = np.arange(len(batch.tasks)) if rows is None else rows
        flat = [r * n + j for r in rows for j in range(n)]
        scores = self.pool[rm_index].score([batch.tasks[i // n].prompt for i in flat],
                                           [batch.responses[i] for i in flat])
        return np.asarray(scores, np.float32).reshape(len(rows), n)

    def route(self, state: dict, batch: SampledBatch, key: jax.Array) -> tuple[dict, routers.Assignment, np.ndarray]:
        router_state, assignment = self._assign(state["router"], batch.contexts, key)
        routers.check(assignment)
        return {**state, "router": router_state}, assignment, np.asarray(assignment.rms)

    def routed_scores(self, batch: SampledBatch, rms: np.ndarray) -> np.ndarray:
        """[P, n]: each prompt's samples scored by its routed RM (only that RM is called)."""
        scores = np.full(batch.nll.shape, np.nan, np.float32)
        for rm_index in np.unique(rms):
            rows = np.flatnonzero(rms == rm_index)
            scores[rows] = self.score(int(rm_index), batch, rows)
        return scores

    def learn_batch(self, state: dict, step: int) -> tuple[dict, dict]:
        """Training batch ``step``: sample, route, pick with the routed RM, observe the picks'
        NLL.  Returns the new state and the batch's row."""
        cfg = self.config
        iteration, index = divmod(step, cfg.train.batches_per_iteration)
        tasks = batch_schedule(self.train_tasks, cfg, iteration)[index]
        route_key, sample_key = jax.random.split(jax.random.fold_in(jax.random.key(cfg.seed), 1000 + step))
        started = time.perf_counter()
        with parallel.use_mesh(self.mesh):
            batch = self.sample(state, tasks, sample_key)
            state, assignment, rms = self.route(state, batch, route_key)
            picks, has_pick = (np.asarray(x) for x in self._pick(self.routed_scores(batch, rms)))
            picked_nll = batch.nll[np.arange(len(tasks)), picks][has_pick]
            correct = batch.correct()[np.arange(len(tasks)), picks] & has_pick
            row = {"step": step, "iteration": iteration, "batch": index, "category": category_of(tasks),
                   "rm": self.rm_names[rms[0]] if (rms == rms[0]).all() and rms[0] >= 0 else "mixed",
                   "rm_picks": {name: int(np.sum(has_pick & (rms == k)))
                                for k, name in enumerate(self.rm_names)},
                   "picks": int(has_pick.sum()), "pick_accuracy": float(correct.mean()),
                   "nll": float(picked_nll.mean()) if picked_nll.size else None, "bandit_reward": None}
            loss = row["nll"] if picked_nll.size else cfg.router.empty_batch_loss
            if loss is not None:       # no pick and no router.empty_batch_loss: the router hears nothing
                row["bandit_reward"], router_state = self._learn(state["router"], assignment, loss)
                state = {**state, "router": router_state}
        row["time_batch"] = time.perf_counter() - started
        return state, row

    def test_batch(self, state: dict, tasks: list[data.Task], index: int) -> tuple[dict, dict]:
        """Route test batch ``index`` with the learned router (it learns nothing more); every
        RM scores the samples so each method picks among the same ones."""
        route_key, sample_key = jax.random.split(jax.random.fold_in(jax.random.key(self.config.seed), 10 ** 6 + index))
        with parallel.use_mesh(self.mesh):
            batch = self.sample(state, tasks, sample_key)
            state, _, rms = self.route(state, batch, route_key)
            every = np.stack([self.score(k, batch) for k in range(len(self.pool))])      # [K, P, n]
        rows = np.arange(len(tasks))
        correct = batch.correct()

        def picked(scores):
            index, has = (np.asarray(x) for x in self._pick(scores))
            return correct[rows, index] & has

        mixed = np.asarray(weighted_scores(every, np.ones(len(self.pool))))                  # [P, n]
        routed = every[rms, rows]                                                            # [P, n]
        record = {"category": [t.category for t in tasks], "batch_category": category_of(tasks), "rms": rms,
                  "routed": picked(routed),
                  "single_rm": {name: picked(every[k]) for k, name in enumerate(self.rm_names)},
                  "score_ensemble": picked(mixed),
                  "random": correct.mean(1), "pass_at_n": correct.any(1)}
        return state, record

    # ---- the run ------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.config
        run_dir = pathlib.Path(cfg.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.log(f"{run_dir}: best-of-{cfg.sampling.num_samples} on {cfg.total_batches} training batches, router "
                 f"{cfg.router.name}, RMs {', '.join(self.rm_names)}")
        state = self.fresh_state()
        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.total_batches, unit="batch", desc="best-of-n")
        rows = []
        for step in range(cfg.total_batches):
            state, row = self.learn_batch(state, step)
            rows.append(row)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(rm=row["rm"], nll="-" if row["nll"] is None else f"{row['nll']:.3f}")
        if bar is not None:
            bar.close()
        size = cfg.best_of_n.test_prompts_per_batch or cfg.train.prompts_per_batch
        records = []
        for index, tasks in enumerate(test_batches(self.test_tasks, size, cfg.data.batching == "grouped")):
            state, record = self.test_batch(state, tasks, index)
            records.append(record)
        self.state = state
        results = self.results(rows, records)
        (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=1))
        report.plot_bandit_rewards(rows, self.rm_names, run_dir / REWARDS_PLOT)
        self.log(format_table(results))
        self.log(f"wrote {run_dir / RESULTS_FILE}, {run_dir / REWARDS_PLOT}")
        return results

    def results(self, rows: list[dict], records: list[dict]) -> dict:
        categories = list(self.config.data.categories)
        test_categories = [c for r in records for c in r["category"]]
        joined = lambda get: np.concatenate([np.asarray(get(r), float) for r in records])       # noqa: E731
        accuracy = {"routed": accuracy_of(joined(lambda r: r["routed"]), test_categories),
                    **{f"rm:{name}": accuracy_of(joined(lambda r: r["single_rm"][name]), test_categories)
                       for name in self.rm_names},
                    "score_ensemble": accuracy_of(joined(lambda r: r["score_ensemble"]), test_categories),
                    "random": accuracy_of(joined(lambda r: r["random"]), test_categories),
                    "pass_at_n": accuracy_of(joined(lambda r: r["pass_at_n"]), test_categories)}
        # report.utilisation counts "rm_pairs" per category: here, the picks each RM made
        train_picks = [{"category": r["category"], "rm_pairs": r["rm_picks"]} for r in rows]
        test_picks = [{"category": r["batch_category"],
                       "rm_pairs": {name: int(np.sum(r["rms"] == k)) for k, name in enumerate(self.rm_names)}}
                      for r in records]
        rewards = [r["bandit_reward"] for r in rows if r["bandit_reward"] is not None]
        return {"router": self.config.router.name, "rm_names": self.rm_names, "categories": categories,
                "num_samples": self.config.sampling.num_samples,
                "accuracy": accuracy,
                "utilisation": {"train": report.utilisation(train_picks, self.rm_names, categories),
                                "test": report.utilisation(test_picks, self.rm_names, categories)},
                "train": {"batches": len(rows), "mean_bandit_reward": float(np.mean(rewards)) if rewards else None,
                          "pick_accuracy": float(np.mean([r["pick_accuracy"] for r in rows])) if rows else None,
                          "rows": rows},
                "test": {"batches": len(records), "prompts": len(test_categories)},
                "config": config_lib.to_dict(self.config)}


def format_table(results: dict) -> str:
    """Accuracy of each way of picking, per category, and the routed RM's test utilisation."""
    columns = [c for c in results["categories"] if c in results["accuracy"]["routed"]] + ["all"]
    width = max(len(name) for name in results["accuracy"]) + 2
    lines = [f"best-of-{results['num_samples']} accuracy on the test set (router: {results['router']})",
             f"{'pick by':{width}s}" + "".join(f"{c[:15]:>16s}" for c in columns)]
    for method, accuracy in results["accuracy"].items():
        lines.append(f"{method:{width}s}" + "".join(f"{accuracy[c]:16.3f}" for c in columns))
    lines.append("routed RM per test category: " + "; ".join(
        f"{category}: " + ", ".join(f"{name} {100 * share:.0f}%" for name, share in shares.items() if share)
        for category, shares in results["utilisation"]["test"].items() if any(shares.values())))
    return "\n".join(lines)


def best_of_n(config: BestOfNConfig, log: Callable[[str], None] = print, progress: bool = False) -> dict:
    return BestOfN(config, log, progress).run()
