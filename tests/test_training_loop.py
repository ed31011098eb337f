"""The training loop end to end on CPU: a tiny random Llama with SmolLM2's tokenizer as
the policy, verifier RMs, configs written as YAML and read by ``rmbandit.config.load``.
Covers the run's outputs, resume after SIGKILL (bit-identical), batches without a pair,
a diverging loss, config errors, the shipped configs and a (data, fsdp) mesh."""
import json
import math
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.experimental.compilation_cache.compilation_cache as compilation_cache_lib
import numpy as np
import orbax.checkpoint as ocp
import pytest
import yaml

pytest.importorskip("torch")
pytest.importorskip("transformers")

from rmbandit import cli  # noqa: E402
from rmbandit import config as config_lib  # noqa: E402
from rmbandit.training import config as train_config  # noqa: E402
from rmbandit.training import loop  # noqa: E402
from rmbandit.training import report  # noqa: E402
from tests.torch_oracle import save_tiny  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
POOL = [{"name": "numbers", "kind": "verifier", "verifier": "numeric"},
        {"name": "noisy", "kind": "verifier", "verifier": "correctness", "noise": 1.0, "seed": 0}]
MESH = {"data": 2, "fsdp": 2, "devices": 4}          # 4 of conftest's 8 fake devices
ROW_FIELDS = ("iteration", "batch", "rm", "loss", "bandit_reward", "pairs", "time_sample", "time_score",
              "time_step", "time_router")
CACHE_SETTINGS = {"jax_persistent_cache_min_compile_time_secs": 0.0, "jax_persistent_cache_min_entry_size_bytes": 0}


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Every run compiles the same functions: a persistent compilation cache shared by the
    module's runs (and, through the environment it returns, its subprocesses) compiles them once."""
    settings = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("jax_cache")), **CACHE_SETTINGS}
    before = {name: getattr(jax.config, name) for name in settings}
    for name, value in settings.items():
        jax.config.update(name, value)
    compilation_cache_lib.reset_cache()                 # the cache starts up again with the directory
    yield {name.upper(): str(value) for name, value in settings.items()}
    for name, value in before.items():
        jax.config.update(name, value)
    compilation_cache_lib.reset_cache()


@pytest.fixture(scope="module")
def policy_dir(tmp_path_factory, smol_tokenizer):
    """A tiny random Llama whose vocabulary is SmolLM2's, saved with that tokenizer."""
    directory = tmp_path_factory.mktemp("policy")
    save_tiny(directory, "llama_tied_mha", vocab_size=len(smol_tokenizer))
    smol_tokenizer.save_pretrained(directory)
    return directory


def write_config(directory: pathlib.Path, policy_dir, **sections) -> pathlib.Path:
    """A small run's YAML (2 iterations x 2 batches of 4 prompts, 3 samples of 8 tokens, LASeR
    hearing of empty batches too, a (data=2, fsdp=2) mesh) with ``sections`` merged over it."""
    config = {"run_dir": str(directory / "run"), "seed": 0,
              "policy": {"path": str(policy_dir), "max_prompt_tokens": 64},
              "data": {"train_per_category": 4},
              "train": {"iterations": 2, "batches_per_iteration": 2, "prompts_per_batch": 4},
              "sampling": {"num_samples": 3, "max_new_tokens": 8},
              "step": {"learning_rate": 1e-2},
              # above ln 2, the loss of every iteration's first batch (pi = pi_ref): a batch
              # without a pair is worse for the router than one that trains
              "router": {"name": "laser", "empty_batch_loss": 0.75},
              "eval": {"per_category": 2, "max_new_tokens": 8},
              "checkpoint": {"every": 1, "keep": 10},
              "pool": POOL,
              "mesh": MESH}
    for section, values in sections.items():
        config[section] = {**config.get(section, {}), **values} if isinstance(values, dict) else values
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def load(path, *overrides) -> train_config.TrainConfig:
    return config_lib.load(train_config.TrainConfig, path, overrides)


def quiet_trainer(config) -> loop.Trainer:
    return loop.Trainer(config, log=lambda message: None)


def checkpoint_steps(run_dir: pathlib.Path) -> list[int]:
    directory = run_dir / "checkpoints"
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit()) if directory.exists() else []


def saved_arrays(run_dir: pathlib.Path, step: int) -> dict:
    """The checkpoint's state as {path: numpy array} (trained params, optimiser, reference, router)."""
    state = ocp.StandardCheckpointer().restore((run_dir / "checkpoints" / str(step) / "state").resolve())
    return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


def without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if not k.startswith("time_")} for row in rows]


def assert_same_arrays(got: dict, want: dict):
    assert got.keys() == want.keys()
    different = [k for k in want if not np.array_equal(got[k], want[k], equal_nan=True)]
    assert not different, f"arrays differ: {different}"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, policy_dir):
    """One uninterrupted run through the CLI (the reference the other tests compare with)."""
    directory = tmp_path_factory.mktemp("finished")
    path = write_config(directory, policy_dir)
    assert cli.main(["train", "--config", str(path), "--quiet"]) == 0
    return path, load(path)


# --- 1. end to end ---------------------------------------------------------------------------

def test_a_run_leaves_metrics_summary_plots_tensorboard_and_checkpoints(finished_run, capsys):
    path, config = finished_run
    run_dir = pathlib.Path(config.run_dir)
    rows = report.read_metrics(run_dir / "metrics.jsonl")
    assert [(r["iteration"], r["batch"]) for r in rows] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for row in rows:
        assert set(ROW_FIELDS) <= row.keys()
        assert row["rm"] in ("numbers", "noisy")
        assert all(row[k] >= 0 for k in ROW_FIELDS if k.startswith("time_"))
    assert any(not r["skipped"] and r["pairs"] > 0 and math.isfinite(r["loss"]) for r in rows), rows

    summary = json.loads((run_dir / "summary.json").read_text())
    for category in config.data.categories:
        assert set(summary["accuracy"][category]) == {"before", "after"}
        assert set(summary["utilisation"][category]) == {"numbers", "noisy"}
    assert summary["batches"] == 4
    for png in ("bandit_rewards.png", "rm_utilisation.png"):
        assert (run_dir / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert checkpoint_steps(run_dir) == [1, 2, 3, 4]

    capsys.readouterr()
    assert cli.main(["train", "--config", str(path), "--quiet"]) == 0
    assert "the run is finished" in capsys.readouterr().out
    assert len(report.read_metrics(run_dir / "metrics.jsonl")) == 4          # nothing trained again


# --- 2. resume -------------------------------------------------------------------------------

def test_a_run_killed_after_its_first_checkpoint_resumes_bit_identical(tmp_path, policy_dir, finished_run,
                                                                       compilation_cache):
    _, reference = finished_run
    path = write_config(tmp_path, policy_dir)
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "rmbandit", "train", "--config", str(path), "--quiet"]
    # XLA_FLAGS: conftest's 8 devices, as in-process
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **compilation_cache}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while not checkpoint_steps(run_dir):
            assert process.poll() is None, process.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    assert checkpoint_steps(run_dir)[-1] < 4, "killed too late: the run had finished"

    finished = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert "resuming from the checkpoint" in finished.stdout
    want_dir = pathlib.Path(reference.run_dir)
    assert_same_arrays(saved_arrays(run_dir, 4), saved_arrays(want_dir, 4))
    assert without_times(report.read_metrics(run_dir / "metrics.jsonl")) == without_times(
        report.read_metrics(want_dir / "metrics.jsonl"))


def test_a_moved_run_resumed_at_an_iteration_boundary_with_more_iterations_ends_identical(tmp_path, policy_dir,
                                                                                        finished_run):
    _, reference = finished_run
    path = write_config(tmp_path, policy_dir)
    quiet_trainer(load(path, "train.iterations=1")).run()
    assert checkpoint_steps(tmp_path / "run")[-1] == 2
    moved = tmp_path / "moved"                      # e.g. copied to another disk: resumes where it now is
    shutil.move(tmp_path / "run", moved)
    quiet_trainer(load(path, f"run_dir={moved}")).run()       # train.iterations may grow on resume
    want_dir = pathlib.Path(reference.run_dir)
    assert_same_arrays(saved_arrays(moved, 4), saved_arrays(want_dir, 4))
    assert without_times(report.read_metrics(moved / "metrics.jsonl")) == without_times(
        report.read_metrics(want_dir / "metrics.jsonl"))
    assert load(moved / "config.yaml").run_dir == str(moved)


# --- 3. batches without a pair ---------------------------------------------------------------

def test_a_verifier_that_ties_every_sample_skips_every_batch_and_trains_nothing(tmp_path, policy_dir):
    path = write_config(tmp_path, policy_dir, router={"name": "single_rm", "rm": "numbers"},
                        train={"iterations": 1})
    trainer = quiet_trainer(load(path))
    trainer.run()
    rows = report.read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert len(rows) == 2
    assert all(r["skipped"] is True and r["pairs"] == 0 and r["loss"] is None and r["rm"] == "numbers"
               for r in rows), rows
    initial = trainer.fresh_state()["train"]
    jax.tree.map(np.testing.assert_array_equal, trainer.state["train"].params, initial.params)
    assert int(trainer.state["train"].step) == 0


@pytest.mark.parametrize("empty_batch_loss", [None, 0.6931])
def test_the_router_learns_from_a_skipped_batch_only_with_empty_batch_loss(tmp_path, policy_dir, empty_batch_loss):
    path = write_config(tmp_path, policy_dir, pool=POOL[:1],
                        router={"name": "laser", "empty_batch_loss": empty_batch_loss})
    trainer = quiet_trainer(load(path))
    before = trainer.fresh_state()
    after, row = trainer.train_batch(before, 0)
    assert row["skipped"] and row["pairs"] == 0
    # the bandit's state (LinUCB statistics, reward history); assign counts the labels anyway
    same = jax.tree.leaves(jax.tree.map(lambda a, b: np.array_equal(a, b, equal_nan=True),
                                        after["router"].bandit, before["router"].bandit))
    if empty_batch_loss is None:
        assert all(same), "the router changed on a skipped batch without router.empty_batch_loss"
        assert row["bandit_reward"] is None
    else:
        assert not all(same), "router.empty_batch_loss set, yet the router learnt nothing"
        assert row["bandit_reward"] is not None
    jax.tree.map(np.testing.assert_array_equal, after["train"].params, before["train"].params)


# --- 4. divergence ---------------------------------------------------------------------------

def test_a_diverging_loss_stops_the_run_and_keeps_the_last_checkpoint(tmp_path, policy_dir, capsys):
    # a learning rate this large makes the first step's update overflow the second batch's loss
    path = write_config(tmp_path, policy_dir, router={"name": "single_rm", "rm": "noisy"},
                        step={"learning_rate": 1e38})
    assert cli.main(["train", "--config", str(path), "--quiet"]) == 1
    message = capsys.readouterr().err
    assert "iteration 0, batch 1 (global batch 1)" in message, message
    assert "the latest checkpoint, after batch 0, is intact" in message, message
    run_dir = tmp_path / "run"
    assert checkpoint_steps(run_dir) == [1]             # nothing of the failing batch was saved
    assert len(report.read_metrics(run_dir / "metrics.jsonl")) == 1
    saved = saved_arrays(run_dir, 1)
    assert saved and all(np.isfinite(a).all() for a in saved.values() if a.dtype.kind == "f")

    with pytest.raises(loop.TrainingDiverged, match="global batch 1"):   # resumes from it, diverges again
        quiet_trainer(load(path)).run()


def test_a_nan_gradient_with_a_finite_loss_stops_the_run_before_it_saves_nan_weights(tmp_path, policy_dir,
                                                                                     monkeypatch):
    path = write_config(tmp_path, policy_dir, router={"name": "single_rm", "rm": "noisy"})
    trainer = quiet_trainer(load(path))
    step, calls = trainer._step, []

    def nan_gradient_on_the_second_step(state, base, batch, **kwargs):
        new_state, metrics = step(state, base, batch, **kwargs)
        calls.append(1)
        if len(calls) == 2:            # what optax's clipping makes of a NaN gradient: NaN updates
            new_state = new_state._replace(params=jax.tree.map(lambda x: x * np.nan, new_state.params))
            metrics = {**metrics, "grad_norm": metrics["grad_norm"] * np.nan}
        return new_state, metrics

    monkeypatch.setattr(trainer, "_step", nan_gradient_on_the_second_step)
    with pytest.raises(loop.TrainingDiverged, match=r"the training gradient norm is nan \(loss 0\.6"):
        trainer.run()
    run_dir = tmp_path / "run"
    saved = saved_arrays(run_dir, checkpoint_steps(run_dir)[-1])
    assert saved and all(np.isfinite(a).all() for a in saved.values() if a.dtype.kind == "f")


def test_a_truncated_latest_checkpoint_is_named_with_the_fix_and_the_one_before_resumes(tmp_path, finished_run,
                                                                                       capsys):
    path, reference = finished_run
    run_dir = tmp_path / "copy"
    shutil.copytree(reference.run_dir, run_dir)
    latest = checkpoint_steps(run_dir)[-1]
    for blob in (run_dir / "checkpoints" / str(latest)).rglob("*"):       # a copy cut short
        if blob.is_file() and blob.stat().st_size > 1000:
            os.truncate(blob, blob.stat().st_size // 2)
    assert cli.main(["train", "--config", str(path), "--quiet", f"run_dir={run_dir}"]) == 2
    err = capsys.readouterr().err
    previous = checkpoint_steps(run_dir)[-2]
    assert err.startswith(f"rmbandit train: error: the checkpoint after batch {latest - 1} "
                          f"({run_dir / 'checkpoints' / str(latest)}) cannot be read: "), err
    assert f"to resume from the one before it (after batch {previous - 1}), move" in err and "Traceback" not in err

    shutil.move(run_dir / "checkpoints" / str(latest), tmp_path / "cut_short")     # the fix the error names
    assert cli.main(["train", "--config", str(path), "--quiet", f"run_dir={run_dir}"]) == 0
    assert_same_arrays(saved_arrays(run_dir, latest), saved_arrays(pathlib.Path(reference.run_dir), latest))


# --- 5. config errors ------------------------------------------------------------------------

@pytest.mark.parametrize("override, named", [
    ("sampling.max_new_token=4", ["sampling.max_new_token", "max_new_tokens", "num_samples", "temperature"]),
    ("train.iterations=two", ["train.iterations", "'two'"]),
    ("router.name=lazer", ["router.name", "laser", "single_rm"]),
    ("sampling.pairs_per_prompt=9", ["sampling.pairs_per_prompt", "sampling.num_samples"]),
    ("step.beta=.inf", ["step.beta", "finite", "inf"]),
    ("step.learning_rate=-1e-3", ["step.learning_rate", ">= 0", "-0.001"]),
    ("sampling.top_p=0", ["sampling.top_p", "(0, 1]"]),
    ("seed=-1", ["seed must be >= 0", "-1"]),
    ("mesh.fsdp=0", ["mesh.fsdp must be at least 1", "got 0"]),
    ("mesh.devices=0", ["mesh.devices must be at least 1"]),
    ("mesh.data=0", ["mesh.data must be at least 1, or -1"]),
    ("step.lora_rank=0", ["step.lora_rank", "rank must be a positive integer, got 0"]),
    ("step.micro_batches=8", ["step.micro_batches=8", "train.prompts_per_batch=4", "whole prompts"]),   # 8 pairs
])
def test_a_bad_override_exits_2_naming_the_key(tmp_path, policy_dir, capsys, override, named):
    path = write_config(tmp_path, policy_dir)
    assert cli.main(["train", "--config", str(path), "--quiet", override]) == 2
    err = capsys.readouterr().err
    assert all(word in err for word in named), err
    assert not (tmp_path / "run").exists()               # nothing started


def test_more_mesh_devices_than_there_are_is_named(tmp_path, policy_dir, capsys):
    path = write_config(tmp_path, policy_dir, mesh={"data": -1, "fsdp": 1, "devices": 9})
    assert cli.main(["train", "--config", str(path), "--quiet"]) == 2
    assert "mesh.devices=9 but this process sees 8 cpu device(s)" in capsys.readouterr().err


def test_overrides_may_follow_an_option(tmp_path, policy_dir, capsys):
    path = write_config(tmp_path, policy_dir)
    # both overrides reach the config: the second one is what fails
    assert cli.main(["train", "--config", str(path), "seed=1", "--quiet", "step.beta=0"]) == 2
    assert "step.beta must be a finite number > 0" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(path), "--quiet", "--bogus"]) == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_a_policy_path_without_a_model_exits_2_in_one_line(tmp_path, policy_dir, smol_tokenizer, capsys):
    only_tokenizer = tmp_path / "tokenizer_only"
    smol_tokenizer.save_pretrained(only_tokenizer)
    for where, named in [(tmp_path / "missing", "missing does not exist"),
                         (tmp_path / "empty", "holds no tokenizer"),
                         (only_tokenizer, "no config.json in")]:
        (tmp_path / "empty").mkdir(exist_ok=True)
        path = write_config(tmp_path, policy_dir)
        assert cli.main(["train", "--config", str(path), "--quiet", f"policy.path={where}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("rmbandit train: error: ") and named in err and "Traceback" not in err, err
        assert not (tmp_path / "run").exists()


def test_resuming_with_another_config_exits_2_naming_the_key_and_keeps_the_run(finished_run, capsys):
    path, config = finished_run
    metrics = pathlib.Path(config.run_dir) / "metrics.jsonl"
    before = metrics.read_bytes()
    assert cli.main(["train", "--config", str(path), "--quiet", "step.beta=0.2", "train.iterations=3"]) == 2
    err = capsys.readouterr().err
    assert "step.beta differs" in err and "train.iterations" not in err, err     # iterations may grow
    assert metrics.read_bytes() == before
    with pytest.raises(ValueError, match=r"\(step\.beta differs"):           # Trainer.run checks it too
        quiet_trainer(load(path, "step.beta=0.2")).run()


# --- 6. the shipped configs ------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((ROOT / "experiments" / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_passes_check(path):
    train_config.check(load(path))


# --- 7. a (data, fsdp) mesh ------------------------------------------------------------------

@pytest.mark.parametrize("sections", [
    {"mesh": {"data": 1, "fsdp": 1, "devices": 1}},
    # gradient accumulation on the mesh: the step and the reference pass run prompt halves,
    # each at the size of the fuller half's real tokens
    {"step": {"micro_batches": 2}},
], ids=["one_device", "micro_batches"])
def test_a_data_fsdp_mesh_trains_like_one_device(tmp_path, policy_dir, finished_run, sections):
    _, on_mesh = finished_run
    path = write_config(tmp_path, policy_dir, **sections)
    quiet_trainer(load(path)).run()
    rows = {"one": report.read_metrics(tmp_path / "run" / "metrics.jsonl"),
            "mesh": report.read_metrics(pathlib.Path(on_mesh.run_dir) / "metrics.jsonl")}
    for key in ("rm", "pairs", "skipped"):
        assert [r[key] for r in rows["mesh"]] == [r[key] for r in rows["one"]], key
    trained = [i for i, r in enumerate(rows["one"]) if not r["skipped"]]
    assert len(trained) >= 2, f"too few batches trained for a comparison: {rows['one']}"
    # the first trained batch starts from the same state on both: its loss and gradient agree
    # to float32 rounding.  After that Adam amplifies the rounding: its first steps move each
    # weight by about +-lr whatever the gradient's size, so a gradient entry near zero whose
    # sign differs between layouts moves that weight 2 lr apart (lr is 1e-2 here)
    first = trained[0]
    for key in ("loss", "grad_norm"):
        np.testing.assert_allclose(rows["mesh"][first][key], rows["one"][first][key], rtol=1e-4, err_msg=key)
    for key in ("loss", "grad_norm", "bandit_reward"):
        np.testing.assert_allclose([rows["mesh"][i][key] for i in trained], [rows["one"][i][key] for i in trained],
                                   rtol=1e-2, err_msg=key)


# --- 8. the sampler's weights ----------------------------------------------------------------

@pytest.mark.parametrize("weights, casts", [("bfloat16", 1), ("policy", 0)])
def test_training_samples_with_the_configured_weights_and_evaluation_with_the_policys(
        tmp_path, policy_dir, monkeypatch, weights, casts):
    """``sampling.weights=bfloat16`` (the default) samples the training batches from
    bfloat16 copies of the weights; ``policy`` from the policy's own; evaluation's greedy
    responses always come from the policy's own (counted as traces of the cast)."""
    traced = []
    monkeypatch.setattr(loop, "with_bfloat16_weights",
                        lambda model, params, cast=loop.with_bfloat16_weights: traced.append(1) or cast(model, params))
    assert train_config.TrainConfig().sampling.weights == "bfloat16"
    trainer = quiet_trainer(load(write_config(tmp_path, policy_dir, mesh={"data": 1, "fsdp": 1, "devices": 1}),
                                 f"sampling.weights={weights}"))
    state = trainer.fresh_state()
    state, _ = trainer.train_batch(state, 0)          # the step donates the state it was given
    assert len(traced) == casts
    responses = trainer.respond(["What is 2 + 3?"], state)
    assert len(traced) == casts and isinstance(responses[0], str)
