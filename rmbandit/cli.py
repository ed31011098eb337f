"""The `rmbandit` command: a thin dispatcher over subcommands."""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile

SIMULATE_OUTPUTS = ("results.json", "timings.json", "regret.png")


def _progress(quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm
    return lambda name: (lambda it: tqdm(it, desc=f"{name:24s}", leave=False, unit="batch"))


def format_table(results: dict, timings: dict) -> str:
    cfg = results["config"]
    lines = [f"{'router':24s} {'accuracy':>8s} {'regret':>8s} {'RM calls':>9s} {'sec':>6s}  most-used RM per category"]
    for r in results["routers"]:
        if r["rm_calls"] > cfg["pairs"]:
            used = f"every RM labels every pair ({r['rm_calls'] // cfg['pairs']} calls per pair)"
        else:
            used = "; ".join(
                f"{cat}: {cfg['rm_names'][max(range(len(row)), key=row.__getitem__)]} {100 * max(row):.0f}%"
                for cat, row in zip(cfg["categories"], r["utilisation"]))
        lines.append(f"{r['router']:24s} {r['accuracy']:8.3f} {r['final_regret']:8.1f} {r['rm_calls']:9d} "
                     f"{timings.get(r['router'], float('nan')):6.1f}  {used}")
    return "\n".join(lines)


def plot(results: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    cfg, routers = results["config"], results["routers"]
    fig, (curves, heat) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.4, 1]})
    for r in routers:
        y = np.asarray(r["regret_curve"])
        curves.plot(np.linspace(0, cfg["pairs"], len(y)), y, label=r["router"])
    curves.set(xlabel="pairs labelled", ylabel="cumulative expected regret", title="Regret vs the best RM per pair")
    curves.legend(fontsize=8)
    learned = [r for r in routers if r["router"] not in ("best_single_rm", "majority_vote")] or routers
    best = min(learned, key=lambda r: r["final_regret"])
    im = heat.imshow(np.asarray(best["utilisation"]), vmin=0, vmax=1, cmap="viridis")
    heat.set(xticks=range(len(cfg["rm_names"])), yticks=range(len(cfg["categories"])),
             title=f"RM utilisation per category: {best['router']}")
    heat.set_xticklabels(cfg["rm_names"], rotation=30, ha="right")
    heat.set_yticklabels(cfg["categories"])
    fig.colorbar(im, ax=heat, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def flag(param: str) -> str:
    """The command-line spelling of a parameter: batch_size -> --batch-size."""
    return "--" + param.replace("_", "-")


def router_names(text: str | None) -> tuple[str, ...] | None:
    """--routers "a, b" -> ("a", "b"); None (flag absent) means all; "" names none."""
    return None if text is None else tuple(name.strip() for name in text.split(",") if name.strip())


def prepare_output_dir(out: pathlib.Path, outputs=SIMULATE_OUTPUTS) -> None:
    """Create ``out`` and prove it takes files, before any work is done; raise ValueError
    naming --out otherwise."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ValueError(f"--out: {out} exists and is not a directory; choose another --out") from None
    except OSError as err:
        raise ValueError(f"--out: cannot create {out}: {err.strerror}; choose a writable --out") from None
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as err:
        raise ValueError(f"--out: cannot write into {out}: {err.strerror}; choose a writable --out") from None
    for name in outputs:
        if (out / name).is_dir():
            raise ValueError(f"--out: {out / name} is a directory, so {name} cannot be written; remove it "
                             "or choose another --out")


SYNTHETIC_ONLY = ("dim",)
REPLAY_ONLY = ("labels", "train_labels", "seeds", "lambdas", "featuriser", "pool", "hf_split", "features_dir")
REPLAY_OUTPUTS = ("results.json", "results.md", "timings.json", "tradeoff.png")


def synthetic_pairs(text: str) -> int | None:
    """--pairs 4096 (a number: synthetic mode) -> 4096; a replay source (suite, a path, hf:<id>) -> None."""
    try:
        return int(text)
    except ValueError:
        return None


def check_mode_flags(args, replay: bool) -> None:
    """A flag of the other mode is a mistake: name it and the mode it belongs to."""
    wrong = REPLAY_ONLY if not replay else SYNTHETIC_ONLY
    given = [name for name in wrong if getattr(args, name) is not None]
    if given:
        mode = ("replay mode (--pairs suite, a .jsonl path or hf:<id>)" if not replay
                else "synthetic mode (--pairs <number>)")
        raise ValueError(f"{flag(given[0])}: only for the {mode}; drop it or change --pairs")


def cmd_simulate(args) -> int:
    from rmbandit import simulate
    count = synthetic_pairs(args.pairs)
    try:
        check_mode_flags(args, replay=count is None)
    except ValueError as err:
        print(f"rmbandit simulate: error: {err}", file=sys.stderr)
        return 2
    if count is None:
        return cmd_replay(args)
    names = router_names(args.routers)
    out = pathlib.Path(args.out)
    batch_size = 64 if args.batch_size is None else args.batch_size
    dim = 32 if args.dim is None else args.dim
    try:
        simulate.check_settings(args.seed, count, batch_size, dim, args.granularity, names, flag)
        prepare_output_dir(out, SIMULATE_OUTPUTS)
    except ValueError as err:
        print(f"rmbandit simulate: error: {err}", file=sys.stderr)
        return 2
    results = simulate.simulate(seed=args.seed, pairs=count, batch_size=batch_size, dim=dim,
                                granularity=args.granularity, routers=names, progress=_progress(args.quiet))
    timings = results.pop("timings")           # wall-clock: kept out of results.json, which is reproducible
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "timings.json").write_text(json.dumps({"seconds": timings}, indent=1))
    plot(results, out / "regret.png")
    cfg = results["config"]
    print(f"{cfg['pairs']} pairs, {len(cfg['rm_names'])} RMs, {cfg['granularity']} routing, seed {cfg['seed']}")
    print(format_table(results, timings))
    print(f"wrote {', '.join(str(out / name) for name in SIMULATE_OUTPUTS)}")
    return 0


def parse_lambdas(text: str | None) -> tuple[float, ...] | None:
    """--lambdas "0,0.3,1" -> (0.0, 0.3, 1.0); None (flag absent) means the default sweep."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--lambdas: {text!r} is not a comma-separated list of numbers, e.g. 0,0.3,1") from None
    if any(not v >= 0 for v in values):
        raise ValueError(f"--lambdas: every lambda must be >= 0 (seconds of RM time traded per unit of "
                         f"accuracy), got {text!r}")
    return values


def read_pool(path: str | None):
    """--pool entries.json: a JSON list of RM config entries (rewards.pool); None: the default pool."""
    if path is None:
        return None
    try:
        entries = json.loads(pathlib.Path(path).read_text())
    except OSError as err:
        raise ValueError(f"--pool: cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"--pool: {path} is not valid JSON ({err.msg}, line {err.lineno}); it must be a list "
                         'of RM entries like [{"name": "numbers", "kind": "verifier", "verifier": "numeric"}]') from None
    from rmbandit.rewards.pool import check_entries
    if not isinstance(entries, list):
        raise ValueError(f"--pool: {path} must hold a JSON list of RM entries, got {type(entries).__name__}")
    check_entries(entries)
    return entries


def cmd_replay(args) -> int:
    """The controlled simulation on real labels (rmbandit.replay)."""
    from rmbandit import replay
    out = pathlib.Path(args.out)
    seeds = 5 if args.seeds is None else args.seeds
    featuriser = args.featuriser or "minilm"
    try:
        if seeds < 1:
            raise ValueError(f"--seeds: must be at least 1, got {seeds}")
        if not 0 <= args.seed <= 2**32 - seeds:
            raise ValueError(f"--seed: must be in [0, 2**32 - --seeds], got {args.seed}")
        if featuriser not in replay.FEATURISERS:
            raise ValueError(f"--featuriser: unknown {featuriser!r}; registered: {', '.join(replay.FEATURISERS)}")
        lambdas = parse_lambdas(args.lambdas)
        pool = read_pool(args.pool)
        prepare_output_dir(out, REPLAY_OUTPUTS)
        labels = args.labels or out / "pool_labels.json"      # labelled once, then reused
        pairs, table = replay.load_replay(args.pairs, labels, pool, args.hf_split or "test", log=print)
        offline = None if args.train_labels is None else replay.offline_from_table(
            args.train_labels, table.rm_names, featuriser, args.features_dir)
        names = router_names(args.routers)
        if names is None:
            names = replay.router_names(table.rm_names, replay.LAMBDAS if lambdas is None else lambdas)
        contexts = replay.pair_features(pairs, featuriser, replay.feature_cache_path(labels, featuriser,
                                                                                      args.features_dir))
        run = dict(routers=names, seeds=range(args.seed, args.seed + seeds),
                   batch_size=16 if args.batch_size is None else args.batch_size, granularity=args.granularity)
        replay.check_settings(table, contexts, names, run["seeds"], run["batch_size"], run["granularity"], flag)
    except (ValueError, FileNotFoundError) as err:
        print(f"rmbandit simulate: error: {err}", file=sys.stderr)
        return 2
    results = replay.replay(table, contexts, offline=offline, progress=_progress(args.quiet), **run)
    timings = results.pop("timings")
    results["tradeoff"] = replay.tradeoff(results)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(replay.markdown(results))
    (out / "timings.json").write_text(json.dumps({"seconds": timings}, indent=1))
    replay.plot_tradeoff(results, out / "tradeoff.png")
    print(replay.markdown(results))
    print(f"wrote {', '.join(str(out / name) for name in REPLAY_OUTPUTS)}")
    return 0


def cmd_train(args) -> int:
    from rmbandit import config as config_lib
    from rmbandit.training import config as train_config
    from rmbandit.training import loop
    try:
        config = config_lib.load(train_config.TrainConfig, args.config, args.overrides)
        train_config.check(config)
        loop.check_resumable(config)
        # the setup loads the policy, tokenizer and pool: a wrong path or file is the user's
        # to fix, said in one line (errors while training keep their traceback)
        trainer = loop.Trainer(config, progress=not args.quiet and sys.stderr.isatty())
    except (ValueError, FileNotFoundError) as err:
        print(f"rmbandit train: error: {err}", file=sys.stderr)
        return 2
    try:
        trainer.run()
    except loop.CheckpointUnreadable as err:
        print(f"rmbandit train: error: {err}", file=sys.stderr)
        return 2
    except loop.TrainingDiverged as err:
        print(f"rmbandit train: error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_best_of_n(args) -> int:
    from rmbandit import config as config_lib
    from rmbandit.training import best_of_n
    try:
        config = config_lib.load(best_of_n.BestOfNConfig, args.config, args.overrides)
        best_of_n.check_config(config)
        runner = best_of_n.BestOfN(config, progress=not args.quiet and sys.stderr.isatty())   # loads models
    except (ValueError, FileNotFoundError) as err:
        print(f"rmbandit best-of-n: error: {err}", file=sys.stderr)
        return 2
    runner.run()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rmbandit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser(
        "simulate", help="controlled routing simulation: simulated RMs, or real labelled pairs replayed through a pool",
        description="Synthetic mode (--pairs <number>): simulated RMs whose accuracy depends on the category. "
                    "Replay mode (--pairs suite | file.jsonl | hf:<dataset id>): every RM of a real pool has labelled "
                    "every pair once (a saved table); each router picks an RM per pair or per batch and its label is "
                    "looked up; reports annotation accuracy over --seeds, the oracle rate, RM utilisation per "
                    "category, cost per 1,000 pairs and the cost-aware accuracy/cost trade-off.")
    sim.add_argument("--pairs", default="4096",
                     help="a number: that many synthetic pairs (default 4096); 'suite': the bundled suite's pairs "
                          "(rebuilt from --labels' source, else the test split); a .jsonl file, one "
                          '{"prompt", "chosen", "rejected", "category"} object a line; or hf:<dataset id> '
                          "(needs a network; RewardBench 2's columns: prompt, chosen, rejected, subset)")
    sim.add_argument("--seed", type=int, default=0, help="the seed (replay: the first of --seeds)")
    sim.add_argument("--batch-size", type=int, default=None, help="pairs per router call (default 64; replay 16)")
    sim.add_argument("--dim", type=int, default=None, help="synthetic mode: context width (default 32)")
    sim.add_argument("--granularity", choices=("item", "batch"), default="item",
                     help="item: one RM per pair (BayesianRouter); batch: one RM per batch (LASeR; replay batches "
                          "hold one category)")
    sim.add_argument("--routers", default=None,
                     help="comma-separated subset (default: all; an unknown name lists the valid ones); replay adds "
                          "single:<rm>, cost_aware@<lambda> and oracle")
    sim.add_argument("--labels", default=None,
                     help="replay: the pool-label table (rewards.labels, e.g. experiments/results/"
                          "pool_labels_test.json); checked against the pairs; missing: the pool labels the pairs "
                          "and the table is saved there (default <out>/pool_labels.json)")
    sim.add_argument("--train-labels", default=None,
                     help="replay: the suite's TRAIN table: the leaderboard for best_single_rm and the offline "
                          "prior (default: the replayed pairs, in-sample)")
    sim.add_argument("--seeds", type=int, default=None,
                     help="replay: seeds to average over (default 5); a seed shuffles the pairs and the router keys")
    sim.add_argument("--lambdas", default=None,
                     help="replay: the cost-aware sweep, comma-separated lambdas >= 0 per RM-second of a pair "
                          "(default 0,0.03,0.1,0.3,1,3)")
    sim.add_argument("--featuriser", default=None,
                     help="replay: pair contexts (default minilm: [e + e'; |e - e'|] of MiniLM embeddings of "
                          "prompt+chosen and prompt+rejected; more via replay.register_featuriser)")
    sim.add_argument("--features-dir", default=None,
                     help="replay: where the contexts' .npz cache goes (default beside the table)")
    sim.add_argument("--pool", default=None,
                     help="replay: a JSON list of RM entries to label pairs with when there is no table "
                          "(default rewards.pool.DEFAULT_POOL); a saved table of other RMs is refused")
    sim.add_argument("--hf-split", default=None, help="replay with hf:<id>: the dataset split (default test)")
    sim.add_argument("--out", default="runs/simulate",
                     help="directory for " + ", ".join(SIMULATE_OUTPUTS) + " (replay: " + ", ".join(REPLAY_OUTPUTS)
                          + "); created and checked before the run")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=cmd_simulate)
    train = sub.add_parser("train", help="iterative DPO with RM routing (LASeR by default)",
                           description="Train a policy with preference pairs labelled by routed RMs. Running the same "
                                       "command on an existing run_dir resumes from its latest checkpoint.")
    config_arguments(train, "YAML config (e.g. experiments/configs/laser_small.yaml); default: the embedded demo",
                     "dotted overrides, e.g. train.iterations=3 sampling.num_samples=8 run_dir=runs/x")
    train.set_defaults(func=cmd_train)
    bon = sub.add_parser("best-of-n", help="best-of-n with a routed RM, no policy training (LASeR's best-of-n mode)",
                         description="Learn the router on the training prompts (the routed RM picks the best of n "
                                     "samples; the bandit reward is the pick's rescaled negative NLL), then compare "
                                     "its picks on the test set with each single RM's, the score ensemble's and a "
                                     "random pick. Writes run_dir/best_of_n.json.")
    config_arguments(bon, "YAML config: a training config's keys plus best_of_n.*; default: the embedded demo",
                     "dotted overrides, e.g. sampling.num_samples=8 router.name=random run_dir=runs/x")
    bon.set_defaults(func=cmd_best_of_n)
    return parser


def config_arguments(parser, config_help: str, overrides_help: str) -> None:
    """The arguments of the commands that run from a YAML config: --config, overrides, --quiet."""
    parser.add_argument("--config", default=None, help=config_help)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def console_main() -> int:
    """The ``rmbandit`` command: the process is ours, so its allocator keeps the memory
    XLA:CPU frees for the next call (``host.retain_freed_memory``) and its compiled
    programs persist on disk for the next run (``host.use_compile_cache``), then ``main``."""
    from rmbandit import host
    host.retain_freed_memory()
    try:
        host.use_compile_cache()
    except ValueError as err:
        print(f"rmbandit: error: {err}", file=sys.stderr)
        return 2
    return main()


def main(argv=None) -> int:
    """Run a subcommand; return its exit status (2 for bad arguments, as argparse)."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        # key=value overrides after an option (train ... --quiet seed=1): argparse leaves them over
        if extra and getattr(args, "overrides", None) is not None and all(
                "=" in arg and not arg.startswith("-") for arg in extra):
            args.overrides = [*args.overrides, *extra]
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exit_:               # argparse's own errors and --help
        return exit_.code
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
