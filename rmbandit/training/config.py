"""The training run's configuration: frozen dataclasses, one per component; YAML files
(``experiments/configs/*.yaml``) fill them, with dotted ``key=value`` overrides
(``rmbandit.config``).  Defaults are the embedded demo: SmolLM2-135M-Instruct trained
with LASeR on the bundled suite on a CPU."""
from __future__ import annotations

import dataclasses
import math
from typing import Literal

from rmbandit.rewards.pool import DEFAULT_POOL
from rmbandit.training.step import StepConfig

# one RM per batch (LASeR and its baselines), every RM per batch (ensembles), one RM per pair
PER_BATCH_ROUTERS = ("laser", "laser_exp3", "laser_neural_ucb", "single_rm", "random", "round_robin", "classifier")
PER_PAIR_ROUTERS = ("bayesian", "random_pair")
ENSEMBLE_ROUTERS = ("score_ensemble", "agreement_ensemble", "majority_vote", "uwo", "online_ensemble")
ROUTERS = PER_BATCH_ROUTERS + PER_PAIR_ROUTERS + ENSEMBLE_ROUTERS


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    path: str = "smollm2"                  # HF checkpoint dir, .gguf, hub id, or a packaged alias
    dtype: Literal["float32", "bfloat16"] = "float32"
    remat: Literal["none", "full", "dots"] = "none"
    # attention over a sequence (step, reference, prefill): "blocked" (rmbandit's own), or
    # jax.nn.dot_product_attention's "xla" / "cudnn" (fused flash attention: NVIDIA GPU, bfloat16)
    attention: Literal["blocked", "xla", "cudnn"] = "blocked"
    max_prompt_tokens: int = 256

    def __post_init__(self):
        if self.attention == "cudnn" and self.dtype != "bfloat16":
            raise ValueError("policy.attention=cudnn needs policy.dtype=bfloat16: cuDNN's fused attention takes "
                             "bfloat16 activations")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    categories: tuple[str, ...] = ("arithmetic", "multiple_choice", "format", "factual")
    train_per_category: int = 200
    # grouped: every batch holds one category (LASeR App. B); shuffled: categories mixed
    batching: Literal["grouped", "shuffled"] = "grouped"


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    num_samples: int = 4                   # responses per prompt (LASeR: 30)
    temperature: float = 0.8
    top_p: float = 1.0
    max_new_tokens: int = 48
    pairs_per_prompt: int = 2              # P random pairs with a strict score gap (LASeR: 10)
    # the weights the sampler reads: "bfloat16" = bfloat16 copies of a float32 policy's
    # weight matrices (float32 activations and accumulation; ``sampling.with_bfloat16_weights``),
    # 1.4x faster sampling on CPU, and LASeR's context comes from that prefill; "policy" = the
    # policy's own.  Evaluation always uses the policy's; the step's log-probs are float32 either way.
    weights: Literal["policy", "bfloat16"] = "bfloat16"


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    iterations: int = 2
    batches_per_iteration: int = 4
    prompts_per_batch: int = 4
    # pi_ref: the previous iteration's policy (LASeR) or the initial one (BayesianRouter)
    reference: Literal["previous", "initial"] = "previous"


@dataclasses.dataclass(frozen=True)
class RouterConfig:
    name: Literal[ROUTERS] = "laser"
    alpha: float = 0.5                     # LinUCB exploration (LASeR: 0.4-0.6)
    rm: str | None = None                  # single_rm: the RM's name in the pool
    pooling: Literal["last", "first", "mean"] = "last"     # prompt embedding (LASeR: last token)
    history: int = 4096                    # rewards kept for the quantile rescaling
    # the loss the router observes for a batch whose scores gave no pair (every sample tied):
    # None = it observes nothing (the batch is skipped).  A router that never hears about
    # such batches can keep choosing an RM that cannot tell the samples apart; a loss above
    # any real batch's (e.g. 2.0; DPO starts at ln 2) gives them the lowest rescaled reward.
    empty_batch_loss: float | None = None
    # per-pair routers (BayesianRouter): the offline router's directory (its encoder gives the
    # pair features h, its BT head the prior mean E_bt); written by experiments/offline_router.py
    offline: str | None = None
    prior: Literal["offline", "none"] = "offline"      # none: zero prior mean, prior_var 1 (w/o offline)
    prior_var: float | None = None         # sigma_w^2; None: the paper's, 0.02 around E_bt, 1 around zero
    noise_var: float = 1.0                 # sigma^2 of r = w.h + eps
    reward: Literal["baseline", "full_advantage", "light_advantage"] = "baseline"
    light_rms: int = 3                     # C of the light-advantage reward
    online: bool = True                    # False: the offline router alone (w/o online)
    mix: float | None = None               # weighted score: alpha of the offline BT scores' softmax
    candidates: int = 100                  # agreement_ensemble: random candidate pairs per prompt (LASeR: 100)
    learning_rate: float = 1.0             # online_ensemble: multiplicative-weights step
    # classifier: the pool-label table (experiments/pool_labels.py) whose pairs train it
    labels: str = "experiments/results/pool_labels_train.json"
    # cost-aware routing (laser, laser_exp3, laser_neural_ucb): the bandit learns from
    # reward - cost_weight * the RM's cost per item so far (model calls, or wall seconds,
    # which make a resumed run differ from an uninterrupted one)
    cost_weight: float = 0.0
    cost_unit: Literal["calls", "seconds"] = "calls"
    # RMs of the pool that join mid-run (LASeR): absent until global batch join_batch, then new
    # arms with fresh statistics while the others keep theirs
    join: tuple[str, ...] = ()
    join_batch: int = 0
    # cold start (CS-LASeR): start the router from the latest checkpoint of another run_dir
    # (same router, pool and context width); its RM counts start again from 0
    cold_start: str | None = None


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    per_category: int = 16                 # test tasks per category
    max_new_tokens: int = 48
    every_iteration: bool = True           # False: before and after training only


@dataclasses.dataclass(frozen=True)
class CheckpointConfig:
    every: int = 2                         # batches between checkpoints (and one after every iteration)
    keep: int = 2


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    data: int = -1                         # -1: the devices fsdp x tensor leave
    fsdp: int = 1
    tensor: int = 1
    devices: int | None = None             # use the first this many devices (None: all)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    run_dir: str = "runs/laser_small"
    seed: int = 0
    policy: PolicyConfig = PolicyConfig()
    data: DataConfig = DataConfig()
    sampling: SamplingConfig = SamplingConfig()
    train: LoopConfig = LoopConfig()
    step: StepConfig = StepConfig()
    router: RouterConfig = RouterConfig()
    pool: tuple[dict, ...] = DEFAULT_POOL
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    mesh: MeshConfig = MeshConfig()

    @property
    def total_batches(self) -> int:
        return self.train.iterations * self.train.batches_per_iteration


def check(config: TrainConfig, pairs: bool = True) -> None:
    """Cross-field checks ``rmbandit.config`` cannot do (types are checked there), before
    anything loads; a ValueError names the key and the fix.  ``pairs=False``: a run that
    forms no preference pairs and takes no step (best-of-n) skips their checks."""
    def need(ok, message):
        if not ok:
            raise ValueError(message)

    for key, value in (("train.iterations", config.train.iterations),
                       ("train.batches_per_iteration", config.train.batches_per_iteration),
                       ("train.prompts_per_batch", config.train.prompts_per_batch),
                       ("sampling.max_new_tokens", config.sampling.max_new_tokens),
                       ("sampling.pairs_per_prompt", config.sampling.pairs_per_prompt),
                       ("checkpoint.every", config.checkpoint.every), ("checkpoint.keep", config.checkpoint.keep),
                       ("eval.per_category", config.eval.per_category)):
        need(value >= 1, f"{key} must be at least 1, got {value}")
    need(config.seed >= 0, f"seed must be >= 0 (NumPy's generators take no negative seed), got {config.seed}")
    need(config.mesh.data == -1 or config.mesh.data >= 1,
         f"mesh.data must be at least 1, or -1 (the devices fsdp x tensor leave), got {config.mesh.data}")
    for key, value in (("mesh.fsdp", config.mesh.fsdp), ("mesh.tensor", config.mesh.tensor)):
        need(value >= 1, f"{key} must be at least 1, got {value}")
    need(config.mesh.devices is None or config.mesh.devices >= 1,
         f"mesh.devices must be at least 1 (or null: every device), got {config.mesh.devices}")
    try:
        config.step.lora                  # LoraConfig checks the rank and alpha
    except ValueError as err:
        raise ValueError(f"step.lora_rank / step.lora_alpha: {err}") from None
    need(config.sampling.num_samples >= 2, f"sampling.num_samples must be at least 2 "
                                           f"({'a pair needs two responses' if pairs else 'a best of one picks nothing'}"
                                           f"), got {config.sampling.num_samples}")
    need(config.sampling.temperature > 0, "sampling.temperature must be > 0: greedy samples of a prompt are all the "
                                          f"same and give no pair, got {config.sampling.temperature}")
    need(0 < config.sampling.top_p <= 1, f"sampling.top_p must be in (0, 1], got {config.sampling.top_p}")
    # a non-finite beta or learning rate makes the first step's loss NaN: say so before anything loads
    need(0 < config.step.beta < math.inf, f"step.beta must be a finite number > 0, got {config.step.beta}")
    need(0 <= config.step.learning_rate < math.inf,
         f"step.learning_rate must be a finite number >= 0, got {config.step.learning_rate}")
    candidates = config.sampling.num_samples * (config.sampling.num_samples - 1) // 2
    need(not pairs or config.sampling.pairs_per_prompt <= candidates,
         f"sampling.pairs_per_prompt={config.sampling.pairs_per_prompt} but sampling.num_samples="
         f"{config.sampling.num_samples} responses give only {candidates} pairs per prompt")
    # the step splits the prompts (each with its pairs) into the micro-batches
    need(not pairs or config.train.prompts_per_batch % config.step.micro_batches == 0,
         f"step.micro_batches={config.step.micro_batches} must divide train.prompts_per_batch="
         f"{config.train.prompts_per_batch} (each micro-batch takes whole prompts with their pairs)")
    names = [entry.get("name", entry.get("kind")) for entry in config.pool]
    if config.router.name == "bayesian":
        need(config.router.offline is not None, "router.name=bayesian routes on the offline router's pair features: set "
                                                "router.offline to its directory (train one with "
                                                "experiments/offline_router.py)")
    unknown = [name for name in config.router.join if name not in names]
    need(not unknown, f"router.join names RM(s) {unknown} that are not in the pool ({', '.join(map(str, names))})")
    need(config.router.cost_weight >= 0, f"router.cost_weight must be >= 0, got {config.router.cost_weight}")
    if config.router.cost_weight:
        need(config.router.name in ("laser", "laser_exp3", "laser_neural_ucb"),
             f"router.cost_weight is for the LASeR bandits (laser, laser_exp3, laser_neural_ucb); router.name="
             f"{config.router.name} does not learn per RM from a reward")
    if config.router.join:
        need(config.router.name in ("laser", "laser_exp3", "laser_neural_ucb", "random", "round_robin"),
             f"router.join needs a learning per-batch router (laser, laser_exp3, laser_neural_ucb, random, "
             f"round_robin); router.name={config.router.name} cannot take new RMs mid-run")
        need(len(config.router.join) < len(names), "router.join names every RM: at least one must be there from the "
                                                    "start")
        need(1 <= config.router.join_batch < config.total_batches,
             f"router.join_batch must be a batch of the run, in [1, {config.total_batches - 1}], got "
             f"{config.router.join_batch}")
    learns_from_relabelled = (config.router.name == "online_ensemble" or
                              (config.router.name == "bayesian" and config.router.reward != "baseline"))
    if learns_from_relabelled:
        need(config.step.loss == "dpo", f"router.name={config.router.name} (reward {config.router.reward}) learns "
                                        "from each pair's DPO loss under every RM's label: it needs step.loss=dpo, got "
                                        f"{config.step.loss}")
    if config.router.name in ENSEMBLE_ROUTERS or config.router.name in PER_PAIR_ROUTERS:
        need(config.router.empty_batch_loss is None,
             f"router.empty_batch_loss is for per-batch routers (one RM per batch); router.name={config.router.name} "
             "learns only from pairs that formed")
    need(len(config.pool) >= 1, "pool is empty: name at least one RM (see rmbandit.rewards.pool.DEFAULT_POOL)")
    if config.router.name == "single_rm":
        need(config.router.rm in names, f"router.rm must name an RM of the pool for router.name=single_rm; "
                                        f"got {config.router.rm!r}, the pool has {', '.join(map(str, names))}")
    need(config.data.train_per_category >= 1, "data.train_per_category must be at least 1")
