"""The controlled simulation on real labels (BayesianRouter's Table 3): replay labelled
preference pairs through a real RM pool.

Every RM of the pool has labelled every pair once (``rewards.labels.PoolLabels``, saved
as a table), so a router's choice is a table look-up: the routed RM's label is right or
not.  Routers pick an RM per pair (or per batch of one category, LASeR-style) from the
pair's context vector and learn from that correctness through ``simulate.route``, the
same code the synthetic simulation runs.  We report annotation accuracy against the
ground truth over seeds (a seed shuffles the pairs and the routers' keys), the oracle
rate (some RM is right), RM utilisation per category and the cost per 1,000 pairs from
the table's per-RM seconds and model calls (an ensemble pays every RM).

    pairs, table = load_replay("suite", labels="experiments/results/pool_labels_test.json")
    contexts = pair_features(pairs, cache=feature_cache_path("experiments/results/pool_labels_test.json"))
    results = replay(table, contexts, seeds=range(5))

Pairs come from the bundled suite, a JSONL file (one {"prompt", "chosen", "rejected",
"category"} object a line) or a Hugging Face preference dataset (``load_hf``; RewardBench
2's columns by default).  Contexts come from a featuriser named in ``FEATURISERS``
(default MiniLM pair embeddings); ``register_featuriser`` and ``register_router`` add
more (the offline BayesianRouter's learned pair features, new baselines) by name.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import time
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence

import jax
import numpy as np

from rmbandit import bandits, data, simulate
from rmbandit import routers as routing
from rmbandit.rewards import labels as pool_labels

SUITE_SOURCE = {"split": "test", "per_category": 50, "seed": 0}
PAIR_FIELDS = ("prompt", "chosen", "rejected", "category")
DEFAULT_CATEGORY = "all"
REWARDBENCH2_COLUMNS = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected", "category": "subset"}
JSONL_EXAMPLE = '{"prompt": "...", "chosen": "...", "rejected": "...", "category": "..."}'


# ---------------------------------------------------------------- pairs

def suite_pairs(source: dict) -> list[data.Pair]:
    """The bundled suite's pairs described by a table's source (split, tasks per category, seed)."""
    missing = [key for key in ("split", "per_category", "seed") if key not in source]
    if missing:
        raise ValueError(f"the pool-label source {source} does not describe suite pairs (no {', '.join(missing)}); "
                         "replay its own pairs (--pairs path.jsonl or hf:<id>) or label the suite again")
    tasks = data.load_suite(source["split"], size_per_category=source["per_category"], seed=source["seed"])
    return data.make_pairs(tasks, seed=source["seed"])


def external_pair(prompt: str, chosen: str, rejected: str, category: str = DEFAULT_CATEGORY) -> data.Pair:
    """A labelled pair from outside the suite: it has no reference answer, so the pool's
    verifiers abstain on it.  Its id hashes its texts, so a table made from other pairs is caught."""
    digest = hashlib.sha256("\0".join((prompt, chosen, rejected)).encode()).hexdigest()[:12]
    task = data.Task(id=f"{category}/replay/{digest}", category=category, prompt=prompt, answer="", check="text")
    return data.Pair(task, chosen, rejected, kind="replayed", chosen_style="", rejected_style="")


def _row_pairs(row: dict, where: Callable[[str], str]) -> list[data.Pair]:
    """One record {prompt, chosen, rejected[, category]} -> its pairs.  ``chosen`` /
    ``rejected`` may be lists (RewardBench 2): the first chosen against every rejected."""
    if not isinstance(row, dict):
        raise ValueError(where(f"expected a JSON object like {JSONL_EXAMPLE}, got {type(row).__name__}"))
    missing = [f for f in PAIR_FIELDS[:3] if row.get(f) is None]
    if missing:
        raise ValueError(where(f"missing field(s) {', '.join(missing)}; each pair needs {JSONL_EXAMPLE} "
                               f"(category optional, default {DEFAULT_CATEGORY!r})"))
    texts = {}
    for field in PAIR_FIELDS:
        value = row.get(field, DEFAULT_CATEGORY if field == "category" else None)
        value = DEFAULT_CATEGORY if value is None else value
        listed = field in ("chosen", "rejected")       # RewardBench 2 lists several responses
        values = list(value) if listed and isinstance(value, (list, tuple)) else [value]
        if not values or not all(isinstance(v, str) for v in values):
            raise ValueError(where(f"field {field!r} must be a string{' or a list of strings' if listed else ''}, "
                                   f"got {value!r:.60}"))
        texts[field] = values
    return [external_pair(texts["prompt"][0], texts["chosen"][0], rejected, texts["category"][0])
            for rejected in texts["rejected"]]


def read_jsonl(path) -> list[data.Pair]:
    """Pairs from a JSONL file, one object a line (blank lines are skipped)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pairs file at {path}; --pairs takes 'suite', a .jsonl file with one "
                                f"{JSONL_EXAMPLE} a line, or hf:<dataset id>")
    pairs = []
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            where = lambda problem, n=number: f"{path} line {n}: {problem}"
            try:
                row = json.loads(line.strip())
            except json.JSONDecodeError as err:
                raise ValueError(where(f"not valid JSON ({err.msg}: column {err.colno}): the line is truncated or "
                                       f"malformed; each line must be one object like {JSONL_EXAMPLE}")) from None
            pairs += _row_pairs(row, where)
    if not pairs:
        raise ValueError(f"{path} holds no pairs; write one {JSONL_EXAMPLE} a line")
    return pairs


def pairs_from_dataset(rows: Iterable[dict], columns: dict | None = None, name: str = "dataset") -> list[data.Pair]:
    """Pairs from rows of a preference dataset (a ``datasets.Dataset`` iterates dicts).
    ``columns`` maps our fields prompt / chosen / rejected / category to the dataset's
    columns (default RewardBench 2's; category=None gives every pair category 'all')."""
    columns = {**REWARDBENCH2_COLUMNS, **(columns or {})}
    unknown = sorted(set(columns) - set(PAIR_FIELDS))
    if unknown:
        raise ValueError(f"columns: unknown field(s) {', '.join(unknown)}; map these fields: {', '.join(PAIR_FIELDS)}")
    names = getattr(rows, "column_names", None)
    if names is not None:
        absent = {f: c for f, c in columns.items() if c is not None and c not in names}
        if absent:
            raise ValueError(f"{name} has no column(s) {', '.join(map(repr, absent.values()))} (for "
                             f"{', '.join(absent)}); its columns: {', '.join(names)}; pass columns={{field: column}}")
    pairs = []
    for i, row in enumerate(rows):
        record = {f: row.get(c) for f, c in columns.items() if c is not None}
        pairs += _row_pairs(record, lambda problem, i=i: f"{name} row {i}: {problem}")
    if not pairs:
        raise ValueError(f"{name} holds no rows")
    return pairs


def load_hf(dataset_id: str, split: str = "test", columns: dict | None = None) -> list[data.Pair]:
    """A Hugging Face preference dataset (needs a network or the HF cache), e.g.
    ``load_hf("allenai/reward-bench-2")`` (its chosen / rejected are lists: the first
    chosen is paired with each rejected; its ``subset`` is the category)."""
    import datasets          # heavy, and only this source needs it
    return pairs_from_dataset(datasets.load_dataset(dataset_id, split=split), columns, f"hf:{dataset_id}[{split}]")


def pairs_source(spec: str, hf_split: str = "test") -> dict:
    """What a --pairs value names, for the table's ``source`` (suite pairs come from the table's own)."""
    if spec.startswith("hf:"):
        return {"hf": spec[3:], "split": hf_split}
    path = pathlib.Path(spec)
    return {"jsonl": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None}


def load_pairs(spec: str, hf_split: str = "test") -> list[data.Pair]:
    """``suite`` (the test split, 50 tasks a category), a .jsonl path, or ``hf:<dataset id>``."""
    if spec == "suite":
        return suite_pairs(SUITE_SOURCE)
    if spec.startswith("hf:"):
        return load_hf(spec[3:], hf_split)
    return read_jsonl(spec)


def load_replay(spec: str = "suite", labels=None, pool=None, hf_split: str = "test",
                log=lambda message: None) -> tuple[list[data.Pair], pool_labels.PoolLabels]:
    """The pairs and every RM's labels on them: the saved table at ``labels`` (checked
    against the pairs; for ``suite`` the pairs are rebuilt from the table's source), or,
    where there is none, the pool's labels (``pool``: RM config entries, default
    ``rewards.pool.DEFAULT_POOL``), saved to ``labels`` when it is given."""
    path = None if labels is None else pathlib.Path(labels)
    if path is not None and path.exists():
        table = pool_labels.load(path)
        named = [entry.get("name") for entry in pool or () if isinstance(entry, dict)]
        if pool is not None and None not in named and tuple(named) != tuple(table.rm_names):
            raise ValueError(f"{path} holds the labels of RMs {', '.join(table.rm_names)}, not of the pool asked for "
                             f"({', '.join(map(str, named))}); label with that pool into another --out (or "
                             "--labels), or drop --pool to replay the saved labels")
        pairs = suite_pairs(table.source) if spec == "suite" else load_pairs(spec, hf_split)
        pool_labels.check_pairs(table, pairs)
        return pairs, table
    from rmbandit.rewards.pool import DEFAULT_POOL, build_pool       # loads models: only when labelling
    pairs = load_pairs(spec, hf_split)
    source = SUITE_SOURCE if spec == "suite" else pairs_source(spec, hf_split)
    rms = build_pool(DEFAULT_POOL if pool is None else pool, [p.task for p in pairs])
    table = pool_labels.label_with_pool(rms, pairs, source, log=log)
    if path is not None:
        pool_labels.save(table, path)
    return pairs, table


# ---------------------------------------------------------------- contexts

Featuriser = Callable[[Sequence[str], Sequence[str], Sequence[str]], np.ndarray]   # prompts, chosen, rejected -> [N, d]


def embedding_pair_features(encode: Callable[[list[str]], np.ndarray]) -> Featuriser:
    """Pair features from a text encoder: e = enc(x||y), e' = enc(x||y') -> [e + e'; |e - e'|].
    Symmetric in the two responses, so the context never tells which one is chosen."""

    def features(prompts, chosen, rejected):
        n = len(prompts)
        texts = [f"{x}\n\n{y}" for x, y in zip(prompts, chosen)] + [f"{x}\n\n{y}" for x, y in zip(prompts, rejected)]
        e = np.asarray(encode(texts), np.float32)            # one call: batches sort by length
        return np.concatenate([e[:n] + e[n:], np.abs(e[:n] - e[n:])], axis=1)

    return features


def _minilm() -> Featuriser:
    from rmbandit.rewards import embedding
    from rmbandit.rewards.pool import resolve_path
    return embedding_pair_features(embedding.SentenceEncoder(resolve_path("minilm")))


# name -> a function that builds the featuriser (loading its model only when asked)
FEATURISERS: dict[str, Callable[[], Featuriser]] = {"minilm": _minilm}


def register_featuriser(name: str, build: Callable[[], Featuriser]) -> None:
    """Make ``pair_features(..., featuriser=name)`` (and ``--featuriser name``) use ``build()``:
    the hook for the offline BayesianRouter's learned pair features."""
    FEATURISERS[name] = build


def feature_cache_path(table_path, featuriser: str = "minilm", directory=None) -> pathlib.Path:
    """Beside the table (or in ``directory``): pool_labels_test.json -> pool_labels_test.minilm.npz."""
    table_path = pathlib.Path(table_path)
    return pathlib.Path(directory or table_path.parent) / f"{table_path.stem}.{featuriser}.npz"


def pair_features(pairs: Sequence[data.Pair], featuriser: str = "minilm", cache=None) -> np.ndarray:
    """[N, d + 1] contexts of the pairs (the featuriser's, then a constant 1 for the bias).
    ``cache``: an .npz reused when it was made from the same texts and featuriser."""
    if featuriser not in FEATURISERS:
        raise ValueError(f"unknown featuriser {featuriser!r}; registered: {', '.join(FEATURISERS)} "
                         "(add one with replay.register_featuriser)")
    texts = [(p.prompt, p.chosen, p.rejected) for p in pairs]
    key = hashlib.sha256(json.dumps([featuriser, texts]).encode()).hexdigest()
    cache = None if cache is None else pathlib.Path(cache)
    if cache is not None and cache.exists():
        with np.load(cache) as stored:
            if str(stored["key"]) == key:
                return stored["features"]
    x = np.asarray(FEATURISERS[featuriser]()(*map(list, zip(*texts))), np.float32)
    if x.shape[0] != len(pairs) or x.ndim != 2:
        raise ValueError(f"featuriser {featuriser!r} returned shape {x.shape} for {len(pairs)} pairs; "
                         "it must return [pairs, dim]")
    x = np.concatenate([x, np.ones((len(pairs), 1), np.float32)], axis=1)
    if cache is not None:
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, key=key, features=x)
        except OSError as err:          # a read-only table directory costs a recomputation, not the run
            warnings.warn(f"could not cache the pair features at {cache} ({err.strerror}); they will be computed "
                          "again next time: pass a writable --features-dir", RuntimeWarning, stacklevel=2)
    return x


# ---------------------------------------------------------------- routers

@dataclasses.dataclass(frozen=True)
class Offline:
    """What routers may know before the replay: the labelled TRAIN pairs' contexts and
    which RM was right on each (the offline router's data, the leaderboard)."""
    contexts: np.ndarray     # [M, d]
    correct: np.ndarray      # [M, K] bool
    name: str = "train table"

    @property
    def best_rm(self) -> int:
        """Top of the leaderboard: the RM right most often on these pairs."""
        return int(np.argmax(self.correct.mean(0)))


@dataclasses.dataclass(frozen=True)
class Setting:
    """What a router builder gets."""
    offline: Offline
    rm_names: tuple[str, ...]
    seconds_per_pair: np.ndarray      # [K] the cost-aware routers' costs
    granularity: str


RouterBuilder = Callable[[Setting], routing.Router]


def _synthetic(name: str) -> RouterBuilder:
    """A router of the synthetic simulation's table, prior and leaderboard from the offline pairs."""
    def build(s: Setting) -> routing.Router:
        prior = simulate.ridge_prior(s.offline.contexts, s.offline.correct)
        return simulate.make_routers(prior, s.offline.best_rm, s.granularity)[name]()
    return build


def cost_aware_router(weight: float) -> RouterBuilder:
    """Thompson sampling with the offline prior on reward = correct - weight * seconds per
    pair of the RM (``bandits.cost_aware``): the prior is fitted to the same objective."""
    def build(s: Setting) -> routing.Router:
        cost = np.asarray(s.seconds_per_pair, np.float32)
        prior = simulate.ridge_prior(s.offline.contexts, s.offline.correct - weight * cost)
        aware = bandits.cost_aware(bandits.linear_thompson(prior_var=0.02, noise_var=0.25, prior_mean=prior), weight)
        priced = aware._replace(init=lambda key, k, d: bandits.set_costs(aware.init(key, k, d), cost))
        return routing.bandit_router(priced, s.granularity, feedback="reward", rescale=None)
    return build


# name -> builder; extend with register_router (e.g. the offline BayesianRouter)
ROUTERS: dict[str, RouterBuilder] = {name: _synthetic(name) for name in simulate.ROUTERS}
ORACLE = "oracle"
SINGLE = "single:"            # single:<rm name>, one per RM of the table
COST_AWARE = "cost_aware@"    # cost_aware@<lambda>
LAMBDAS = (0.0, 0.03, 0.1, 0.3, 1.0, 3.0)


def register_router(name: str, build: RouterBuilder) -> None:
    ROUTERS[name] = build


def router_names(rm_names: Sequence[str], lambdas: Sequence[float] = LAMBDAS) -> tuple[str, ...]:
    """Every router of a replay: the table's, each single RM, the cost-aware sweep, the oracle."""
    return (*ROUTERS, *(SINGLE + n for n in rm_names), *(f"{COST_AWARE}{lam:g}" for lam in lambdas), ORACLE)


def builder(name: str, rm_names: Sequence[str]) -> RouterBuilder:
    """The builder of a router name; ValueError listing the valid names otherwise."""
    if name in ROUTERS:
        return ROUTERS[name]
    if name.startswith(SINGLE) and name[len(SINGLE):] in rm_names:
        index = list(rm_names).index(name[len(SINGLE):])
        return lambda s: routing.single_rm(index)
    if name.startswith(COST_AWARE):
        try:
            weight = float(name[len(COST_AWARE):])
        except ValueError:
            weight = -1.0
        if weight >= 0:
            return cost_aware_router(weight)
    raise ValueError(f"unknown router {name!r}; valid: {', '.join(router_names(rm_names, ()))}, "
                     f"{COST_AWARE}<lambda >= 0>")


def oracle_choice(correct: np.ndarray, seconds_per_pair: np.ndarray) -> np.ndarray:
    """[N] the cheapest RM that is right on each pair (the cheapest RM where none is):
    the per-pair oracle, at the least cost that reaches its accuracy."""
    by_cost = np.argsort(seconds_per_pair, kind="stable")
    first_right = np.argmax(correct[:, by_cost], axis=1)
    return np.where(correct.any(1), by_cost[first_right], by_cost[0]).astype(np.int32)


# ---------------------------------------------------------------- the replay

def batches(category: np.ndarray, batch_size: int, granularity: str, rng: np.random.Generator) -> list[np.ndarray]:
    """Pair indices of each batch, in replay order.  item: the pairs shuffled, cut into
    batches; batch: each category's pairs shuffled and cut (LASeR's one-task batches),
    the batches shuffled.  A last short batch keeps every pair in the replay."""
    def cut(indices):
        return [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]

    if granularity == "item":
        return cut(rng.permutation(len(category)))
    groups = [b for c in np.unique(category) for b in cut(rng.permutation(np.flatnonzero(category == c)))]
    return [groups[i] for i in rng.permutation(len(groups))]


def router_key(seed: int, name: str) -> jax.Array:
    """A router's key depends on the seed and its name only, not on which others run."""
    return jax.random.fold_in(jax.random.key(seed), zlib.crc32(name.encode()))


def cost_per_1000(chosen: np.ndarray, table: pool_labels.PoolLabels) -> dict[str, float]:
    """RM model calls and seconds per 1,000 pairs: each RM's cost per pair it labels times
    how often it was asked (an ensemble pair asks every RM)."""
    asked = routing.rm_mask(chosen, len(table.rm_names)).sum(0)
    per_pair = table.cost_per_pair()
    return {unit: float(1000 * asked @ per_pair[unit] / len(chosen)) for unit in ("calls", "seconds")}


def evaluate(name: str, chosen: np.ndarray, table: pool_labels.PoolLabels) -> dict:
    """One router's run: ``chosen`` [N] is the RM that labelled each pair (table order)."""
    cats = sorted(set(table.categories))
    category = np.array([cats.index(c) for c in table.categories])
    right = simulate.routed_correct(table.correct, chosen, ~table.tie)
    return {"router": name, "accuracy": float(right.mean()),
            "accuracy_per_category": [float(right[category == c].mean()) for c in range(len(cats))],
            "utilisation": simulate.utilisation(chosen, category, len(cats), len(table.rm_names)).tolist(),
            "rm_calls": int(routing.rm_mask(chosen, len(table.rm_names)).sum()),
            **{f"{unit}_per_1000": v for unit, v in cost_per_1000(chosen, table).items()}}


def summarise(runs: list[dict]) -> dict:
    """Over seeds: mean and sample sd (ddof=1; 0 for one seed) of the accuracy, means of the rest."""
    acc = np.array([r["accuracy"] for r in runs])
    mean = lambda key: np.mean([r[key] for r in runs], axis=0).tolist()
    return {"router": runs[0]["router"], "accuracy": float(acc.mean()),
            "accuracy_sd": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0, "accuracy_per_seed": acc.tolist(),
            **{key: mean(key) for key in ("accuracy_per_category", "utilisation", "rm_calls", "calls_per_1000",
                                           "seconds_per_1000")}}


def replay_once(router: routing.Router, table: pool_labels.PoolLabels, contexts: np.ndarray,
                order: list[np.ndarray], key: jax.Array, progress=lambda it: it) -> np.ndarray:
    """[N] the RM the router picked for each pair (table order), routing the batches in ``order``."""
    keep = ~table.tie
    picked = simulate.route(router, [contexts[b] for b in order], [table.correct[b] for b in order], key,
                            keep=[keep[b] for b in order], progress=progress)
    chosen = np.empty(len(contexts), np.int32)
    chosen[np.concatenate(order)] = np.concatenate(picked)
    return chosen


def check_settings(table: pool_labels.PoolLabels, contexts: np.ndarray, names: Sequence[str], seeds: Sequence[int],
                   batch_size: int, granularity: str, spell: Callable[[str], str] = lambda p: p) -> None:
    """Raise ValueError naming the first bad setting (``spell``: a parameter's CLI name)."""
    def need(ok, param, message):
        if not ok:
            raise ValueError(f"{spell(param)}: {message}")

    need(isinstance(batch_size, (int, np.integer)) and batch_size >= 1, "batch_size",
         f"must be an integer >= 1, got {batch_size!r}")
    need(granularity in simulate.GRANULARITIES, "granularity",
         f"must be one of {', '.join(simulate.GRANULARITIES)}, got {granularity!r}")
    need(len(seeds) >= 1 and all(isinstance(s, (int, np.integer)) and 0 <= s < 2**32 for s in seeds), "seeds",
         f"need at least one seed, each an integer in [0, 2**32), got {list(seeds)}")
    need(len(names) > 0, "routers", f"no router named; valid: {', '.join(router_names(table.rm_names, ()))}")
    twice = sorted({n for n in names if list(names).count(n) > 1})
    need(not twice, "routers", f"{', '.join(twice)} named more than once")
    for name in names:
        if name != ORACLE:
            try:
                builder(name, table.rm_names)
            except ValueError as err:
                need(False, "routers", str(err))
    need(contexts.ndim == 2 and len(contexts) == len(table.task_ids), "contexts",
         f"need one row per pair of the table ({len(table.task_ids)}), got shape {contexts.shape}")


def replay(table: pool_labels.PoolLabels, contexts: np.ndarray, routers: Sequence[str] | None = None,
           seeds: Sequence[int] = range(5), batch_size: int = 16, granularity: str = "item",
           offline: Offline | None = None, lambdas: Sequence[float] = LAMBDAS,
           progress: Callable[[str], Callable] | None = None) -> dict:
    """Replay the table's pairs through every router (default ``router_names(rm_names, lambdas)``:
    ``lambdas`` only shapes that default) for each seed.

    ``offline``: the TRAIN pairs (leaderboard for best_single_rm, prior for the offline-prior
    routers); without it the replayed pairs themselves stand in, in-sample (the results say so).
    Returns JSON-ready results; ``timings`` (seconds per router) is wall-clock."""
    names = tuple(router_names(table.rm_names, lambdas) if routers is None else routers)
    seeds = [int(s) for s in seeds]
    check_settings(table, contexts, names, seeds, batch_size, granularity)
    if offline is None:
        offline = Offline(contexts, table.correct, name="replayed pairs (in-sample: no train table)")
    seconds = table.cost_per_pair()["seconds"]
    setting = Setting(offline, table.rm_names, seconds, granularity)
    category = np.array(table.categories)
    orders = {seed: batches(category, batch_size, granularity, np.random.default_rng(seed)) for seed in seeds}
    results, timings = [], {}
    for name in names:
        start = time.perf_counter()
        if name == ORACLE:
            runs = [evaluate(name, oracle_choice(table.correct, seconds), table)]
        else:
            bar = progress(name) if progress else (lambda it: it)
            router = builder(name, table.rm_names)(setting)       # one per name: jit compiles once for all seeds
            runs = [evaluate(name, replay_once(router, table, contexts, orders[seed], router_key(seed, name), bar),
                             table) for seed in seeds]
        results.append(summarise(runs))
        timings[name] = time.perf_counter() - start
    correct = table.correct
    cats = sorted(set(table.categories))
    return {"config": {"pairs": len(table.task_ids), "source": table.source, "rm_names": list(table.rm_names),
                       "categories": cats, "seeds": seeds, "batch_size": batch_size, "granularity": granularity,
                       "context_dim": int(contexts.shape[1]), "leaderboard": offline.name,
                       "best_single_rm": table.rm_names[offline.best_rm]},
            "rm_accuracy": correct.mean(0).tolist(),
            "rm_accuracy_per_category": [correct[category == c].mean(0).tolist() for c in cats],
            "rm_abstain": table.tie.mean(0).tolist(),
            "oracle_rate": float(correct.any(1).mean()),
            "rm_cost_per_1000": {unit: (1000 * v).tolist() for unit, v in table.cost_per_pair().items()},
            "routers": results, "timings": timings}


def tradeoff(results: dict) -> list[dict]:
    """The cost-aware sweep: (lambda, accuracy, cost per 1,000 pairs) per cost-aware router."""
    return [{"lambda": float(r["router"][len(COST_AWARE):]), "accuracy": r["accuracy"],
             "accuracy_sd": r["accuracy_sd"], "seconds_per_1000": r["seconds_per_1000"],
             "calls_per_1000": r["calls_per_1000"]}
            for r in results["routers"] if r["router"].startswith(COST_AWARE)]


# ---------------------------------------------------------------- report

def markdown(results: dict) -> str:
    """The results table: accuracy (mean +- sd over seeds), cost, the most-used RM per category."""
    cfg = results["config"]
    rms, cats = cfg["rm_names"], cfg["categories"]
    lines = [f"{cfg['pairs']} pairs ({cfg['source']}), {len(rms)} RMs, {cfg['granularity']} routing, batches of "
             f"{cfg['batch_size']}, seeds {cfg['seeds']}; oracle rate (some RM right) {results['oracle_rate']:.3f}; "
             f"best single RM on the {cfg['leaderboard']}: {cfg['best_single_rm']}.", "",
             "| router | accuracy | " + " | ".join(cats) + " | RM s / 1k pairs | model calls / 1k pairs | most-used RM per category |",
             "|---|---|" + "---|" * len(cats) + "---|---|---|"]
    for r in results["routers"]:
        util = np.asarray(r["utilisation"])
        if r["rm_calls"] > cfg["pairs"]:
            used = "every RM on every pair"
        else:
            used = "; ".join(f"{c}: {rms[int(np.argmax(row))]} {100 * row.max():.0f}%" for c, row in zip(cats, util))
        lines.append(f"| {r['router']} | {r['accuracy']:.3f} ± {r['accuracy_sd']:.3f} | "
                     + " | ".join(f"{a:.3f}" for a in r["accuracy_per_category"])
                     + f" | {r['seconds_per_1000']:.3g} | {r['calls_per_1000']:.3g} | {used} |")
    lines += ["", "Each RM on its own (from the table): accuracy, abstentions (no label), cost per 1k pairs:", "",
              "| RM | accuracy | " + " | ".join(cats) + " | abstains | s / 1k | calls / 1k |",
              "|---|---|" + "---|" * len(cats) + "---|---|---|"]
    per_cat = np.asarray(results["rm_accuracy_per_category"])
    for k, name in enumerate(rms):
        lines.append(f"| {name} | {results['rm_accuracy'][k]:.3f} | " + " | ".join(f"{a:.3f}" for a in per_cat[:, k])
                     + f" | {results['rm_abstain'][k]:.3f} | {results['rm_cost_per_1000']['seconds'][k]:.3g} | "
                       f"{results['rm_cost_per_1000']['calls'][k]:.3g} |")
    return "\n".join(lines) + "\n"


def plot_tradeoff(results: dict, path) -> None:
    """Accuracy vs RM seconds per 1,000 pairs: the cost-aware sweep as a line, every other router a point."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    sweep = tradeoff(results)
    if sweep:
        ax.errorbar([p["seconds_per_1000"] for p in sweep], [p["accuracy"] for p in sweep],
                    yerr=[p["accuracy_sd"] for p in sweep], marker="o", label="cost-aware Thompson (lambda sweep)")
        for p in sweep:
            ax.annotate(f"λ={p['lambda']:g}", (p["seconds_per_1000"], p["accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(4, -8))
    for r in results["routers"]:
        if not r["router"].startswith(COST_AWARE):
            ax.scatter(r["seconds_per_1000"], r["accuracy"], s=18)
            ax.annotate(r["router"], (r["seconds_per_1000"], r["accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(3, 3))
    ax.set(xscale="symlog", xlabel="RM seconds per 1,000 pairs", ylabel="annotation accuracy",
           title="Annotation accuracy vs labelling cost")
    if sweep:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def offline_from_table(path, rm_names: Sequence[str], featuriser: str = "minilm", cache_dir=None) -> Offline:
    """The TRAIN table of the suite as offline data (its pairs rebuilt from its source)."""
    table = pool_labels.load(path)
    if table.rm_names != tuple(rm_names):
        raise ValueError(f"the train table {path} has RMs {list(table.rm_names)}, the replayed table "
                         f"{list(rm_names)}; label both with the same pool")
    pairs = suite_pairs(table.source)
    pool_labels.check_pairs(table, pairs)
    contexts = pair_features(pairs, featuriser, feature_cache_path(path, featuriser, cache_dir))
    return Offline(contexts, table.correct, name=f"train table ({len(pairs)} pairs)")
