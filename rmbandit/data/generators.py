"""Task generators, one per category.  Each draws one random task of its split from a numpy
Generator, or None when the drawn question kind cannot be built from that split's subjects.

Every task carries in ``meta`` what the pair builder needs to write realistic right and wrong
responses: a ``claim`` template ("the capital of Japan is {}"), plausible ``distractors``
as ``(kind, value)`` pairs, the MC ``lure`` (the most tempting wrong option), yes/no
``statement``/``negation``/``fact`` sentences, the arithmetic ``reasoning`` template.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from rmbandit.data import formats, tables
from rmbandit.data.task import Task, make_task, split_of

Generator = Callable[[np.random.Generator, str], "Task | None"]


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


def _sample(rng: np.random.Generator, items, k: int) -> list:
    return [items[i] for i in rng.choice(len(items), size=k, replace=False)]


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]


def _with_article(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


@functools.cache
def _in_split(table: str, split: str) -> tuple:
    rows = getattr(tables, table)()
    return tuple(row for row in rows if split_of(f"{table}:{row.name}") == split)


# ---------------------------------------------------------------------------------------------
# arithmetic

_NAMES = (("Maya", "she"), ("Liam", "he"), ("Sofia", "she"), ("Noah", "he"), ("Ava", "she"), ("Ethan", "he"),
          ("Zara", "she"), ("Omar", "he"), ("Lena", "she"), ("Kofi", "he"), ("Priya", "she"), ("Mateo", "he"),
          ("Hana", "she"), ("Lucas", "he"), ("Amara", "she"), ("Ben", "he"), ("Chloe", "she"), ("Ravi", "he"),
          ("Ines", "she"), ("Tom", "he"))
_POSSESSIVE = {"she": "her", "he": "his"}
_OBJECTS = ("apples", "marbles", "stickers", "pencils", "cookies", "books", "coins", "stamps", "cards", "balloons",
            "shells", "crayons", "oranges", "cupcakes", "toy cars", "buttons")
_SYMBOLS = {"add": ("+",), "sub": ("-",), "mul": ("×", "*", "x")}

# (operation, question, reasoning); the reasoning ends in {eq}, the equation "a op b = result"
_ARITHMETIC_TEMPLATES = (
    ("add", "{name} has {a} {obj}. {Pro} buys {b} more. How many {obj} does {name} have now?",
     "{name} starts with {a} {obj} and buys {b} more, so {eq}."),
    ("add", "There are {a} {obj} in a box and {b} {obj} on the table. How many {obj} are there altogether?",
     "Putting the {a} {obj} in the box together with the {b} on the table gives {eq}."),
    ("add", "{name} read {a} pages on Monday and {b} pages on Tuesday. How many pages did {pro} read in total?",
     "{Pro} read {a} pages and then {b} more pages, so {eq}."),
    ("add", "What is {a} plus {b}?", "Adding the two numbers: {eq}."),
    ("add", "A class has {a} girls and {b} boys. How many children are in the class?",
     "We add the girls and the boys: {eq}."),
    ("sub", "{name} had {a} {obj} and gave {b} of them to a friend. How many {obj} does {name} have left?",
     "{name} gives away {b} of the {a} {obj}, so {eq}."),
    ("sub", "A shop had {a} {obj}. It sold {b} of them. How many {obj} are left in the shop?",
     "The shop sold {b} of its {a} {obj}, so {eq}."),
    ("sub", "What is {a} minus {b}?", "Subtracting: {eq}."),
    ("sub", "{name} is {a} years old and {poss} cousin is {b} years old. How many years older is {name}?",
     "The difference between the two ages is {eq}."),
    ("sub", "There were {a} birds on a tree. Then {b} birds flew away. How many birds are still on the tree?",
     "{b} of the {a} birds flew away, so {eq}."),
    ("mul", "There are {a} boxes with {b} {obj} in each box. How many {obj} are there in total?",
     "{a} boxes of {b} {obj} each make {eq}."),
    ("mul", "{name} buys {a} packs of {obj}. Each pack has {b} {obj}. How many {obj} does {name} buy?",
     "{a} packs with {b} {obj} per pack: {eq}."),
    ("mul", "What is {a} times {b}?", "Multiplying: {eq}."),
    ("mul", "A garden has {a} rows of flowers with {b} flowers in each row. How many flowers are in the garden?",
     "{a} rows of {b} flowers give {eq}."),
    ("mul", "Each ticket costs {b} dollars. How many dollars do {a} tickets cost?",
     "{a} tickets at {b} dollars each cost {eq}."),
)


def _operands(rng: np.random.Generator, op: str) -> tuple[int, int]:
    if op == "add":
        return int(rng.integers(2, 61)), int(rng.integers(2, 61))
    if op == "sub":
        a = int(rng.integers(10, 100))
        return a, int(rng.integers(2, a))
    return int(rng.integers(2, 10)), int(rng.integers(2, 13))


def _apply(op: str, a: int, b: int) -> int:
    return {"add": a + b, "sub": a - b, "mul": a * b}[op]


def arithmetic_key(op: str, a: int, b: int) -> str:
    # a + b and b + a are one problem: one split for both
    if op in ("add", "mul"):
        a, b = sorted((a, b))
    return f"arithmetic:{op}:{a}:{b}"


def _equation(op: str, a: int, b: int, result: int, symbol: str) -> str:
    return f"{a} {symbol} {b} = {result}"


def arithmetic_distractors(op: str, a: int, b: int, symbol: str, rng: np.random.Generator) -> tuple:
    """Plausible wrong answers ``(kind, value, equation shown in the working)``."""
    answer = _apply(op, a, b)
    right = _equation(op, a, b, answer, symbol)
    near = answer + 1 if answer == 0 or rng.random() < 0.5 else answer - 1
    out = [("off_by_one", near, _equation(op, a, b, near, symbol))]
    if op == "add":
        out.append(("wrong_operation", abs(a - b), f"{max(a, b)} - {min(a, b)} = {abs(a - b)}"))
        if a % 10 + b % 10 >= 10:    # forgot to carry the ten
            out.append(("carry_slip", answer - 10, _equation(op, a, b, answer - 10, symbol)))
    elif op == "sub":
        out.append(("wrong_operation", a + b, f"{a} + {b} = {a + b}"))
        if a % 10 < b % 10:          # forgot to borrow
            out.append(("carry_slip", answer + 10, _equation(op, a, b, answer + 10, symbol)))
    else:
        out.append(("wrong_operation", a + b, f"{a} + {b} = {a + b}"))
        out.append(("times_table_slip", answer + a, _equation(op, a, b, answer + a, symbol)))
    slip = answer + _pick(rng, (1, 2, 10)) * (1 if answer < 10 or rng.random() < 0.5 else -1)
    out.append(("final_line_slip", slip, right))     # right working, wrong final answer
    return tuple((kind, value, eq) for kind, value, eq in out if value != answer and value >= 0)


def arithmetic_task(rng: np.random.Generator, split: str) -> Task | None:
    op, question, reasoning = _pick(rng, _ARITHMETIC_TEMPLATES)
    a, b = _operands(rng, op)
    if split_of(arithmetic_key(op, a, b)) != split:
        return None
    name, pronoun = _pick(rng, _NAMES)
    words = {"name": name, "pro": pronoun, "Pro": pronoun.capitalize(), "poss": _POSSESSIVE[pronoun], "a": a, "b": b,
             "obj": _pick(rng, _OBJECTS), "eq": "{eq}"}   # {eq} stays: the pair builder fills in the working
    symbol = _pick(rng, _SYMBOLS[op])
    answer = _apply(op, a, b)
    return make_task("arithmetic", split, question.format(**words), str(answer), "number",
                     op=op, a=a, b=b, reasoning=_sentence(reasoning.format(**words)),
                     equation=_equation(op, a, b, answer, symbol),
                     distractors=arithmetic_distractors(op, a, b, symbol, rng))


# ---------------------------------------------------------------------------------------------
# multiple choice

_MC_TRAILERS = ("Answer with the letter of the correct option.", "Reply with A, B, C or D.",
                "Choose the correct option.", "")
_LOOKALIKE_CONTINENT = {"Europe": "Asia", "Asia": "Europe", "Africa": "Asia", "North America": "South America",
                        "South America": "North America", "Oceania": "Asia"}
_LOOKALIKE_CLASS = {"mammal": "fish", "bird": "mammal", "reptile": "amphibian", "amphibian": "reptile",
                    "fish": "mammal", "insect": "arachnid", "arachnid": "insect"}
_LOOKALIKE_LEGS = {0: 4, 2: 4, 4: 2, 6: 8, 8: 6}


def _choice_task(rng, split: str, question: str, correct, wrong: list, claim: str, lure) -> Task:
    options = [correct, *wrong]
    order = rng.permutation(4)
    shown = [str(options[i]) for i in order]
    letter = "ABCD"[int(np.flatnonzero(order == 0)[0])]
    lines = "\n".join(f"{l}) {text}" for l, text in zip("ABCD", shown))
    prompt = f"{question}\n{lines}\n{_pick(rng, _MC_TRAILERS)}".rstrip()
    return make_task("multiple_choice", split, prompt, letter, "choice",
                     question=question, options=tuple(shown), claim=claim, lure=str(lure))


def _mc_capital(rng, split):
    countries = _in_split("countries", split)
    country = _pick(rng, countries)
    others = [c.capital for c in _sample(rng, [c for c in countries if c != country], 2)]
    question = f"Which of these cities is the capital of {country.in_sentence}?"
    return _choice_task(rng, split, question, country.capital, [country.other_city, *others],
                        f"{{}} is the capital of {country.in_sentence}", country.other_city)


def _mc_continent(rng, split):
    country = _pick(rng, _in_split("countries", split))
    lure = _LOOKALIKE_CONTINENT[country.continent]
    rest = [c for c in tables.CONTINENTS if c not in (country.continent, lure)]
    return _choice_task(rng, split, f"On which continent is {country.in_sentence}?", country.continent,
                        [lure, *_sample(rng, rest, 2)], f"{country.in_sentence} is in {{}}", lure)


def _mc_symbol(rng, split):
    elements = _in_split("elements", split)
    element = _pick(rng, elements)
    wrong = [e.symbol for e in _sample(rng, [e for e in elements if e != element], 3)]
    lookalike = element.name[:2]
    if lookalike != element.symbol and lookalike not in wrong:
        wrong[0] = lookalike       # "Ir" for iron, "Si" for silver: the tempting mistakes
    return _choice_task(rng, split, f"What is the chemical symbol of {element.name.lower()}?", element.symbol, wrong,
                        f"the chemical symbol of {element.name.lower()} is {{}}", wrong[0])


def _mc_element_with_symbol(rng, split):
    elements = _in_split("elements", split)
    element = _pick(rng, elements)
    wrong = [e.name for e in _sample(rng, [e for e in elements if e != element], 3)]
    return _choice_task(rng, split, f"Which element has the chemical symbol {element.symbol}?", element.name, wrong,
                        f"{{}} has the chemical symbol {element.symbol}", wrong[0])


def _mc_animal_class(rng, split):
    animal = _pick(rng, _in_split("animals", split))
    lure = _LOOKALIKE_CLASS[animal.animal_class]
    rest = [c for c in tables.ANIMAL_CLASSES if c not in (animal.animal_class, lure)]
    return _choice_task(rng, split, f"What kind of animal is {animal.with_article}?", animal.animal_class,
                        [lure, *_sample(rng, rest, 2)], f"{animal.with_article} is a kind of {{}}", lure)


def _mc_class_member(rng, split):
    animals = _in_split("animals", split)
    wanted = _pick(rng, ("mammal", "bird", "insect", "fish", "reptile"))
    members = [a for a in animals if a.animal_class == wanted]
    others = [a for a in animals if a.animal_class != wanted]
    if not members or len(others) < 3:
        return None
    answer = _pick(rng, members)
    wrong = _sample(rng, others, 3)
    return _choice_task(rng, split, f"Which of these animals is {_with_article(wanted)}?", answer.name,
                        [a.name for a in wrong], f"the {{}} is {_with_article(wanted)}", wrong[0].name)


def _mc_most_legs(rng, split):
    by_legs: dict[int, list] = {}
    for animal in _in_split("animals", split):
        by_legs.setdefault(animal.legs, []).append(animal)
    if len(by_legs) < 4:
        return None
    counts = sorted(_sample(rng, sorted(by_legs), 4), reverse=True)
    chosen = [_pick(rng, by_legs[n]) for n in counts]
    return _choice_task(rng, split, "Which of these animals has the most legs?", chosen[0].name,
                        [a.name for a in chosen[1:]], "the {} has the most legs of these animals", chosen[1].name)


def _mc_can_fly(rng, split):
    animals = _in_split("animals", split)
    fliers = [a for a in animals if a.flies is True]
    walkers = [a for a in animals if a.flies is False]
    if not fliers or len(walkers) < 3:
        return None
    wrong = _sample(rng, walkers, 3)
    return _choice_task(rng, split, "Which of these animals can fly?", _pick(rng, fliers).name,
                        [a.name for a in wrong], "the {} can fly", wrong[0].name)


def _mc_gas(rng, split):
    elements = _in_split("elements", split)
    gases = [e for e in elements if e.state == "gas"]
    others = [e for e in elements if e.state != "gas"]
    if not gases or len(others) < 3:
        return None
    wrong = _sample(rng, others, 3)
    return _choice_task(rng, split, "Which of these elements is a gas at room temperature?", _pick(rng, gases).name,
                        [e.name for e in wrong], "{} is a gas at room temperature", wrong[0].name)


def _mc_arithmetic(rng, split):
    op = _pick(rng, ("add", "sub", "mul"))
    a, b = _operands(rng, op)
    if split_of(arithmetic_key(op, a, b)) != split:
        return None
    answer = _apply(op, a, b)
    wrong = []
    for _, value, _ in arithmetic_distractors(op, a, b, "+", rng):
        if value not in wrong:
            wrong.append(value)
    for step in (10, 2, 3, 11):   # top up with near misses until there are three
        for value in (answer + step, answer - step):
            if len(wrong) < 3 and value >= 0 and value != answer and value not in wrong:
                wrong.append(value)
    word = {"add": "plus", "sub": "minus", "mul": "times"}[op]
    return _choice_task(rng, split, f"What is {a} {word} {b}?", answer, wrong[:3], f"{a} {word} {b} is {{}}",
                        wrong[0])


def _mc_compare(rng, split):
    numbers = sorted(int(n) for n in rng.choice(np.arange(10, 100), size=4, replace=False))
    if split_of("compare:" + ",".join(map(str, numbers))) != split:
        return None
    largest = rng.random() < 0.5
    answer, lure = (numbers[-1], numbers[-2]) if largest else (numbers[0], numbers[1])
    word = "largest" if largest else "smallest"
    return _choice_task(rng, split, f"Which of these numbers is the {word}?", answer,
                        [n for n in numbers if n != answer], f"{{}} is the {word} of these numbers", lure)


_MC_KINDS = (_mc_capital, _mc_continent, _mc_symbol, _mc_element_with_symbol, _mc_animal_class, _mc_class_member,
             _mc_most_legs, _mc_can_fly, _mc_gas, _mc_arithmetic, _mc_compare)


def multiple_choice_task(rng: np.random.Generator, split: str) -> Task | None:
    return _pick(rng, _MC_KINDS)(rng, split)


# ---------------------------------------------------------------------------------------------
# factual (short answer and yes/no)

_YES_NO_TRAILERS = ("", " Answer yes or no.", " Please answer with yes or no.")


def _all_cities() -> tuple[str, ...]:
    return tuple(sorted({c.capital for c in tables.countries()} | {c.other_city for c in tables.countries()}))


def _yes_no_task(rng, split, question: str, truth: bool, statement: str, negation: str, fact: str) -> Task:
    prompt = question + _pick(rng, _YES_NO_TRAILERS)
    return make_task("factual", split, prompt, "yes" if truth else "no", "yes_no",
                     statement=statement, negation=negation, fact=fact)


def _short_answer_task(rng, split, question: str, answer, check: str, claim: str, distractors, **extra) -> Task:
    distractors = tuple((kind, str(value)) for kind, value in distractors if str(value) != str(answer))
    return make_task("factual", split, question, str(answer), check, claim=claim, distractors=distractors, **extra)


def _fact_capital(rng, split):
    countries = _in_split("countries", split)
    country = _pick(rng, countries)
    question = _pick(rng, ("What is the capital of {}?", "Name the capital city of {}.",
                           "Which city is the capital of {}?")).format(country.in_sentence)
    other = _pick(rng, [c for c in countries if c != country])
    return _short_answer_task(rng, split, question, country.capital, "text",
                              f"the capital of {country.in_sentence} is {{}}",
                              [("distractor_city", country.other_city), ("other_capital", other.capital)],
                              alternatives=tuple(c for c in _all_cities() if c != country.capital))


def _fact_capital_yes_no(rng, split):
    countries = _in_split("countries", split)
    country = _pick(rng, countries)
    truth = bool(rng.random() < 0.5)
    city = country.capital if truth else _pick(rng, (country.other_city, country.other_city,
                                                     _pick(rng, [c for c in countries if c != country]).capital))
    where = country.in_sentence
    return _yes_no_task(rng, split, f"Is {city} the capital of {where}?", truth,
                        f"{city} is the capital of {where}", f"{city} is not the capital of {where}",
                        f"the capital of {where} is {country.capital}")


def _fact_continent(rng, split):
    country = _pick(rng, _in_split("countries", split))
    question = _pick(rng, ("On which continent is {}?", "Which continent is {} in?")).format(country.in_sentence)
    lure = _LOOKALIKE_CONTINENT[country.continent]
    other = _pick(rng, [c for c in tables.CONTINENTS if c not in (country.continent, lure)])
    return _short_answer_task(rng, split, question, country.continent, "text", f"{country.in_sentence} is in {{}}",
                              [("neighbouring_continent", lure), ("other_continent", other)],
                              alternatives=tuple(c for c in tables.CONTINENTS if c != country.continent),
                              ignore=(country.name,))


def _fact_continent_yes_no(rng, split):
    country = _pick(rng, _in_split("countries", split))
    truth = bool(rng.random() < 0.5)
    continent = country.continent if truth else _pick(rng, (_LOOKALIKE_CONTINENT[country.continent],
                                                            _pick(rng, tables.CONTINENTS)))
    truth = continent == country.continent
    where = country.in_sentence
    return _yes_no_task(rng, split, f"Is {where} in {continent}?", truth, f"{where} is in {continent}",
                        f"{where} is not in {continent}", f"{where} is in {country.continent}")


def _wrong_symbols(element, elements, rng) -> list[tuple[str, str]]:
    lookalikes = [element.name[:2], element.name[0] + element.name[2]]
    out = [("lookalike_symbol", s) for s in lookalikes if s != element.symbol]
    out.append(("other_element", _pick(rng, [e for e in elements if e != element]).symbol))
    return out


def _fact_symbol(rng, split):
    elements = _in_split("elements", split)
    element = _pick(rng, elements)
    name = element.name.lower()
    question = _pick(rng, ("What is the chemical symbol of {}?", "What is the symbol for the element {}?")).format(name)
    return _short_answer_task(rng, split, question, element.symbol, "symbol",
                              f"the chemical symbol of {name} is {{}}", _wrong_symbols(element, elements, rng))


def _fact_atomic_number(rng, split):
    elements = _in_split("elements", split)
    element = _pick(rng, elements)
    name = element.name.lower()
    other = _pick(rng, [e for e in elements if e != element])
    return _short_answer_task(rng, split, f"What is the atomic number of {name}?", element.number, "number",
                              f"the atomic number of {name} is {{}}",
                              [("off_by_one", element.number + _pick(rng, (-1, 1))), ("other_element", other.number)])


def _fact_element_name(rng, split):
    elements = _in_split("elements", split)
    element = _pick(rng, elements)
    others = _sample(rng, [e for e in elements if e != element], 2)
    alternatives = tuple(form for e in tables.elements() if e != element for form in (e.name, *e.aliases))
    return _short_answer_task(rng, split, f"Which element has the chemical symbol {element.symbol}?", element.name,
                              "text", f"{{}} has the chemical symbol {element.symbol}",
                              [("other_element", e.name) for e in others],
                              aliases=element.aliases, alternatives=alternatives)


def _fact_symbol_yes_no(rng, split):
    elements = _in_split("elements", split)
    element = _pick(rng, elements)
    truth = bool(rng.random() < 0.5)
    symbol = element.symbol if truth else _pick(rng, _wrong_symbols(element, elements, rng))[1]
    name = element.name.lower()
    return _yes_no_task(rng, split, f"Is {symbol} the chemical symbol of {name}?", truth,
                        f"{symbol} is the chemical symbol of {name}", f"{symbol} is not the chemical symbol of {name}",
                        f"the chemical symbol of {name} is {element.symbol}")


def _fact_element_property_yes_no(rng, split):
    # the answer is drawn first, then a subject that has it: half the questions are "yes"
    truth = bool(rng.random() < 0.5)
    elements = _in_split("elements", split)
    if rng.random() < 0.5:
        candidates = [e for e in elements if e.noble_gas == truth]
        if not candidates:
            return None
        name = _pick(rng, candidates).name.lower()
        return _yes_no_task(rng, split, f"Is {name} a noble gas?", truth, f"{name} is a noble gas",
                            f"{name} is not a noble gas", f"{name} is {'a' if truth else 'not a'} noble gas")
    element = _pick(rng, elements)
    name = element.name.lower()
    state = element.state if truth else _pick(rng, [s for s in ("gas", "liquid", "solid") if s != element.state])
    return _yes_no_task(rng, split, f"Is {name} a {state} at room temperature?", truth,
                        f"{name} is a {state} at room temperature", f"{name} is not a {state} at room temperature",
                        f"{name} is a {element.state} at room temperature")


def _fact_legs(rng, split):
    animals = _in_split("animals", split)
    animal = _pick(rng, animals)
    lure = _LOOKALIKE_LEGS[animal.legs]
    return _short_answer_task(rng, split, f"How many legs does {animal.with_article} have?", animal.legs, "number",
                              f"{animal.with_article} has {{}} legs",
                              [("similar_animal", lure), ("off_by_two", animal.legs + 2)])


def _fact_class_yes_no(rng, split):
    animal = _pick(rng, _in_split("animals", split))
    truth = bool(rng.random() < 0.5)
    cls = animal.animal_class if truth else _LOOKALIKE_CLASS[animal.animal_class]
    it = animal.with_article
    return _yes_no_task(rng, split, f"Is {it} {_with_article(cls)}?", truth, f"{it} is {_with_article(cls)}",
                        f"{it} is not {_with_article(cls)}", f"{it} is {_with_article(animal.animal_class)}")


def _fact_flies_yes_no(rng, split):
    truth = bool(rng.random() < 0.5)
    animals = [a for a in _in_split("animals", split) if a.flies is truth]
    if not animals:
        return None
    it = _pick(rng, animals).with_article
    return _yes_no_task(rng, split, f"Can {it} fly?", truth, f"{it} can fly", f"{it} cannot fly",
                        f"{it} {'can' if truth else 'cannot'} fly")


_FACT_KINDS = (_fact_capital, _fact_capital_yes_no, _fact_continent, _fact_continent_yes_no, _fact_symbol,
               _fact_atomic_number, _fact_element_name, _fact_symbol_yes_no, _fact_element_property_yes_no,
               _fact_legs, _fact_class_yes_no, _fact_flies_yes_no)


def factual_task(rng: np.random.Generator, split: str) -> Task | None:
    return _pick(rng, _FACT_KINDS)(rng, split)


# ---------------------------------------------------------------------------------------------
# format

JSON_KEYS = ("answer", "response", "summary", "text", "reply", "message")
# (phrase, a fluent paraphrase that does NOT end with the phrase: the near-miss violation)
END_PHRASES = (("Is there anything else I can help with?", "Can I help with anything else?"),
               ("Let me know if you have additional questions.", "Feel free to ask if you have more questions."),
               ("That is all.", "That is everything."),
               ("Hope this helps!", "I hope this is helpful!"),
               ("Thank you for reading.", "Thanks for reading."))


def format_spec(kind: str, rng: np.random.Generator, topic: tables.FormatTopic) -> dict:
    if kind == "exact_words":
        return {"kind": kind, "n": int(rng.integers(4, 13))}
    if kind == "max_words":
        return {"kind": kind, "n": int(_pick(rng, (8, 10, 12, 15, 20, 25)))}
    if kind == "json_key":
        return {"kind": kind, "key": _pick(rng, JSON_KEYS)}
    if kind == "keyword":
        return {"kind": kind, "word": _pick(rng, topic.keywords)[0]}
    if kind == "end_phrase":
        return {"kind": kind, "phrase": _pick(rng, END_PHRASES)[0]}
    if kind == "bullets":
        return {"kind": kind, "n": int(rng.integers(2, 5))}   # 5 topic sentences: room for n + 1 bullets
    return {"kind": kind}


def format_task(rng: np.random.Generator, split: str) -> Task | None:
    topics = [t for t in tables.format_topics() if split_of(f"format_topics:{t.id}") == split]
    topic = _pick(rng, topics)
    spec = format_spec(_pick(rng, formats.FORMAT_KINDS), rng, topic)
    rule = formats.instruction(spec, int(rng.integers(3)))
    prompt = f"{topic.prompt} {rule}" if rng.random() < 0.75 else f"{rule}\n\n{topic.prompt}"
    return make_task("format", split, prompt, formats.spec_json(spec), "format", topic=topic.id,
                     **{f"constraint_{k}": v for k, v in spec.items()})


GENERATORS: dict[str, Generator] = {"arithmetic": arithmetic_task, "multiple_choice": multiple_choice_task,
                                    "format": format_task, "factual": factual_task}
