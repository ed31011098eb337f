"""Task suites bundled with the project: deterministic, verifiable tasks in four categories
(arithmetic, multiple choice, format following, factual), answer extraction and checking, chat
prompts, labelled preference pairs, and a ``datasets.Dataset`` view.

    tasks = load_suite("train", size_per_category=100, seed=0)
    is_correct(tasks[0], "The answer is 42.")
    pairs = make_pairs(load_suite("test"), seed=0)   # for RM pairwise accuracy per category

Nothing is downloaded: the fact tables ship in ``rmbandit/data/tables/``.
"""
from rmbandit.data.answers import extract_answer, is_correct, reference_answer
from rmbandit.data.formats import FORMAT_KINDS, check_format, count_words
from rmbandit.data.pairs import Pair, make_pairs, reference_response
from rmbandit.data.suite import DEFAULT_SIZE, chat_prompt, load_suite, task_from_row, to_dataset
from rmbandit.data.task import CATEGORIES, CHECKS, SPLITS, Task, split_of

__all__ = ["CATEGORIES", "CHECKS", "DEFAULT_SIZE", "FORMAT_KINDS", "SPLITS", "Pair", "Task", "chat_prompt",
           "check_format", "count_words", "extract_answer", "is_correct", "load_suite", "make_pairs",
           "reference_answer", "reference_response", "split_of", "task_from_row", "to_dataset"]
