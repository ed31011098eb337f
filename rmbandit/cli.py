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


def prepare_output_dir(out: pathlib.Path) -> None:
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
    for name in SIMULATE_OUTPUTS:
        if (out / name).is_dir():
            raise ValueError(f"--out: {out / name} is a directory, so {name} cannot be written; remove it "
                             "or choose another --out")


def cmd_simulate(args) -> int:
    from rmbandit import simulate
    names = router_names(args.routers)
    out = pathlib.Path(args.out)
    try:
        simulate.check_settings(args.seed, args.pairs, args.batch_size, args.dim, args.granularity, names, flag)
        prepare_output_dir(out)
    except ValueError as err:
        print(f"rmbandit simulate: error: {err}", file=sys.stderr)
        return 2
    results = simulate.simulate(seed=args.seed, pairs=args.pairs, batch_size=args.batch_size, dim=args.dim,
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


def cmd_train(args) -> int:
    from rmbandit import config as config_lib
    from rmbandit.training import config as train_config
    from rmbandit.training import loop
    try:
        config = config_lib.load(train_config.TrainConfig, args.config, args.overrides)
        train_config.check(config)
        loop.check_resumable(config)
    except (ValueError, FileNotFoundError) as err:
        print(f"rmbandit train: error: {err}", file=sys.stderr)
        return 2
    try:
        loop.train(config, progress=not args.quiet and sys.stderr.isatty())
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
    except (ValueError, FileNotFoundError) as err:
        print(f"rmbandit best-of-n: error: {err}", file=sys.stderr)
        return 2
    best_of_n.best_of_n(config, progress=not args.quiet and sys.stderr.isatty())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rmbandit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sim = sub.add_parser("simulate", help="controlled routing simulation with simulated reward models")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--pairs", type=int, default=4096)
    sim.add_argument("--batch-size", type=int, default=64)
    sim.add_argument("--dim", type=int, default=32)
    sim.add_argument("--granularity", choices=("item", "batch"), default="item",
                     help="item: one RM per pair (BayesianRouter); batch: one RM per batch (LASeR)")
    sim.add_argument("--routers", default=None,
                     help="comma-separated subset (default: all; an unknown name lists the valid ones)")
    sim.add_argument("--out", default="runs/simulate",
                     help="directory for " + ", ".join(SIMULATE_OUTPUTS) + " (created; checked before the run)")
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    sim.set_defaults(func=cmd_simulate)
    train = sub.add_parser("train", help="iterative DPO with RM routing (LASeR by default)",
                           description="Train a policy with preference pairs labelled by routed RMs. Running the same "
                                       "command on an existing run_dir resumes from its latest checkpoint.")
    train.add_argument("--config", default=None,
                       help="YAML config (e.g. experiments/configs/laser_small.yaml); default: the embedded demo")
    train.add_argument("overrides", nargs="*", metavar="key=value",
                       help="dotted overrides, e.g. train.iterations=3 sampling.num_samples=8 run_dir=runs/x")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=cmd_train)
    bon = sub.add_parser("best-of-n", help="best-of-n with a routed RM, no policy training (LASeR's best-of-n mode)",
                         description="Learn the router on the training prompts (the routed RM picks the best of n "
                                     "samples; the bandit reward is the pick's rescaled negative NLL), then compare "
                                     "its picks on the test set with each single RM's, the score ensemble's and a "
                                     "random pick. Writes run_dir/best_of_n.json.")
    bon.add_argument("--config", default=None,
                     help="YAML config: a training config's keys plus best_of_n.*; default: the embedded demo")
    bon.add_argument("overrides", nargs="*", metavar="key=value",
                     help="dotted overrides, e.g. sampling.num_samples=8 router.name=random run_dir=runs/x")
    bon.add_argument("--quiet", action="store_true", help="no progress bar")
    bon.set_defaults(func=cmd_best_of_n)
    return parser


def main(argv=None) -> int:
    """Run a subcommand; return its exit status (2 for bad arguments, as argparse)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:               # argparse's own errors and --help
        return exit_.code
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
