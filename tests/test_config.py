"""rmbandit.config: YAML + dotted overrides -> nested frozen dataclasses, with errors that name
the file, the key, what was expected and what was given."""
from __future__ import annotations  # string annotations: the module must resolve them

import dataclasses
from typing import Any, Literal

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from rmbandit import config
from rmbandit.config import ConfigError


@dataclasses.dataclass(frozen=True)
class Sampling:
    num_samples: int = 4
    temperature: float = 0.8
    max_new_tokens: int = 48


@dataclasses.dataclass(frozen=True)
class Optim:
    learning_rate: float = 1e-5
    warmup: int = 0

    def __post_init__(self):
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")


@dataclasses.dataclass(frozen=True)
class Train:
    run_dir: str = "runs/laser_small"
    seed: int = 0
    use_lora: bool = True
    sampling: Sampling = Sampling()
    optim: Optim = dataclasses.field(default_factory=lambda: Optim(warmup=10))  # not the class default
    pool: tuple[dict, ...] = ({"name": "length", "kind": "rule"},)
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    shape: tuple[int, float] = (2, 0.5)
    router: Literal["laser", "single_rm", "random"] = "laser"
    eval_every: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    cold_start: str | None = None


@dataclasses.dataclass(frozen=True)
class Required:
    name: str
    size: int = 1


TOP_KEYS = "cold_start, eval_every, extra, lora_targets, optim, pool, router, run_dir, sampling, seed, shape, use_lora"


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def write(tmp_path, text, name="x.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


# --- building from data --------------------------------------------------------------------

def test_valid_keys_lists_every_dotted_leaf_in_declaration_order():
    assert config.valid_keys(Train) == [
        "run_dir", "seed", "use_lora", "sampling.num_samples", "sampling.temperature",
        "sampling.max_new_tokens", "optim.learning_rate", "optim.warmup", "pool", "lora_targets",
        "shape", "router", "eval_every", "extra", "cold_start"]


def test_missing_keys_keep_their_defaults_and_a_partial_section_keeps_the_field_default():
    assert config.from_dict(Train, {}) == Train()
    cfg = config.from_dict(Train, {"seed": 3, "sampling": {"temperature": 1.5}, "optim": {"learning_rate": 0.1}})
    assert cfg == Train(seed=3, sampling=Sampling(temperature=1.5), optim=Optim(learning_rate=0.1, warmup=10))


def test_int_becomes_float_and_yaml11_exponent_text_is_a_float():
    cfg = config.from_dict(Train, {"sampling": {"temperature": 1}, "optim": {"learning_rate": "3e-4"}})
    assert cfg.sampling.temperature == 1.0 and type(cfg.sampling.temperature) is float
    assert cfg.optim.learning_rate == 3e-4
    assert yaml.safe_load("lr: 3e-4") == {"lr": "3e-4"}  # why the second one matters


def test_lists_become_tuples_and_free_form_dicts_pass_through():
    pool = [{"name": "a", "weights": [1, 2]}, {"name": "b"}]
    cfg = config.from_dict(Train, {"lora_targets": ["k_proj"], "shape": [3, 1], "pool": pool, "extra": {"k": [1]}})
    assert cfg.lora_targets == ("k_proj",) and cfg.shape == (3, 1.0) and type(cfg.shape[1]) is float
    assert cfg.pool == tuple(pool) and cfg.extra == {"k": [1]}


def test_optional_field_takes_null_or_the_type():
    assert config.from_dict(Train, {"eval_every": None}).eval_every is None
    assert config.from_dict(Train, {"eval_every": 50}).eval_every == 50
    assert error_of(config.from_dict, Train, {"eval_every": "often"}) == (
        "config: 'eval_every' expects int or null, got 'often' (str)")


def test_typo_at_the_top_level_names_the_closest_key_and_the_valid_ones():
    assert error_of(config.from_dict, Train, {"sede": 1}, source="experiments/configs/x.yaml") == (
        f"experiments/configs/x.yaml: unknown key 'sede'; did you mean 'seed'? "
        f"valid keys at the top level: {TOP_KEYS}")


def test_nested_typo_names_the_dotted_key():
    assert error_of(config.from_dict, Train, {"sampling": {"max_new_token": 3}}, source="x.yaml") == (
        "x.yaml: unknown key 'sampling.max_new_token'; did you mean 'sampling.max_new_tokens'? "
        "valid keys under 'sampling': max_new_tokens, num_samples, temperature")


def test_key_at_the_wrong_level_points_to_where_it_lives():
    message = error_of(config.from_dict, Train, {"temperature": 1.0})
    assert message.startswith("config: unknown key 'temperature'; did you mean 'sampling.temperature'?")
    message = error_of(config.from_dict, Train, {"zzz": 1.0})  # nothing close: no guess
    assert message == f"config: unknown key 'zzz'; valid keys at the top level: {TOP_KEYS}"


def test_wrong_types_name_key_expected_type_and_value():
    assert error_of(config.from_dict, Train, {"sampling": {"num_samples": "four"}}) == (
        "config: 'sampling.num_samples' expects int, got 'four' (str)")
    assert error_of(config.from_dict, Train, {"sampling": {"num_samples": 4.0}}) == (
        "config: 'sampling.num_samples' expects int, got 4.0 (float)")
    assert error_of(config.from_dict, Train, {"run_dir": 7}) == "config: 'run_dir' expects str, got 7 (int)"
    assert error_of(config.from_dict, Train, {"lora_targets": ["q_proj", 3]}) == (
        "config: 'lora_targets[1]' expects str, got 3 (int)")
    assert error_of(config.from_dict, Train, {"shape": [1]}) == (
        "config: 'shape' expects a list [int, float] (2 items), got [1] (list)")
    assert error_of(config.from_dict, Train, {"extra": [1]}) == "config: 'extra' expects a mapping, got [1] (list)"
    assert error_of(config.from_dict, Train, {"sampling": 3}) == (
        "config: 'sampling' expects a mapping with keys max_new_tokens, num_samples, temperature, got 3 (int)")


def test_bool_and_int_do_not_stand_in_for_each_other():
    assert error_of(config.from_dict, Train, {"seed": True}) == "config: 'seed' expects int, got True (bool)"
    assert error_of(config.from_dict, Train, {"use_lora": 1}) == (
        "config: 'use_lora' expects bool (true or false), got 1 (int)")
    assert error_of(config.from_dict, Train, {"sampling": {"temperature": False}}) == (
        "config: 'sampling.temperature' expects float, got False (bool)")


def test_literal_lists_the_choices_and_the_closest():
    assert error_of(config.from_dict, Train, {"router": "lasr"}) == (
        "config: 'router' expects one of 'laser', 'single_rm', 'random', got 'lasr' (str); did you mean 'laser'?")
    assert error_of(config.from_dict, Train, {"router": 1}) == (
        "config: 'router' expects one of 'laser', 'single_rm', 'random', got 1 (int)")


def test_every_problem_is_reported_at_once_one_line_each():
    with pytest.raises(ConfigError) as info:
        config.from_dict(Train, {"sede": 1, "seed": "x", "sampling": {"tempreature": 1, "num_samples": None},
                                 "router": "?"}, source="f.yaml")
    lines = str(info.value).splitlines()
    assert lines == list(info.value.problems) and len(lines) == 5
    assert all(line.startswith("f.yaml: ") for line in lines)
    for fragment in ("'sede'", "'seed' expects", "'sampling.tempreature'", "'sampling.num_samples' expects",
                     "'router' expects"):
        assert sum(fragment in line for line in lines) == 1, fragment


def test_missing_required_key_and_the_dataclass_own_checks():
    assert error_of(config.from_dict, Required, {"size": 2}) == "config: missing required key 'name' (str)"
    assert config.from_dict(Required, {"name": "a"}) == Required("a")
    assert error_of(config.from_dict, Train, {"optim": {"learning_rate": -1}}) == (
        "config: 'optim': learning_rate must be > 0, got -1.0")


def test_unsupported_annotation_is_a_schema_error():
    @dataclasses.dataclass
    class Odd:
        items: set = dataclasses.field(default_factory=set)

    with pytest.raises(TypeError, match="'items' has annotation <class 'set'>.*use int, float"):
        config.from_dict(Odd, {"items": [1]})


# --- overrides -----------------------------------------------------------------------------

@pytest.mark.parametrize("override, key, expected", [
    ("seed=3", "seed", 3),
    ("sampling.temperature=0.5", "sampling.temperature", 0.5),
    ("use_lora=false", "use_lora", False),
    ("lora_targets=[q_proj, k_proj]", "lora_targets", ("q_proj", "k_proj")),
    ("shape=[1, 2]", "shape", (1, 2.0)),
    ("eval_every=null", "eval_every", None),
    ("eval_every=25", "eval_every", 25),
    ("router=random", "router", "random"),
    ("run_dir=runs/abc", "run_dir", "runs/abc"),
    ("run_dir=2024", "run_dir", "2024"),        # a str field takes the text as written
    ("cold_start=2024", "cold_start", "2024"), ("cold_start=no", "cold_start", "no"),     # str | None too
    ("cold_start=null", "cold_start", None), ("eval_every=7", "eval_every", 7),
    ("optim.learning_rate=1e-4", "optim.learning_rate", 1e-4),
    ("extra={a: 1}", "extra", {"a": 1}),
])
def test_override_values_are_parsed_as_yaml(override, key, expected):
    cfg = config.from_dict(Train, config.apply_overrides({}, [override], Train))
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    assert value == expected and type(value) is type(expected)


def test_overrides_reach_keys_absent_from_the_data_and_leave_the_input_alone():
    data = {"sampling": {"num_samples": 2}}
    out = config.apply_overrides(data, ["sampling.temperature=1.0", "optim.warmup=5", "sampling={max_new_tokens: 9}"],
                                 Train)
    assert data == {"sampling": {"num_samples": 2}}
    assert out == {"sampling": {"num_samples": 2, "temperature": 1.0, "max_new_tokens": 9}, "optim": {"warmup": 5}}
    assert config.from_dict(Train, out).optim == Optim(warmup=5)
    assert config.apply_overrides({"seed": 1}, ["seed=2", "seed=3"], Train) == {"seed": 3}  # the last wins


def test_override_errors():
    assert error_of(config.apply_overrides, {}, ["sampling.max_new_token=3"], Train) == (
        "override 'sampling.max_new_token=3': unknown key 'sampling.max_new_token'; did you mean "
        "'sampling.max_new_tokens'? valid keys under 'sampling': max_new_tokens, num_samples, temperature")
    assert error_of(config.apply_overrides, {}, ["sed=3"], Train) == (
        f"override 'sed=3': unknown key 'sed'; did you mean 'seed'? valid keys at the top level: {TOP_KEYS}")
    assert error_of(config.apply_overrides, {}, ["sampling.temperature"], Train) == (
        "override 'sampling.temperature': expected the form key=value, e.g. sampling.temperature=VALUE")
    assert error_of(config.apply_overrides, {}, ["=3"], Train) == (
        "override '=3': expected the form key=value, e.g. run_dir=VALUE")
    assert error_of(config.apply_overrides, {}, ["sampling=3"], Train) == (
        "override 'sampling=3': 'sampling' is a section, not a value; set one of its keys, e.g. "
        "sampling.num_samples=VALUE (keys: num_samples, temperature, max_new_tokens)")
    assert error_of(config.apply_overrides, {}, ["seed.x=1"], Train) == (
        "override 'seed.x=1': 'seed' is int, not a section, so it has no key 'seed.x'; set it whole, e.g. seed=VALUE")
    assert error_of(config.apply_overrides, {}, ["seed=abc"], Train) == (
        "override 'seed=abc': 'seed' expects int, got 'abc' (str)")
    assert error_of(config.apply_overrides, {}, ["lora_targets=[a, b"], Train).startswith(
        "override 'lora_targets=[a, b': the value '[a, b' is not valid YAML")
    assert error_of(config.apply_overrides, {}, ["sampling={num_sample: 2}"], Train) == (
        "override 'sampling={num_sample: 2}': unknown key 'sampling.num_sample'; did you mean "
        "'sampling.num_samples'? valid keys under 'sampling': max_new_tokens, num_samples, temperature")
    assert len(error_of(config.apply_overrides, {}, ["sed=1", "seed=x", "ok"], Train).splitlines()) == 3
    with pytest.raises(TypeError, match="sequence of 'key=value' strings"):
        config.apply_overrides({}, "seed=1", Train)


# --- files ---------------------------------------------------------------------------------

def test_load_reads_yaml_applies_overrides_and_names_the_file_in_errors(tmp_path):
    path = write(tmp_path, "seed: 1\nsampling:\n  temperature: 1\nlora_targets: [a, b]\n")
    cfg = config.load(Train, path, ["sampling.num_samples=8"])
    assert cfg == Train(seed=1, sampling=Sampling(num_samples=8, temperature=1.0), lora_targets=("a", "b"))
    assert config.load(Train) == Train() and config.load(Train, overrides=["seed=5"]) == Train(seed=5)
    bad = write(tmp_path, "sampling:\n  max_new_token: 3\n", "bad.yaml")
    assert error_of(config.load, Train, bad).startswith(f"{bad}: unknown key 'sampling.max_new_token'")


def test_empty_file_is_all_defaults(tmp_path):
    assert config.load(Train, write(tmp_path, "")) == Train()
    assert config.load(Train, write(tmp_path, "# nothing set yet\n")) == Train()


def test_yaml_anchors_and_merge_keys_work_and_a_section_left_empty_is_its_defaults(tmp_path):
    path = write(tmp_path, "extra: &common {a: 1, b: 2}\noptim:\n  <<: {warmup: 3, learning_rate: 0.5}\n"
                           "  warmup: 4\nsampling:\n  # temperature: 1.0\n")
    cfg = config.load(Train, path)
    assert cfg.extra == {"a": 1, "b": 2} and cfg.optim == Optim(learning_rate=0.5, warmup=4)
    assert cfg.sampling == Sampling()
    assert error_of(config.from_dict, Train, {"eval_every": 1, "sampling": None, "optim": []}) == (
        "config: 'optim' expects a mapping with keys learning_rate, warmup, got [] (list)")


def test_missing_file_lists_the_configs_next_to_it(tmp_path):
    write(tmp_path, "", "laser_small.yaml")
    write(tmp_path, "", "single_rm.yml")
    missing = tmp_path / "laser_smal.yaml"
    assert error_of(config.load, Train, missing) == (
        f"{missing}: no such config file; did you mean '{tmp_path / 'laser_small.yaml'}'? "
        f"configs in {tmp_path}/: laser_small.yaml, single_rm.yml")
    assert error_of(config.load, Train, tmp_path) == (
        f"{tmp_path}: is a directory, not a config file; configs in {tmp_path}/: laser_small.yaml, single_rm.yml")
    nowhere = tmp_path / "nope" / "x.yaml"
    assert error_of(config.load, Train, nowhere).startswith(
        f"{nowhere}: no such config file (nor a directory {tmp_path / 'nope'}/)")


@pytest.mark.parametrize("text, line, problem", [
    ("seed: 1\nsampling: {num_samples: 4, temperature: 0.", 2, "expected ',' or '}'"),   # truncated
    ("seed: 1\nsampling:\n  num_samples: 4\n temperature: 0.5\n", 4, "expected <block end>"),
    ("seed: 1\n\tsampling: 2\n", 2, "found character '\\t'"),
    ("seed: 1\nrouter: 'laser\n", 3, "found unexpected end of stream"),
    ("seed: 1\nseed: 2\n", 2, "duplicate key 'seed'"),
])
def test_broken_yaml_names_file_and_line(tmp_path, text, line, problem):
    path = write(tmp_path, text)
    message = error_of(config.load, Train, path)
    assert message.startswith(f"{path}:{line}:") and "invalid YAML" in message and problem in message, message


def test_top_level_must_be_a_mapping(tmp_path):
    path = write(tmp_path, "- seed: 1\n")
    assert error_of(config.load, Train, path) == (
        f"{path}: the top level must be a mapping of keys such as 'seed: 0', got [{{'seed': 1}}] (list)")


def test_non_utf8_file(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_bytes(b"run_dir: caf\xe9\n")
    assert error_of(config.load, Train, path).startswith(f"{path}: not UTF-8 text")


# --- writing back ----------------------------------------------------------------------------

def test_to_dict_is_plain_yaml_safe_data():
    data = config.to_dict(Train())
    assert data["lora_targets"] == ["q_proj", "v_proj"] and data["sampling"] == {
        "num_samples": 4, "temperature": 0.8, "max_new_tokens": 48}
    assert yaml.safe_load(yaml.safe_dump(data)) == data


def test_dump_then_load_is_the_same_config(tmp_path):
    cfg = config.load(Train, overrides=["seed=7", "eval_every=3", "router=single_rm", "extra={k: [1, 2]}"])
    path = tmp_path / "run" / "config.yaml"
    config.dump(cfg, path)
    assert "!!python" not in path.read_text() and not list(path.parent.glob("*.tmp"))
    assert config.load(Train, path) == cfg


def test_unicode_line_breaks_in_strings_survive_the_round_trip(tmp_path):
    cfg = Train(run_dir="runs/a\x85", lora_targets=("\u2028", " \x85 "), extra={"k\x85": "\u2029"})
    config.dump(cfg, tmp_path / "c.yaml")  # PyYAML alone writes a trailing NEL so that it reads back a space
    assert config.load(Train, tmp_path / "c.yaml") == cfg


names = st.text(st.characters(codec="utf-8"), max_size=12)
floats = st.floats(allow_nan=False) | st.integers(-10**6, 10**6).map(float)
trains = st.builds(
    Train,
    run_dir=names,
    seed=st.integers(-2**63, 2**63),
    use_lora=st.booleans(),
    sampling=st.builds(Sampling, num_samples=st.integers(), temperature=floats, max_new_tokens=st.integers()),
    optim=st.builds(Optim, learning_rate=st.floats(min_value=1e-300, allow_infinity=False), warmup=st.integers()),
    pool=st.lists(st.dictionaries(names, st.integers() | names | st.lists(st.integers())), max_size=3).map(tuple),
    lora_targets=st.lists(names, max_size=3).map(tuple),
    shape=st.tuples(st.integers(), floats),
    router=st.sampled_from(["laser", "single_rm", "random"]),
    eval_every=st.none() | st.integers(0, 1000),
    extra=st.dictionaries(names, st.none() | st.booleans() | floats | names, max_size=3),
)


@settings(max_examples=60, deadline=None)
@given(cfg=trains)
def test_round_trip_of_random_configs(tmp_path_factory, cfg):
    path = tmp_path_factory.mktemp("rt") / "config.yaml"
    config.dump(cfg, path)
    assert config.load(Train, path) == cfg
    assert config.differences(cfg, config.load(Train, path)) == []


def test_differences_lists_dotted_keys_that_differ():
    a = Train()
    b = Train(seed=1, sampling=Sampling(temperature=1.0), pool=({"name": "other"},), extra={"k": 1})
    assert config.differences(a, b) == ["seed", "sampling.temperature", "pool", "extra.k"]
    assert config.differences(a, a) == []
    assert config.differences(Train(sampling=Sampling(temperature=float("nan"))),
                              Train(sampling=Sampling(temperature=float("nan")))) == []
    assert config.differences(config.to_dict(a), a) == []  # a saved dict against a dataclass
