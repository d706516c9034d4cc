"""The edit grammar against llama.cpp's own grammar engine (the embedded model's vocabulary, no weights run):
a search text can only be a run of whole, consecutive lines of its file that occurs once."""

from __future__ import annotations

import ctypes
import json
import math
from collections.abc import Iterator

import llama_cpp
import pytest
from llama_cpp import _internals as internals

from orchestrator.agents.grounding import edits_grammar
from orchestrator.models.grammar import Grammar, unique_run_lengths
from orchestrator.models.llama import quiet_stderr
from orchestrator.models.registry import embedded_model_path

FILE = """import os

def total(values):
    result = 0
    for value in values:
        result += value
    return result

def mean(values):
    result = 0
    for value in values:
        result += value
    return result / len(values)
"""


class Vocab:
    """Feeds text token by token through a GBNF grammar, as the sampler does."""

    def __init__(self) -> None:
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        with quiet_stderr():
            self.model = llama_cpp.llama_model_load_from_file(str(embedded_model_path()).encode(), params)
        assert self.model, "the embedded model's vocabulary did not load"
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.one = internals.LlamaTokenDataArray(n_vocab=1)

    def tokens(self, text: str) -> list[int]:
        data = text.encode()
        out = (llama_cpp.llama_token * (len(data) + 8))()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), out, len(out), False, True)
        return list(out[:n])

    def accepts(self, grammar: str, text: str) -> bool:
        """Whether ``grammar`` lets the whole of ``text`` through and may end after it."""
        with quiet_stderr():
            rules = llama_cpp.llama_sampler_init_grammar(self.vocab, grammar.encode(), b"root")
        assert rules, "llama.cpp refused the grammar"
        try:
            for token in [*self.tokens(text), llama_cpp.llama_vocab_eos(self.vocab)]:
                self.one.candidates_data.id[0] = token
                self.one.candidates_data.logit[0] = 0.0
                self.one.candidates.size = 1
                llama_cpp.llama_sampler_apply(rules, ctypes.byref(self.one.candidates))
                if math.isinf(float(self.one.candidates_data.logit[0])):
                    return False
                if token != llama_cpp.llama_vocab_eos(self.vocab):
                    llama_cpp.llama_sampler_accept(rules, token)
            return True
        finally:
            llama_cpp.llama_sampler_free(rules)

    def close(self) -> None:
        llama_cpp.llama_model_free(self.model)


@pytest.fixture(scope="module")
def vocab() -> Iterator[Vocab]:
    found = Vocab()
    yield found
    found.close()


def _search_grammar(text: str) -> str:
    g = Grammar()
    g.rule("root", g.line_run("f", text))
    return g.text()


def test_unique_runs_need_as_many_lines_as_make_them_unique() -> None:
    lines = FILE.splitlines(keepends=True)
    need = unique_run_lengths(lines)
    # import os: once; the blank line needs the def after it; `result = 0` and the loop need the return
    assert need[:7] == [1, 2, 1, 4, 3, 2, 1]


@pytest.mark.parametrize(
    ("search", "allowed"),
    [
        ("import os\n", True),
        ("def total(values):\n    result = 0\n", True),
        ("def mean(values):\n    result = 0\n    for value in values:\n", True),  # a longer run goes on line by line
        ("    return result / len(values)\n", True),
        ("    result = 0\n", False),  # in the file twice: not unique
        ("    result = 0\n    for value in values:\n        result += value\n", False),  # twice as well
        ("def total(values):\n    return result\n", False),  # not consecutive
        ("def total(values):", False),  # not a whole line
        ("import sys\n", False),  # not in the file
        ("", False),
    ],
)
def test_search_texts_are_unique_runs_of_whole_lines(vocab: Vocab, search: str, allowed: bool) -> None:
    assert vocab.accepts(_search_grammar(FILE), json.dumps(search) + " ") is allowed


def test_a_last_line_without_its_newline_is_a_search_text(vocab: Vocab) -> None:
    text = "a = 1\nb = 2"
    assert vocab.accepts(_search_grammar(text), json.dumps("b = 2") + " ")
    assert vocab.accepts(_search_grammar(text), json.dumps("a = 1\nb = 2") + " ")
    assert not vocab.accepts(_search_grammar(text), json.dumps("b = 2\n") + " ")


def test_a_large_files_grammar_shares_prefixes(vocab: Vocab) -> None:
    lines = [f"    value_{n} = compute({n})\n" for n in range(2000)]
    text = "".join(lines)
    grammar = _search_grammar(text)
    widest = max(line.count(" | ") + 1 for line in grammar.splitlines())
    assert widest <= 11, "a choice between next characters (digits, the newline), never 2,000 whole lines"
    assert vocab.accepts(grammar, json.dumps(lines[1234] + lines[1235]) + " ")
    assert not vocab.accepts(grammar, json.dumps("    value_2000 = compute(2000)\n") + " ")


def test_an_edit_answer_under_the_edit_grammar(vocab: Vocab) -> None:
    grammar = edits_grammar({"pkg/stats.py": FILE}, ["pkg/new.py"])
    good = {
        "summary": "drop os",
        "edits": [{"path": "pkg/stats.py", "search": "import os\n", "replace": ""}],
    }
    assert vocab.accepts(grammar, json.dumps(good))
    created = {"summary": "new", "edits": [{"path": "pkg/new.py", "search": "", "replace": "x = 1\n"}]}
    assert vocab.accepts(grammar, json.dumps(created))
    unknown = {"summary": "s", "edits": [{"path": "pkg/other.py", "search": "import os\n", "replace": ""}]}
    assert not vocab.accepts(grammar, json.dumps(unknown))
