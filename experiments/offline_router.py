"""BayesianRouter's offline router on the bundled suite: in-distribution and
out-of-distribution routing accuracy (the paper's Table 2), and the trained router.

Behaviour labels: the pool-label tables ``experiments/pool_labels.py`` writes (every RM of
the default pool on the suite's pairs); the pair texts are rebuilt from each table's source.
The encoder is frozen SmolLM2-135M-Instruct (the paper's encoder; the paper fine-tunes it,
``--finetune full`` does too, slowly on a CPU); its embeddings are cached under ``--cache``
so later runs train the head alone.  Rows: the router, the router without the CLS head
(lambda = 0), a frozen MiniLM encoder, and with ``--finetuned-minilm`` MiniLM fully
fine-tuned with the head (the paper's recipe on a 22M encoder; minutes per run on a CPU).

- ID: train on the train split's pairs, test on the test split's (other tasks, same categories).
- OOD: leave one category out: train on the train pairs of the other three, test on every
  pair (train and test split) of the left-out one.

A pick is right when the RM with the highest BT score labels the pair as the ground truth
does.  Accuracy counts the pairs some RM gets right (as the paper), and all pairs.
Baselines: always the RM best on the training pairs, a random RM per pair, each RM alone,
and the oracle.

    python experiments/offline_router.py [--labels-dir experiments/results] [--seeds 3] [--finetuned-minilm]
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import pathlib
import time

import numpy as np

from rmbandit import data
from rmbandit.rewards import labels
from rmbandit.routers import offline as head_lib
from rmbandit.training import offline_router as router_lib


def table_pairs(table: labels.PoolLabels) -> list:
    source = table.source
    tasks = data.load_suite(source["split"], size_per_category=source["per_category"], seed=source["seed"])
    pairs = data.make_pairs(tasks, seed=source["seed"])
    labels.check_pairs(table, pairs)
    return pairs


def cached_embeddings(config: router_lib.OfflineRouterConfig, pairs, cache: pathlib.Path, state: dict):
    """(e, e2) of (chosen, rejected), from ``cache`` when these texts were encoded before."""
    texts = json.dumps([[p.prompt, p.chosen, p.rejected] for p in pairs])
    key = hashlib.sha256(f"{config.encoder}|{config.pooling}|{config.max_tokens}|{texts}".encode()).hexdigest()[:16]
    file = cache / f"pairs_{key}.npz"
    if file.exists():
        saved = np.load(file)
        return saved["e"], saved["e2"]
    name = (config.encoder, config.pooling, config.max_tokens)
    if name not in state:
        state[name] = router_lib.PairEncoder(config.encoder, config.pooling, config.max_tokens, config.dtype)
    start = time.perf_counter()
    e, e2 = router_lib.encode_pairs(state[name], [p.prompt for p in pairs], [p.chosen for p in pairs],
                                    [p.rejected for p in pairs])
    print(f"{config.encoder}: encoded {len(pairs)} pairs in {time.perf_counter() - start:.0f} s", flush=True)
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(file, e=e, e2=e2)
    return e, e2


@dataclasses.dataclass(frozen=True)
class Split:
    """Pairs, their pool labels and their (e, e2) embeddings, row for row."""
    pairs: list
    table: labels.PoolLabels
    emb: tuple

    def where(self, keep) -> Split:
        at = np.flatnonzero(keep)
        return Split([self.pairs[i] for i in at], self.table.subset(at), tuple(x[at] for x in self.emb))

    def __add__(self, other: Split) -> Split:
        a, b = self.table, other.table
        table = labels.PoolLabels(a.rm_names, np.concatenate([a.prefer, b.prefer]), a.seconds + b.seconds,
                                  a.calls + b.calls, a.task_ids + b.task_ids, a.categories + b.categories,
                                  {"parts": [a.source, b.source]})
        return Split(self.pairs + other.pairs, table, tuple(np.concatenate(x) for x in zip(self.emb, other.emb)))


def settings(train: Split, test: Split) -> dict[str, tuple[Split, Split]]:
    """ID, and one OOD setting per category left out: name -> (train on, test on)."""
    out = {"ID": (train, test)}
    train_cat, test_cat = np.asarray(train.table.categories), np.asarray(test.table.categories)
    for c in sorted(set(train.table.categories)):
        out[f"OOD {c}"] = (train.where(train_cat != c), train.where(train_cat == c) + test.where(test_cat == c))
    return out


def evaluate(config, train: Split, test: Split):
    """Train on ``train``, score ``test``: a frozen encoder from the cached embeddings, a
    fine-tuned one from the texts (a fresh copy of the encoder each run)."""
    if config.finetune == "frozen":
        router = router_lib.train_offline_router(config, train.pairs, train.table, embeddings=train.emb)
        scores = np.asarray(head_lib.bt_scores(router.head, *test.emb))
    else:
        router = router_lib.train_offline_router(config, train.pairs, train.table)
        scores = router.scores([p.prompt for p in test.pairs], [p.chosen for p in test.pairs],
                               [p.rejected for p in test.pairs])
    return router, router_lib.evaluate(scores, test.table.correct, train.table.correct)


def summary(per_seed) -> dict:
    return {"mean": float(np.mean(per_seed)), "std": float(np.std(per_seed)), "per_seed": [float(x) for x in per_seed]}


def pooled(entries: list[dict]) -> dict:
    """The OOD settings as one: every left-out category's pairs together (each seed's
    accuracies weighted by the pairs they count)."""
    out = {"pairs": sum(e["pairs"] for e in entries), "solvable_pairs": sum(e["solvable_pairs"] for e in entries),
           "best_rm_name": "per category"}
    for method, value in entries[0].items():
        if not isinstance(value, dict):
            continue
        out[method] = {}
        for part in ("solvable", "all"):
            weights = np.array([e["solvable_pairs" if part == "solvable" else "pairs"] for e in entries], float)
            if isinstance(value[part], dict):
                seeds = np.array([e[method][part]["per_seed"] for e in entries])      # [settings, seeds]
                out[method][part] = summary(weights @ seeds / weights.sum())
            else:
                out[method][part] = float(weights @ np.array([e[method][part] for e in entries]) / weights.sum())
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--labels-dir", default="experiments/results")
    parser.add_argument("--out", default="experiments/results")
    parser.add_argument("--cache", default="/tmp/rmbandit_offline_router")
    parser.add_argument("--encoder", default="smollm2")
    parser.add_argument("--finetune", default="frozen", choices=router_lib.FINETUNE)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--finetuned-minilm", action="store_true",
                        help="add MiniLM fully fine-tuned with the head (the paper's recipe, on a small encoder)")
    parser.add_argument("--finetuned-seeds", type=int, default=1, help="seeds of the fine-tuned variant (minutes each)")
    args = parser.parse_args(argv)
    config = router_lib.OfflineRouterConfig(encoder=args.encoder, finetune=args.finetune, epochs=args.epochs,
                                            head_dim=args.head_dim)
    tables = {split: labels.load(pathlib.Path(args.labels_dir) / f"pool_labels_{split}.json")
              for split in ("train", "test")}
    if tables["train"].rm_names != tables["test"].rm_names:
        raise ValueError(f"the train and test tables label with different pools: {tables['train'].rm_names} vs "
                         f"{tables['test'].rm_names}")
    pairs = {split: table_pairs(table) for split, table in tables.items()}
    state, cache = {}, pathlib.Path(args.cache)

    def settings_for(variant):
        """The settings' splits with ``variant``'s encoder's embeddings."""
        return settings(*(Split(pairs[split], tables[split], cached_embeddings(variant, pairs[split], cache, state))
                          for split in ("train", "test")))

    variants = {"offline router": config, "w/o CLS": dataclasses.replace(config, lambda_cls=0.0)}
    if args.encoder != "minilm":
        variants["MiniLM encoder"] = dataclasses.replace(config, encoder="minilm", pooling="mean")
    if args.finetuned_minilm:
        variants["MiniLM fine-tuned"] = dataclasses.replace(config, encoder="minilm", pooling="mean", finetune="full",
                                                            epochs=None)
    splits = {name: settings_for(variant) for name, variant in variants.items()}
    results = {}
    for setting in splits["offline router"]:
        entry = {}
        for name, variant in variants.items():
            train, test = splits[name][setting]
            runs = []
            for seed in range(args.seeds if variant.finetune == "frozen" else args.finetuned_seeds):
                start = time.perf_counter()
                router, got = evaluate(dataclasses.replace(variant, seed=seed), train, test)
                runs.append(got)
                if setting == "ID" and name == "offline router" and seed == 0:
                    router_lib.save(router, pathlib.Path(args.out) / "offline_router", overwrite=True)
                print(f"{setting} / {name} / seed {seed}: {got['solvable']['router']:.3f} (solvable pairs), "
                      f"{got['all']['router']:.3f} (all) in {time.perf_counter() - start:.0f} s", flush=True)
            entry[name] = {part: summary([r[part]["router"] for r in runs]) for part in ("solvable", "all")}
        for key in ("best_rm", "random", "oracle"):
            entry[key] = {part: runs[0][part][key] for part in ("solvable", "all")}
        correct = test.table.correct
        for k, rm in enumerate(test.table.rm_names):
            entry[f"RM {rm}"] = {"solvable": float(correct[correct.any(1), k].mean()),
                                 "all": float(correct[:, k].mean())}
        entry.update(best_rm_name=train.table.rm_names[int(np.argmax(train.table.correct.mean(0)))],
                     pairs=runs[0]["pairs"], solvable_pairs=runs[0]["solvable_pairs"], train_pairs=len(train.pairs))
        results[setting] = entry
    results["OOD all"] = pooled([results[s] for s in results if s.startswith("OOD ")])
    out = pathlib.Path(args.out)
    payload = {"config": dataclasses.asdict(config), "seeds": args.seeds, "finetuned_seeds": args.finetuned_seeds, "rm_names": list(tables["train"].rm_names),
               "label_sources": {split: table.source for split, table in tables.items()}, "results": results}
    (out / "offline_router.json").write_text(json.dumps(payload, indent=1) + "\n")
    (out / "offline_router.md").write_text(markdown(payload))
    print(markdown(payload))


def markdown(payload) -> str:
    results = payload["results"]
    settings = list(results)
    routers = [m for m in ("offline router", "w/o CLS", "MiniLM encoder", "MiniLM fine-tuned") if m in results["ID"]]
    methods = routers + ["best_rm", "random"] + [f"RM {n}" for n in payload["rm_names"]] + ["oracle"]
    label = {"best_rm": "always-best RM (on the training pairs)", "random": "random RM", "oracle": "oracle",
             "w/o CLS": "w/o CLS (lambda = 0)", "MiniLM encoder": "MiniLM encoder (frozen, mean pooling)",
             "MiniLM fine-tuned": "MiniLM encoder fully fine-tuned (AdamW 2e-5, batch 8, 2 epochs)"}
    config = payload["config"]
    lines = [f"Offline router: frozen {config['encoder']} encoder ({config['pooling']} pooling), head d = "
             f"{config['head_dim']}, lambda = {config['lambda_cls']}; mean (std) over {payload['seeds']} seeds for "
             "the trained routers" + (f" ({payload['finetuned_seeds']} for the fine-tuned one)"
                                     if "MiniLM fine-tuned" in routers else "") + ".", ""]
    for part, title in (("solvable", "pairs some RM gets right (the paper's protocol)"), ("all", "all pairs")):
        count = "solvable_pairs" if part == "solvable" else "pairs"
        lines += [f"Routing accuracy on {title}:", "",
                  "| method | " + " | ".join(f"{s} ({results[s][count]})" for s in settings) + " |",
                  "|---|" + "---|" * len(settings)]
        for m in methods:
            cells = []
            for s in settings:
                value = results[s][m][part]
                if isinstance(value, dict):        # a trained router: mean (std) over seeds
                    cells.append(f"{value['mean']:.3f}" + (f" ({value['std']:.3f})" if len(value["per_seed"]) > 1
                                                           else ""))
                else:
                    cells.append(f"{value:.3f}")
            lines.append(f"| {label.get(m, m)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["ID: train on the train split's pairs, test on the test split's (other tasks of the same categories). "
              "OOD c: train on the train pairs of the other three categories, test on every pair of c (train and "
              "test split). Always-best RM: the RM most often right on the training pairs ("
              + ", ".join(f"{s}: {results[s]['best_rm_name']}" for s in settings) + ").", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
