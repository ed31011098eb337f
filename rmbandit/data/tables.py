"""The fact tables shipped with the package (``rmbandit/data/tables/*.json``), read once.

Rows become frozen dataclasses so callers cannot change the cached tables by accident.
Every table was written by hand and keeps only uncontested facts (no disputed capitals,
no transcontinental countries, no animals whose leg count or flight is a matter of opinion).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json

# Every element symbol, H..Og: answer extraction uses it to tell a symbol ("Fe") from an
# ordinary capitalised word, also for symbols of elements that are not in the table.
ALL_ELEMENT_SYMBOLS = frozenset("""
H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr
Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm
Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No
Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og""".split())


@dataclasses.dataclass(frozen=True)
class Country:
    name: str
    capital: str
    continent: str
    other_city: str           # a well-known non-capital city: the classic wrong answer
    the: bool = False         # "the United Kingdom"

    @property
    def in_sentence(self) -> str:
        return f"the {self.name}" if self.the else self.name


@dataclasses.dataclass(frozen=True)
class Element:
    name: str
    symbol: str
    number: int
    state: str                # at room temperature: "solid", "liquid" or "gas"
    noble_gas: bool
    aliases: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Animal:
    name: str
    animal_class: str         # "mammal", "bird", ...
    legs: int
    flies: bool | None        # None: "some can", never asked as a yes/no question

    @property
    def with_article(self) -> str:
        return ("an " if self.name[0] in "aeiou" else "a ") + self.name


@dataclasses.dataclass(frozen=True)
class FormatTopic:
    id: str
    prompt: str
    sentences: tuple[str, ...]
    keywords: tuple[tuple[str, str], ...]   # (word, an on-topic sentence that contains it)

    def keyword_sentence(self, word: str) -> str:
        return dict(self.keywords)[word]


def _rows(name: str) -> list[dict]:
    text = importlib.resources.files("rmbandit.data").joinpath("tables").joinpath(f"{name}.json").read_text("utf-8")
    return json.loads(text)["rows"]


@functools.cache
def countries() -> tuple[Country, ...]:
    return tuple(Country(r["name"], r["capital"], r["continent"], r["other_city"], r.get("the", False))
                 for r in _rows("countries"))


@functools.cache
def elements() -> tuple[Element, ...]:
    return tuple(Element(r["name"], r["symbol"], r["number"], r["state"], r["noble_gas"], tuple(r.get("aliases", ())))
                 for r in _rows("elements"))


@functools.cache
def animals() -> tuple[Animal, ...]:
    return tuple(Animal(r["name"], r["class"], r["legs"], r["flies"]) for r in _rows("animals"))


@functools.cache
def format_topics() -> tuple[FormatTopic, ...]:
    return tuple(FormatTopic(r["id"], r["prompt"], tuple(r["sentences"]), tuple(r["keywords"].items()))
                 for r in _rows("format_topics"))


@functools.cache
def format_topic(topic_id: str) -> FormatTopic:
    by_id = {t.id: t for t in format_topics()}
    if topic_id not in by_id:
        raise ValueError(f"unknown format topic {topic_id!r}; known: {sorted(by_id)}")
    return by_id[topic_id]


CONTINENTS = ("Africa", "Asia", "Europe", "North America", "Oceania", "South America")
ANIMAL_CLASSES = ("amphibian", "arachnid", "bird", "fish", "insect", "mammal", "reptile")
