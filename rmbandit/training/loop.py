"""Iterative preference training with RM routing (ALGORITHMS.md sections 1-2).

For each of M iterations x T batches of prompts:
  1. route:  the policy's prompt embeddings -> ``router.assign`` -> the RM of the batch
  2. sample: n responses per prompt from the policy (jitted KV-cache sampling)
  3. score:  the routed RM scores them; P random pairs per prompt with a strict score gap
  4. step:   reference log-probs (no gradient), then the jitted DPO step on the pairs
  5. learn:  ``router.observe`` with the batch's loss (LASeR: quantile-rescaled -loss)
A batch that forms no pair skips 4 and 5 (and says so in its metrics row).  After each
iteration: greedy accuracy per category on the test split and, for LASeR, pi_ref <- pi.

Everything a resume needs is checkpointed with orbax every ``checkpoint.every`` batches
and after every iteration: the trained params and optimiser, the reference, the router
(with its reward history), the RMs' state (RNG counters, caches), the accuracies so far
and the position.  Randomness comes from ``fold_in(key(seed), batch index)`` and the data
order from (seed, iteration), so a resumed run ends bit-identical to an uninterrupted one.
"""
from __future__ import annotations

import functools
import json
import math
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from rmbandit import config as config_lib
from rmbandit import bandits, data, parallel, routers, text
from rmbandit.models import load_pretrained, load_tokenizer, prompt_embeddings
from rmbandit.models.sampling import bucket, generate, with_bfloat16_weights
from rmbandit.rewards import labels as labels_lib
from rmbandit.rewards import pool as pool_lib
from rmbandit.training import report
from rmbandit.training import step as step_lib
from rmbandit.training import ensembles
from rmbandit.training.config import ENSEMBLE_ROUTERS, PER_PAIR_ROUTERS, TrainConfig, check
from rmbandit.training.evaluate import accuracy_by_category, decode_responses
from rmbandit.training.pairs import candidate_pairs, labelled, sample_pairs


class TrainingDiverged(FloatingPointError):
    """A non-finite loss or gradient: the run stops before anything of that batch is saved."""


class CheckpointUnreadable(RuntimeError):
    """The checkpoint to resume from cannot be read (cut short: a full disk, a copy that
    stopped); the message names the earlier one to resume from instead."""


def make_router(config: TrainConfig, rm_names: list[str], offline=None) -> routers.Router:
    """The router ``router.name`` names (one config key switches method)."""
    cfg = config.router
    laser_bandits = {"laser": lambda: bandits.linucb(alpha=cfg.alpha), "laser_exp3": bandits.exp3,
                     "laser_neural_ucb": bandits.neural_ucb}
    if cfg.name in laser_bandits:
        bandit = laser_bandits[cfg.name]()
        if cfg.cost_weight:            # learns from the rescaled reward - weight * cost of the RM
            bandit = bandits.cost_aware(bandit, cfg.cost_weight)
        return routers.laser_with(bandit, history=cfg.history)
    if cfg.name == "single_rm":
        return routers.single_rm(rm_names.index(cfg.rm))
    if cfg.name == "random":
        return routers.uniform_random("batch", history=cfg.history)
    if cfg.name == "round_robin":
        return routers.round_robin("batch", history=cfg.history)
    if cfg.name == "online_ensemble":
        return routers.online_ensemble(learning_rate=cfg.learning_rate)
    if cfg.name in ENSEMBLE_ROUTERS:          # every RM labels; ENSEMBLE_RULES combine their scores
        return routers.majority_vote()
    if cfg.name == "random_pair":
        return routers.uniform_random("item", history=cfg.history)
    if cfg.name == "bayesian":
        prior = offline.prior_mean() if cfg.prior == "offline" else None
        return routers.bayesian_router(prior_mean=prior, prior_var=cfg.prior_var, noise_var=cfg.noise_var,
                                       reward=cfg.reward, light_rms=cfg.light_rms, online=cfg.online, mix=cfg.mix,
                                       history=cfg.history)
    raise ValueError(f"router.name {cfg.name!r} is not a training router")


# how the ensembles turn every RM's scores [K, prompts, n] into weighted pairs
ENSEMBLE_RULES = {
    "score_ensemble": lambda scores, per_prompt, key, cfg, weights: ensembles.score_ensemble(scores, per_prompt, key),
    "agreement_ensemble": lambda scores, per_prompt, key, cfg, weights: ensembles.agreement_ensemble(
        scores, per_prompt, key, candidates=cfg.candidates),
    "majority_vote": lambda scores, per_prompt, key, cfg, weights: ensembles.majority_vote(scores, per_prompt, key),
    "uwo": lambda scores, per_prompt, key, cfg, weights: ensembles.uwo(scores, per_prompt, key),
    "online_ensemble": lambda scores, per_prompt, key, cfg, weights: ensembles.weighted_score_ensemble(
        scores, weights, per_prompt, key),
}


class _NoFeatures:
    """Per-pair routers that ignore contexts (random per pair) route on a constant."""

    def features(self, prompts, a, b):
        return np.ones((len(prompts), 1), np.float32)


def load_offline_router(path, rm_names: list[str]):
    """The offline router a per-pair router routes with (its features, its prior), checked
    against the pool: its BT head has one row per RM, by name."""
    if path is None:
        return _NoFeatures()
    from rmbandit.training import offline_router
    return offline_router.load(path, rm_names=rm_names)


def batch_schedule(tasks: list[data.Task], config: TrainConfig, iteration: int) -> list[list[data.Task]]:
    """The iteration's batches of prompts, from (seed, iteration) alone.  ``grouped``: every
    batch holds one category (shuffled within it); ``shuffled``: all tasks shuffled."""
    rng = np.random.default_rng([config.seed, iteration])
    size, wanted = config.train.prompts_per_batch, config.train.batches_per_iteration
    if config.data.batching == "shuffled":
        pools = [[tasks[i] for i in rng.permutation(len(tasks))]]
    else:
        by_category: dict[str, list[data.Task]] = {}
        for task in tasks:
            by_category.setdefault(task.category, []).append(task)
        pools = [[group[i] for i in rng.permutation(len(group))] for group in by_category.values()]
    batches = [pool[i:i + size] for pool in pools for i in range(0, len(pool) - size + 1, size)]
    if not batches:
        raise ValueError(f"train.prompts_per_batch={size} is more than the tasks of a category "
                         f"(data.train_per_category={config.data.train_per_category})")
    order = rng.permutation(len(batches))
    return [batches[order[i % len(batches)]] for i in range(wanted)]


def category_of(batch: list[data.Task]) -> str:
    categories = {t.category for t in batch}
    return categories.pop() if len(categories) == 1 else "mixed"


class Trainer:
    """One training run in ``config.run_dir``; ``run()`` trains (resuming from the latest
    checkpoint there, if any) and returns the summary."""

    forms_pairs = True          # False: a subclass that takes no step (best-of-n) skips the pair checks

    def __init__(self, config: TrainConfig, log: Callable[[str], None] = print, progress: bool = False):
        check(config, pairs=self.forms_pairs)
        self.config, self.log, self.progress = config, log, progress
        self.run_dir = pathlib.Path(config.run_dir)
        devices = jax.devices()
        if config.mesh.devices is not None:
            if config.mesh.devices > len(devices):
                raise ValueError(f"mesh.devices={config.mesh.devices} but this process sees {len(devices)} "
                                 f"{devices[0].platform} device(s); lower it, or null for all of them")
            devices = devices[:config.mesh.devices]
        self.mesh = parallel.make_mesh(config.mesh.data, config.mesh.fsdp, config.mesh.tensor, devices)
        self.train_tasks = data.load_suite("train", size_per_category=config.data.train_per_category,
                                           categories=config.data.categories, seed=config.seed)
        self.test_tasks = data.load_suite("test", size_per_category=config.eval.per_category,
                                          categories=config.data.categories, seed=config.seed)
        pool_lib.check_entries(config.pool)                   # before any model loads
        path = pool_lib.resolve_path(config.policy.path)
        self.tokenizer = load_tokenizer(path)
        dtype = jnp.dtype(config.policy.dtype)
        model, self.base = load_pretrained(path, dtype, mesh=self.mesh)
        self.model = model.clone(remat=config.policy.remat, attention=config.policy.attention)
        self.pool = pool_lib.build_pool(config.pool, self.train_tasks + self.test_tasks)
        pairwise = [rm.name for rm in self.pool if not rm.pointwise]
        if pairwise:
            raise ValueError(f"RM(s) {pairwise} are pairwise judges; the training loop scores each response "
                             "(pointwise): use mode: pointwise for judges")
        self.rm_names = [rm.name for rm in self.pool]
        # arm k of the router is RM arm_rms[k]: the RMs there from the start, then those that join
        late = [self.rm_names.index(name) for name in config.router.join]
        self.arm_rms = np.array([i for i in range(len(self.pool)) if i not in late] + late, np.int32)
        self.first_arms = len(self.pool) - len(late)
        self.per_pair = config.router.name in PER_PAIR_ROUTERS
        # per-pair routers route on the offline router's pair features (its encoder, its width)
        self.offline = load_offline_router(config.router.offline, self.rm_names) if self.per_pair else None
        if not self.per_pair:
            self.context_dim = self.model.config.hidden_size             # the prompts' hidden states
        else:
            self.context_dim = 1 if isinstance(self.offline, _NoFeatures) else self.offline.prior_mean().shape[1]
        self.router = (self._classifier_router() if config.router.name == "classifier"
                       else make_router(config, self.rm_names, self.offline))
        self.relabels = config.router.name == "online_ensemble" or (
            config.router.name == "bayesian" and config.router.reward != "baseline")
        self.eos_ids = tuple(sorted({self.tokenizer.eos_token_id} - {None}))
        self.pad_id = text.pad_id(self.tokenizer)
        self._compile()

    # ---- the jitted pieces --------------------------------------------------------------
    def _compile(self):
        model, cfg = self.model, self.config
        self._everywhere = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())   # replicated
        step_cfg = cfg.step

        def merged(base, trained):
            return step_lib.policy_params(base, trained, step_cfg)

        self._embed = jax.jit(lambda base, trained, ids, mask: prompt_embeddings(
            model, merged(base, trained), ids, mask, cfg.router.pooling))

        @functools.partial(jax.jit, static_argnames=("samples", "temperature", "max_new", "weights"))
        def sample(base, trained, ids, mask, key, samples, temperature, max_new, weights="policy"):
            sampler, params = model, merged(base, trained)
            if weights == "bfloat16":
                sampler, params = with_bfloat16_weights(model, params)
            return generate(sampler, params, ids, mask, key, max_new_tokens=max_new,
                            num_samples=samples, temperature=temperature, top_p=cfg.sampling.top_p,
                            eos_ids=self.eos_ids, pad_id=self.pad_id)

        self._sample = sample
        self._reference = jax.jit(lambda base, ref, batch, tokens: step_lib.reference_logprobs(
            model, base, ref, batch, step_cfg, tokens), static_argnums=3)
        # LoRA state: replicated (small), kept so; full fine-tuning: as the params are sharded
        self._step = step_lib.jit_train_step(model, step_cfg, None if step_cfg.full_finetune else self._everywhere)
        self._assign = jax.jit(self.router.assign)
        self._observe = jax.jit(self.router.observe)
        self._reward = jax.jit(self.router.reward) if self.router.reward else None
        self._pairs = jax.jit(sample_pairs, static_argnums=1)

    def _replicated(self, tree):
        return jax.device_put(tree, self._everywhere)

    def _batch_sharded(self, array: np.ndarray, axis: int = 0):
        spec = [None] * array.ndim
        spec[axis] = ("data", "fsdp")
        spec = parallel.fit_spec(jax.sharding.PartitionSpec(*spec), array.shape, self.mesh)
        return jax.device_put(array, jax.sharding.NamedSharding(self.mesh, spec))

    # ---- state --------------------------------------------------------------------------
    def fresh_state(self, step: int = 0) -> dict:
        """The state a run starts from; at ``step`` > 0, one shaped as the checkpoint after
        ``step`` batches (the router has grown if RMs joined before)."""
        key = jax.random.key(self.config.seed)
        train = step_lib.init_state(jax.random.fold_in(key, 1), self.base, self.config.step)
        if not self.config.step.full_finetune:
            train = self._replicated(train)
        router = self.router.init(jax.random.fold_in(key, 2), self.first_arms, self.context_dim)
        if self.config.router.cold_start is not None:
            router = self._cold_start(router)
        if self._grown(step):
            router = self._grow(router)
        return {"train": train, "reference": _copy(train.params), "router": self._replicated(router)}

    def _grown(self, step: int) -> bool:
        """Whether the RMs of ``router.join`` are arms after ``step`` batches."""
        return bool(self.config.router.join) and step > self.config.router.join_batch

    def _arm_names(self, step: int) -> list[str]:
        """The RM of each router arm after ``step`` batches (a cold start maps arms by name)."""
        return [self.rm_names[i] for i in self.arm_rms[:len(self.pool) if self._grown(step) else self.first_arms]]

    def _grow(self, router_state):
        key = jax.random.fold_in(jax.random.key(self.config.seed), 3)
        return self.router.grow(router_state, key, len(self.pool) - self.first_arms, self.context_dim)

    def _cold_start(self, router_state):
        """CS-LASeR: the router state of another run's latest checkpoint (its counts reset)."""
        source = pathlib.Path(self.config.router.cold_start)
        manager = ocp.CheckpointManager(source.resolve() / "checkpoints", item_names=("state", "meta"))
        latest = manager.latest_step()
        if latest is None:
            raise FileNotFoundError(f"router.cold_start={source}: no checkpoint in {source / 'checkpoints'}; point it "
                                    "at the run_dir of a run that has trained")
        target = jax.tree.map(np.asarray, router_state)
        try:
            saved = manager.restore(latest, args=ocp.args.Composite(
                state=ocp.args.PyTreeRestore(item={"router": target}, partial_restore=True),
                meta=ocp.args.JsonRestore()))
            restored = saved["state"]["router"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"router.cold_start={source}: its router does not fit this run's ({err}); reuse a run "
                             "with the same router.name, pool and policy (context width)") from err
        restored = jax.tree.unflatten(jax.tree.structure(router_state), jax.tree.leaves(restored))
        if any(np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(router_state))):
            raise ValueError(f"router.cold_start={source}: its router state has other shapes than this run's; reuse "
                             "a run with the same router.name, pool and policy (context width)")
        # its arms may be in another order (RMs that joined mid-run come last): match them by RM name
        mine = self._arm_names(0)
        theirs = saved["meta"].get("arms", mine)
        if sorted(theirs) != sorted(mine):
            raise ValueError(f"router.cold_start={source}: its router's RMs {theirs} are not this run's {mine}; reuse "
                             "a run with the same router.name, pool and policy (context width)")
        order = np.array([theirs.index(name) for name in mine])
        restored = restored._replace(bandit=jax.tree_util.tree_map_with_path(
            lambda path, leaf: leaf[order] if bandits.combinators.is_per_arm(path) else leaf, restored.bandit))
        return restored._replace(counts=jnp.zeros_like(router_state.counts))

    def respond(self, prompts: list[str], state: dict) -> list[str]:
        """Greedy responses of the current policy (evaluation)."""
        enc = text.encode_prompts(self.tokenizer, prompts, self.config.policy.max_prompt_tokens)
        out = self._sample(self.base, state["train"].params, enc["input_ids"], enc["attention_mask"],
                           jax.random.key(0), 1, 0.0, self.config.eval.max_new_tokens)
        return decode_responses(self.tokenizer, out.tokens, out.mask)

    def evaluate(self, state: dict) -> dict[str, float]:
        with parallel.use_mesh(self.mesh):
            return accuracy_by_category(lambda prompts: self.respond(list(prompts), state), self.test_tasks)

    # ---- one batch ----------------------------------------------------------------------
    def train_batch(self, state: dict, step: int) -> tuple[dict, dict]:
        """Route, sample, score, step and learn on batch ``step`` (global index); returns
        the new state and the batch's metrics row."""
        cfg = self.config
        iteration, index = divmod(step, cfg.train.batches_per_iteration)
        tasks = batch_schedule(self.train_tasks, cfg, iteration)[index]
        prompts = [t.prompt for t in tasks]
        key = jax.random.fold_in(jax.random.key(cfg.seed), 1000 + step)
        route_key, sample_key, pair_key = jax.random.split(key, 3)
        times = {}
        started = time.perf_counter()

        if cfg.router.join and step == cfg.router.join_batch:
            state = {**state, "router": self._replicated(self._grow(state["router"]))}
            self.log(f"batch {step}: RM(s) {', '.join(cfg.router.join)} join the router")
        with parallel.use_mesh(self.mesh):
            # 1. sample (the prefill also gives LASeR's context: the prompts' last hidden states)
            clock = time.perf_counter()
            enc = text.encode_prompts(self.tokenizer, prompts, cfg.policy.max_prompt_tokens)
            ids, mask = self._batch_sharded(enc["input_ids"]), self._batch_sharded(enc["attention_mask"])
            n = cfg.sampling.num_samples
            samples = self._sample(self.base, state["train"].params, ids, mask, sample_key, n,
                                   cfg.sampling.temperature, cfg.sampling.max_new_tokens, cfg.sampling.weights)
            tokens, token_mask = np.asarray(samples.tokens), np.asarray(samples.mask)
            responses = decode_responses(self.tokenizer, tokens, token_mask)
            times["time_sample"] = time.perf_counter() - clock

        # outside the mesh: the RMs and the offline router's encoder live on their own device
        # 2. route, 3. label: one RM per batch (its scores give the pairs), or one per pair
        # (candidate pairs first, routed on their features, ordered by their RM's label)
        # (every_score: an ensemble's [K, prompts, n] scores, which the online ensemble learns from)
        if self.per_pair:
            rms, router_state, assignment, pairs, every_score = self._route_pairs(state, prompts, responses,
                                                                                  route_key, pair_key, times)
        else:
            rms, router_state, assignment, pairs, every_score = self._route_batch(
                state, samples, ids, mask, prompts, responses, route_key, pair_key, times)
        valid = np.asarray(pairs.valid) > 0          # an ensemble's pairs carry weights
        pair_rms = rms if self.per_pair else np.repeat(rms, cfg.sampling.pairs_per_prompt)

        row = {"step": step, "iteration": iteration, "batch": index, "category": category_of(tasks),
               "rm": self.rm_names[rms[0]] if (rms == rms[0]).all() and rms[0] >= 0 else "mixed",
               "rm_pairs": {name: int(valid[(pair_rms == k) | (pair_rms == routers.ALL_RMS)].sum())
                            for k, name in enumerate(self.rm_names)},
               "pairs": int(valid.sum())}
        state = {**state, "router": router_state}
        if not valid.any():
            # no pair: no step; the router learns nothing from the batch, or router.empty_batch_loss
            times["time_step"] = 0.0
            row.update(skipped=True, loss=None, bandit_reward=None, reward_accuracy=None, grad_norm=None)
            if cfg.router.empty_batch_loss is not None and not self.per_pair:
                clock = time.perf_counter()
                row["bandit_reward"], state["router"] = self._learn(router_state, assignment,
                                                                    cfg.router.empty_batch_loss)
                times["time_router"] += time.perf_counter() - clock
        else:
            # 4. step
            clock = time.perf_counter()
            with parallel.use_mesh(self.mesh):
                batch, real = self._pair_batch(ids, mask, tokens, token_mask, pairs)
                reference = self._reference(self.base, state["reference"], batch, real)
                batch = batch._replace(reference=reference)
                train, metrics = self._step(state["train"], self.base, batch, response_tokens=real)
                loss = float(metrics["loss"])
            times["time_step"] = time.perf_counter() - clock
            grad_norm = float(metrics["grad_norm"])
            if not (np.isfinite(loss) and np.isfinite(grad_norm)):     # a NaN gradient makes NaN weights
                what = f"loss is {loss}" if not np.isfinite(loss) else f"gradient norm is {grad_norm} (loss {loss})"
                raise TrainingDiverged(
                    f"the training {what} at iteration {iteration}, batch {index} (global batch {step}): "
                    f"the policy diverged. Nothing of this batch was saved; {self._latest_text()}. Lower "
                    "step.learning_rate (or step.beta / step.max_grad_norm) and run the same command with the "
                    "override to resume from that checkpoint.")
            # 5. learn
            clock = time.perf_counter()
            if self.relabels:      # each pair's loss under every (queried) RM's label
                losses = self._losses_under_rms(pairs, valid, np.asarray(metrics["margin"]), prompts, responses,
                                                assignment, every_score, jax.random.fold_in(route_key, 1))
                observed = np.isfinite(losses).sum(1) >= (1 if self.per_pair else 0) + 1
                if self.per_pair:
                    assignment = assignment._replace(arms=np.where(observed, assignment.arms, bandits.NO_ARM))
                reward, router_state = self._learn(router_state, assignment, losses)
            elif self.per_pair:    # each routed pair's own loss; tied pairs taught nothing
                losses = np.where(valid, np.asarray(metrics["losses"]), np.nan).astype(np.float32)
                assignment = assignment._replace(arms=np.where(valid, assignment.arms, bandits.NO_ARM))
                reward, router_state = self._learn(router_state, assignment, losses)
            else:
                reward, router_state = self._learn(router_state, assignment, loss)
            state = {**state, "train": train, "router": router_state}
            times["time_router"] += time.perf_counter() - clock
            row.update(skipped=False, loss=loss, bandit_reward=reward,
                       reward_accuracy=float(metrics["reward_accuracy"]), grad_norm=grad_norm)
        times["time_batch"] = time.perf_counter() - started
        row.update(times)
        return state, row

    def rm_costs(self, arms: int) -> np.ndarray:
        """[arms] the cost per item each arm's RM has had so far (``router.cost_unit``); 0 for
        an RM not asked yet, so a cost-aware router still tries it."""
        unit = self.config.router.cost_unit
        cost = [(rm.cost.calls if unit == "calls" else rm.cost.seconds) / max(rm.cost.items, 1) for rm in self.pool]
        return np.asarray(cost, np.float32)[self.arm_rms[:arms]]

    def _learn(self, router_state, assignment, loss):
        """The router observes the batch's loss (per pair: each pair's, NaN where none) ->
        (the bandit's shaped reward, averaged over the pairs it learns from; the new state)."""
        if self.config.router.cost_weight:
            costs = self.rm_costs(bandits.num_arms(router_state.bandit))
            router_state = router_state._replace(bandit=bandits.base.replace_innermost(
                router_state.bandit, lambda s: isinstance(s, bandits.combinators.CostState),
                lambda s: bandits.set_costs(s, costs), "cost-aware bandit"))
        signal = jnp.asarray(loss, jnp.float32)
        reward = None
        if self._reward is not None:
            shaped = np.asarray(self._reward(router_state, assignment, signal))
            reward = float(np.nanmean(shaped)) if np.isfinite(shaped).any() else None
        return reward, self._observe(router_state, assignment, signal)

    def _losses_under_rms(self, pairs, valid, margin, prompts, responses, assignment, every_score,
                          key) -> np.ndarray:
        """[pairs, K] the DPO loss each trained pair would have had under each RM's label
        (NaN: the RM was not asked, tied, or the slot holds no pair).  The online ensemble
        has every RM's scores already; BayesianRouter's advantage rewards ask the RMs that
        ``advantage_queries`` names (all, or C random ones besides the routed RM)."""
        cfg, n = self.config, self.config.sampling.num_samples
        k = len(self.pool)
        rows = np.asarray(pairs.prompt) * n
        chosen, rejected = rows + np.asarray(pairs.chosen), rows + np.asarray(pairs.rejected)
        if not self.per_pair:
            flat = every_score.reshape(k, -1)
            a, b = flat[:, chosen].T, flat[:, rejected].T                  # [pairs, K]
            asked = np.isfinite(a) & np.isfinite(b) & (a != b)
            agrees = a > b
        else:
            others = None if cfg.router.reward == "full_advantage" else cfg.router.light_rms
            asked = np.asarray(routers.advantage_queries(key, np.asarray(assignment.arms), k, others))
            asked = asked[:, np.argsort(self.arm_rms)] & valid[:, None]    # arms -> pool order
            prefer = np.full(asked.shape, np.nan, np.float32)
            routed = self._pool_rms(assignment.arms)
            prefer[np.arange(len(routed)), routed] = 1.0        # the routed RM's label is the trained one
            prompt_of = [prompts[i] for i in np.asarray(pairs.prompt)]
            for rm_index in range(k):
                mine = np.flatnonzero(asked[:, rm_index] & (routed != rm_index))
                if len(mine):
                    prefer[mine, rm_index] = self.pool[rm_index].prefer(
                        [prompt_of[i] for i in mine], [responses[i] for i in chosen[mine]],
                        [responses[i] for i in rejected[mine]])
            asked &= np.isfinite(prefer) & (prefer != 0.5)
            agrees = prefer > 0.5
        asked &= valid[:, None]
        losses = np.asarray(routers.losses_under_labels(margin, cfg.step.beta, agrees, asked))
        return losses[:, self.arm_rms]                                     # pool order -> arms

    def _classifier_router(self) -> routers.Router:
        """LASeR's classifier selection: an MLP on the policy's prompt embedding, trained on
        the labelled pairs of a pool-label table to predict the RM with the largest correct
        margin; it routes each batch to its most common prediction."""
        cfg = self.config
        table = labels_lib.load(cfg.router.labels)
        if list(table.rm_names) != self.rm_names:
            raise ValueError(f"router.labels={cfg.router.labels} labels pairs with RMs {list(table.rm_names)}, this pool "
                             f"has {self.rm_names}; label the pairs with this pool (experiments/pool_labels.py)")
        source = table.source
        tasks = data.load_suite(source["split"], size_per_category=source["per_category"], seed=source["seed"])
        pairs = data.make_pairs(tasks, seed=source["seed"])
        labels_lib.check_pairs(table, pairs)
        prompts = [p.task.prompt for p in pairs]
        unique = sorted(set(prompts))
        rows = []
        with parallel.use_mesh(self.mesh):
            for lo in range(0, len(unique), 16):
                enc = text.encode_prompts(self.tokenizer, unique[lo:lo + 16], cfg.policy.max_prompt_tokens)
                rows.append(np.asarray(prompt_embeddings(self.model, self.base, enc["input_ids"],
                                                         enc["attention_mask"], cfg.router.pooling)))
        embedding = np.concatenate(rows)[[unique.index(p) for p in prompts]]
        p = np.clip(table.prefer.astype(np.float64), 1e-6, 1 - 1e-6)
        labels, keep = routers.best_rm_labels(np.log(p) - np.log1p(-p))       # logit: the score margin
        if not keep.any():
            raise ValueError(f"router.labels={cfg.router.labels}: no RM labels any pair correctly; nothing to train "
                             "the classifier on")
        params, _ = routers.train_classifier(jax.random.fold_in(jax.random.key(cfg.seed), 4), embedding[keep],
                                             labels[keep], len(self.pool))
        return routers.classifier_router(params, "batch")

    def _pool_rms(self, arms) -> np.ndarray:
        """The router's arm indices -> the pool's RM indices (ALL_RMS stays)."""
        arms = np.asarray(arms)
        return np.where(arms == routers.ALL_RMS, routers.ALL_RMS, self.arm_rms[np.maximum(arms, 0)])

    def _route_batch(self, state, samples, ids, mask, prompts, responses, route_key, pair_key, times):
        """One RM per batch: route on the prompts' embeddings, score with the RM, draw pairs."""
        cfg, n = self.config, self.config.sampling.num_samples
        clock = time.perf_counter()
        contexts = samples.prompt_hidden if cfg.router.pooling == "last" else self._embed(
            self.base, state["train"].params, ids, mask)
        router_state, assignment = self._assign(state["router"], contexts, route_key)
        routers.check(assignment)
        rms = self._pool_rms(assignment.rms)
        times["time_router"] = time.perf_counter() - clock

        clock = time.perf_counter()
        every = [prompts[i // n] for i in range(len(responses))]
        if (rms == routers.ALL_RMS).all():      # an ensemble: every RM scores every sample
            scores = np.stack([rm.score(every, responses).reshape(len(prompts), n) for rm in self.pool])
            pairs, weight = ENSEMBLE_RULES[cfg.router.name](scores, cfg.sampling.pairs_per_prompt, pair_key,
                                                            cfg.router, np.asarray(assignment.scores[0]))
            pairs, every_score = jax.device_get(pairs._replace(valid=weight)), scores
        else:
            every_score = None
            scores = np.full((len(prompts), n), np.nan, np.float32)
            for rm_index in np.unique(rms):
                rows = np.flatnonzero(rms == rm_index)
                flat = [r * n + j for r in rows for j in range(n)]
                scores[rows] = self.pool[rm_index].score([every[i] for i in flat],
                                                         [responses[i] for i in flat]).reshape(len(rows), n)
            pairs = jax.device_get(self._pairs(scores, cfg.sampling.pairs_per_prompt, pair_key))
        times["time_score"] = time.perf_counter() - clock
        return rms, router_state, assignment, pairs, every_score

    def _route_pairs(self, state, prompts, responses, route_key, pair_key, times):
        """One RM per pair (BayesianRouter): candidate pairs, their features from the offline
        router's encoder, the router's RM for each, and that RM's label ordering it."""
        cfg, n, per_prompt = self.config, self.config.sampling.num_samples, self.config.sampling.pairs_per_prompt
        clock = time.perf_counter()
        first, second = map(np.asarray, candidate_pairs(len(prompts), n, per_prompt, pair_key))
        rows = np.arange(len(prompts))[:, None] * n
        prompt_of = [prompts[i] for i in np.repeat(np.arange(len(prompts)), per_prompt)]
        a = [responses[i] for i in (rows + first).reshape(-1)]
        b = [responses[i] for i in (rows + second).reshape(-1)]
        contexts = self.offline.features(prompt_of, a, b)
        router_state, assignment = self._assign(state["router"], contexts, route_key)
        routers.check(assignment)
        rms = self._pool_rms(assignment.rms)
        times["time_router"] = time.perf_counter() - clock

        clock = time.perf_counter()
        prefer = np.full(len(rms), np.nan, np.float32)
        for rm_index in np.unique(rms):
            mine = np.flatnonzero(rms == rm_index)
            prefer[mine] = self.pool[rm_index].prefer([prompt_of[i] for i in mine], [a[i] for i in mine],
                                                      [b[i] for i in mine])
        pairs = jax.device_get(labelled(first, second, prefer.reshape(first.shape)))
        times["time_score"] = time.perf_counter() - clock
        return rms, router_state, assignment, pairs, None

    def _pair_batch(self, ids, mask, tokens, token_mask, pairs) -> tuple[step_lib.PairBatch, int | None]:
        """Pairs -> the step's input, grouped by prompt: each prompt's responses (all n
        samples when n <= 2P, else the 2P its pairs use) cut to the longest real response
        (bucketed, to limit compiles), and its P pair slots as indices into them; and the
        static size of its real response tokens (``step_lib.response_tokens``)."""
        cfg = self.config.sampling
        n, per_prompt = cfg.num_samples, cfg.pairs_per_prompt
        prompts = ids.shape[0]
        chosen = np.asarray(pairs.chosen).reshape(prompts, per_prompt)
        rejected = np.asarray(pairs.rejected).reshape(prompts, per_prompt)
        valid = np.asarray(pairs.valid).reshape(prompts, per_prompt)
        if n <= 2 * per_prompt:
            samples = np.broadcast_to(np.arange(n), (prompts, n))             # [B, k]: every sample
        else:
            samples = np.stack([chosen, rejected], -1).reshape(prompts, 2 * per_prompt)
            chosen, rejected = np.broadcast_to(np.arange(0, 2 * per_prompt, 2), chosen.shape), \
                np.broadcast_to(np.arange(1, 2 * per_prompt, 2), chosen.shape)
        rows = (np.arange(prompts)[:, None] * n + samples).T                   # [k, B] sample rows
        width = bucket(max(int(token_mask.sum(1).max()), 1), 16, token_mask.shape[1])
        response_mask = token_mask[rows][..., :width].astype(np.int32)
        put = self._batch_sharded
        batch = step_lib.PairBatch(
            ids, mask, put(tokens[rows][..., :width].astype(np.int32), 1), put(response_mask, 1),
            put(np.ascontiguousarray(chosen, np.int32)), put(np.ascontiguousarray(rejected, np.int32)),
            put(valid.astype(np.float32)), put(np.zeros(rows.shape, np.float32), 1))
        batch_devices = self.mesh.shape["data"] * self.mesh.shape["fsdp"]          # the real tokens shard over them
        return batch, step_lib.response_tokens(response_mask, self.config.step, math.lcm(64, batch_devices))

    # ---- checkpoints --------------------------------------------------------------------
    def _manager(self) -> ocp.CheckpointManager:
        options = ocp.CheckpointManagerOptions(max_to_keep=self.config.checkpoint.keep, create=True,
                                               enable_async_checkpointing=False)
        return ocp.CheckpointManager(self.run_dir.resolve() / "checkpoints", options=options,
                                     item_names=("state", "meta"))

    def _latest_text(self) -> str:
        latest = self.manager.latest_step()
        if latest is None:
            return "no checkpoint was written yet"
        return f"the latest checkpoint, after batch {latest - 1}, is intact in {self.run_dir / 'checkpoints'}"

    def save(self, step: int, state: dict, meta: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                        meta=ocp.args.JsonSave(meta)))
        self.manager.wait_until_finished()

    def restore(self, step: int, target: dict) -> tuple[dict, dict]:
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        except Exception as err:             # orbax / tensorstore raise ValueError, OSError, KeyError...
            raise CheckpointUnreadable(self._unreadable_text(step, err)) from err
        if not isinstance(restored.get("meta"), dict) or "step" not in restored["meta"]:
            raise CheckpointUnreadable(self._unreadable_text(step, ValueError("its meta item holds no step")))
        return restored["state"], restored["meta"]

    def _unreadable_text(self, step: int, err: Exception) -> str:
        checkpoints = self.run_dir / "checkpoints"
        earlier = [s for s in self.manager.all_steps() if s < step]
        while (err.__cause__ or err.__context__) is not None:     # the root cause names the file
            err = err.__cause__ or err.__context__
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        fix = (f"to resume from the one before it (after batch {max(earlier) - 1}), move {checkpoints / str(step)} "
               "out of the run directory and run the same command again" if earlier else
               f"there is no earlier checkpoint: move {checkpoints / str(step)} away to start the run again")
        return (f"the checkpoint after batch {step - 1} ({checkpoints / str(step)}) cannot be read: {reason}. It was "
                f"probably cut short (a full disk, a copy that stopped); {fix}")

    # ---- the run ------------------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.config
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.manager = self._manager()
        saved_config = self.run_dir / "config.yaml"
        latest = self.manager.latest_step()
        state = self.fresh_state(latest or 0)
        if latest is not None:
            check_resumable(cfg)
            state, meta = self.restore(latest, state)
            pool_lib.load_pool_state(self.pool, meta["pool"])
            if meta["step"] >= cfg.total_batches:
                self.log(f"{self.run_dir}: the run is finished ({meta['step']} batches); its summary:")
                summary = json.loads((self.run_dir / "summary.json").read_text()) if (
                    self.run_dir / "summary.json").exists() else self.finish(meta)
                self.log(report.format_summary(summary))
                return summary
            self.log(f"{self.run_dir}: resuming from the checkpoint after batch {meta['step'] - 1} "
                     f"(iteration {meta['step'] // cfg.train.batches_per_iteration}, "
                     f"batch {meta['step'] % cfg.train.batches_per_iteration})")
        else:
            self.log(f"{self.run_dir}: a new run of {cfg.total_batches} batches ({cfg.train.iterations} iterations "
                     f"x {cfg.train.batches_per_iteration}), router {cfg.router.name}, RMs {', '.join(self.rm_names)}")
            meta = {"step": 0, "accuracy": {"before": self.evaluate(state), "iterations": []}, "finished": False}
            self.log("accuracy before training: " + _accuracy_text(meta["accuracy"]["before"]))
        config_lib.dump(cfg, saved_config)

        bar = None
        if self.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=cfg.total_batches, initial=meta["step"], unit="batch", desc="train")
        with report.MetricsLog(self.run_dir, resume_step=meta["step"]) as metrics_log:
            for step in range(meta["step"], cfg.total_batches):
                state, row = self.train_batch(state, step)
                metrics_log.write(row)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(rm=row["rm"], loss="-" if row["loss"] is None else f"{row['loss']:.3f}")
                done = step + 1
                end_of_iteration = done % cfg.train.batches_per_iteration == 0
                if end_of_iteration:
                    iteration = step // cfg.train.batches_per_iteration
                    if cfg.eval.every_iteration or done == cfg.total_batches:
                        accuracy = self.evaluate(state)
                        meta["accuracy"]["iterations"].append({"iteration": iteration, **accuracy})
                        self.log(f"accuracy after iteration {iteration}: " + _accuracy_text(accuracy))
                    if cfg.train.reference == "previous":
                        state = {**state, "reference": _copy(state["train"].params)}
                if end_of_iteration or done % cfg.checkpoint.every == 0:
                    meta = {**meta, "step": done, "pool": pool_lib.pool_state(self.pool), "arms": self._arm_names(done),
                            "finished": done == cfg.total_batches}
                    self.save(done, state, meta)
        if bar is not None:
            bar.close()
        self.state = state          # the trained state, for callers that inspect it after run()
        summary = self.finish(meta)
        self.log(report.format_summary(summary))
        return summary

    def finish(self, meta: dict) -> dict:
        rows = report.read_metrics(self.run_dir / "metrics.jsonl")
        categories = list(self.config.data.categories)
        after = meta["accuracy"]["iterations"][-1] if meta["accuracy"]["iterations"] else meta["accuracy"]["before"]
        per_category = lambda accuracy: {c: accuracy[c] for c in categories}      # noqa: E731 ("all" is derived)
        summary = report.summarize(rows, self.rm_names, categories, per_category(meta["accuracy"]["before"]),
                                   per_category(after),
                                   extra={"run_dir": str(self.run_dir), "router": self.config.router.name,
                                          "accuracy_per_iteration": meta["accuracy"]["iterations"]})
        report.write_summary(self.run_dir, summary)
        report.plot_bandit_rewards(rows, self.rm_names, self.run_dir / "bandit_rewards.png")
        report.plot_utilisation(rows, self.rm_names, categories, self.run_dir / "rm_utilisation.png")
        return summary


# keys that may change between the runs of one run_dir (how far to train, how to log, and
# where the run_dir is: one moved to another disk or machine, or named by another path)
RESUMABLE_CHANGES = ("run_dir", "train.iterations", "checkpoint.every", "checkpoint.keep")


def check_resumable(config: TrainConfig) -> None:
    """Refuse a run_dir whose checkpoints come from another config (only RESUMABLE_CHANGES may
    differ): cheap, so the CLI calls it before any model loads."""
    run_dir = pathlib.Path(config.run_dir)
    saved_config, checkpoints = run_dir / "config.yaml", run_dir / "checkpoints"
    if not (saved_config.exists() and checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        return
    changed = [k for k in config_lib.differences(config_lib.load(TrainConfig, saved_config), config)
               if k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"{run_dir} holds a run with another config ({', '.join(changed)} "
                         f"{'differs' if len(changed) == 1 else 'differ'} from {saved_config}); resume it with "
                         "the same config, or choose another run_dir")


def _copy(tree):
    """A copy with its own buffers: the step donates the trained params' buffers."""
    return jax.tree.map(jnp.copy, tree)


def _accuracy_text(accuracy: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in accuracy.items() if k != "iteration")


def train(config: TrainConfig, log: Callable[[str], None] = print, progress: bool = False) -> dict:
    return Trainer(config, log, progress).run()
