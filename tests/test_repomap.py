"""The repo map: symbols, import graph, test selection, ranking under a budget, incremental cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from orchestrator.agents import repomap
from orchestrator.agents.pyparse import Parsed, estimate_tokens, module_name, parse_python
from orchestrator.agents.repomap import build_repo_map, build_repo_map_at, repo_map_for
from orchestrator.store.workspace import Workspace
from tests.conftest import MakeRepo, git

FILES = {
    "src/shop/__init__.py": '"""A shop."""\nfrom shop.cart import Cart\n',
    "src/shop/cart.py": (
        '"""Shopping carts and their totals.\n\nMore text."""\n'
        "from .pricing import discount\n\n"
        "TAX_RATE = 0.2\n\n"
        "class Cart:\n"
        "    def __init__(self, owner: str) -> None:\n        self.items = []\n\n"
        "    def total(self, *, with_tax: bool = True) -> float:\n        return discount(0.0)\n\n"
        "    def _private(self):\n        pass\n"
    ),
    "src/shop/pricing.py": (
        '"""Discount rules."""\n\nasync def discount(amount: float, rate=0.1) -> float:\n    return amount\n'
    ),
    "src/shop/shipping.py": '"""Shipping zones."""\nimport json\n\ndef zone(country):\n    return country\n',
    "tests/test_cart.py": "from shop.cart import Cart\n\ndef test_total():\n    assert Cart('a').total() == 0\n",
    "tests/test_pricing.py": "from shop import pricing\n\ndef test_discount():\n    pass\n",
    "tests/test_shipping.py": "import helpers\nfrom shop.shipping import zone\n",
    "tests/helpers.py": "def helper():\n    pass\n",
    "tests/test_helpers.py": "from helpers import helper\n",
    "docs/guide.md": "# Guide\n",
    "broken.py": "def oops(:\n",
}


@pytest.fixture
def repo(make_repo: MakeRepo) -> Path:
    return make_repo(FILES)


def test_parse_python_symbols_and_imports() -> None:
    parsed = parse_python(FILES["src/shop/cart.py"].encode())
    assert parsed.doc == "Shopping carts and their totals."
    assert [s.signature for s in parsed.symbols] == [
        "TAX_RATE",
        "class Cart",
        "def __init__(self, owner: str) -> None",
        "def total(self, *, with_tax: bool = True) -> float",
    ]
    assert [s.name for s in parsed.symbols if s.kind == "method"] == ["Cart.__init__", "Cart.total"]
    assert [(i.level, i.module, i.names) for i in parsed.imports] == [(1, "pricing", ["discount"])]
    assert parse_python(b"def oops(:\n").error is not None


def test_module_names() -> None:
    assert module_name("src/shop/__init__.py") == "shop"
    assert module_name("src/shop/cart.py") == "shop.cart"
    assert module_name("tests/test_cart.py") == "tests.test_cart"
    assert module_name("docs/guide.md") is None
    assert module_name("my-scripts/run.py") is None


def test_import_graph_and_tests_for(repo: Path) -> None:
    rmap = build_repo_map(repo)
    graph = rmap.import_graph()
    assert graph["src/shop/__init__.py"] == ["src/shop/cart.py"]
    assert graph["src/shop/cart.py"] == ["src/shop/pricing.py"]  # relative import resolved
    assert graph["tests/test_pricing.py"] == ["src/shop/pricing.py"]  # `from pkg import module`
    assert graph["tests/test_shipping.py"] == ["src/shop/shipping.py", "tests/helpers.py"]
    assert graph["src/shop/shipping.py"] == []  # stdlib imports are not in-repo
    assert "docs/guide.md" in rmap.files and rmap.files["docs/guide.md"].parsed is None

    # direct importers first, then one hop further; a changed test selects itself
    assert rmap.tests_for(["src/shop/pricing.py"]) == ["tests/test_pricing.py", "tests/test_cart.py"]
    assert rmap.tests_for(["src/shop/pricing.py"], depth=1) == ["tests/test_pricing.py"]
    assert rmap.tests_for(["tests/helpers.py"]) == ["tests/test_helpers.py", "tests/test_shipping.py"]
    assert rmap.tests_for(["tests/test_cart.py"]) == ["tests/test_cart.py"]
    assert rmap.tests_for(["docs/guide.md", "gone.py"]) == []


def test_conftest_change_selects_the_tests_beside_it(make_repo: MakeRepo) -> None:
    rmap = build_repo_map(make_repo({"a/test_x.py": "", "a/conftest.py": "", "b/test_y.py": ""}))
    assert rmap.tests_for(["a/conftest.py"]) == ["a/test_x.py"]


def test_ranking_follows_the_goal_and_the_import_graph(repo: Path) -> None:
    rmap = build_repo_map(repo)
    ranked = [p for p, _ in rmap.rank("ship to another zone country")]
    assert ranked[0] == "src/shop/shipping.py"
    ranked = [p for p, _ in rmap.rank("change the discount rules")]
    assert ranked[:2] == ["src/shop/pricing.py", "tests/test_pricing.py"]
    ranked = [p for p, _ in rmap.rank("apply the discount rate to carts")]
    assert set(ranked[:2]) == {"src/shop/pricing.py", "src/shop/cart.py"}
    assert rmap.rank("x") == rmap.rank("x")  # deterministic


def test_render_is_ranked_and_fits_the_budget(repo: Path) -> None:
    rmap = build_repo_map(repo)
    full = rmap.render("shipping zone", token_budget=10_000)
    assert full.startswith("Repository map (11 files, most relevant first):\nsrc/shop/shipping.py — Shipping zones.\n")
    assert "  def zone(country)\n  tests: tests/test_shipping.py\n" in full
    assert "src/shop/cart.py — Shopping carts and their totals.\n  TAX_RATE\n  class Cart\n    def __init__" in full
    assert "    def total(self, *, with_tax: bool = True) -> float\n  imports: src/shop/pricing.py\n" in full
    assert "_private" not in full
    assert "broken.py\n  (syntax error" in full
    for budget in (40, 80, 150):
        text = rmap.render("shipping zone", token_budget=budget)
        assert estimate_tokens(text) <= budget
        assert "src/shop/shipping.py" in text
    assert "more files" in rmap.render("shipping zone", token_budget=80)
    assert rmap.render("shipping zone", token_budget=5) == ""
    # a tokenizer can be passed in: one token per word
    words = rmap.render("shipping zone", token_budget=30, tokens=lambda t: len(t.split()))
    assert len(words.split()) <= 30


def test_cache_is_keyed_by_content_and_updated_incrementally(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache" / "repomap" / "shop"
    parsed: list[bytes] = []
    real = repomap.parse_python

    def counting(source: bytes) -> Parsed:
        parsed.append(source)
        return real(source)

    monkeypatch.setattr(repomap, "parse_python", counting)
    first = build_repo_map(repo, cache)
    assert len(parsed) == 10  # every Python file, once
    stored = json.loads((cache / repomap.CACHE_NAME).read_text())
    assert stored["version"] == 1 and repomap.CACHE_NAME == "repomap-v2.json"
    assert first.files["src/shop/cart.py"].digest == git(repo, "rev-parse", "HEAD:src/shop/cart.py")
    assert set(stored["entries"]) == {e.digest for e in first.files.values() if e.is_python}

    parsed.clear()
    build_repo_map(repo, cache)
    assert parsed == []  # nothing re-parsed from an unchanged tree

    # a working-tree change (not committed) is seen and only that file re-parsed
    (repo / "src/shop/shipping.py").write_text('"""Shipping zones."""\n\ndef zone(country, express=False):\n    pass\n')
    (repo / "src/shop/returns.py").write_text("from shop.shipping import zone\n")
    again = build_repo_map(repo, cache)
    assert len(parsed) == 2
    assert "def zone(country, express=False)" in again.render("zone", 10_000)
    assert again.tests_for(["src/shop/shipping.py"]) == ["tests/test_shipping.py"]
    assert again.import_graph()["src/shop/returns.py"] == ["src/shop/shipping.py"]

    # update() re-reads only the named paths and drops deleted ones
    parsed.clear()
    (repo / "src/shop/pricing.py").write_text("def discount(amount):\n    return amount\n")
    (repo / "broken.py").unlink()
    assert first.update(["src/shop/pricing.py", "broken.py", "src/shop/cart.py"]) == [
        "broken.py",
        "src/shop/pricing.py",
    ]
    assert len(parsed) == 1
    assert "broken.py" not in first.files
    assert "def discount(amount)" in first.render("discount", 10_000)


def test_damaged_cache_is_rebuilt(repo: Path, tmp_path: Path) -> None:
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / repomap.CACHE_NAME).write_text("{not json")
    rmap = build_repo_map(repo, cache)
    assert rmap.files["src/shop/cart.py"].parsed is not None
    assert json.loads((cache / repomap.CACHE_NAME).read_text())["version"] == 1


def test_sample_repo_map(make_repo: MakeRepo) -> None:
    rmap = build_repo_map(make_repo())
    # `from inventory import Stock` reaches inventory/stock.py through the package's re-export
    assert rmap.import_graph()["tests/test_stock.py"] == ["inventory/__init__.py", "inventory/stock.py"]
    assert set(rmap.tests_for(["inventory/stock.py"])) == {"tests/test_stock.py", "tests/test_report.py"}
    assert rmap.tests_for(["inventory/report.py"]) == ["tests/test_report.py", "tests/test_stock.py"]
    assert rmap.tests_for(["inventory/report.py"], depth=1) == ["tests/test_report.py"]
    text = rmap.render("normalise the sku in the stock ledger", token_budget=400)
    assert text.splitlines()[1].startswith("inventory/stock.py")


def test_workspace_map_is_cached_per_repo(sample_ws: Workspace) -> None:
    rmap = repo_map_for(sample_ws, "sample")
    assert (sample_ws.cache / "repomap" / "sample" / repomap.CACHE_NAME).is_file()
    assert "inventory/stock.py" in rmap.files


def test_a_commit_is_mapped_as_committed_whatever_the_checkout_holds(repo: Path, tmp_path: Path) -> None:

    head = git(repo, "rev-parse", "HEAD")
    (repo / "link.py").symlink_to("broken.py")
    git(repo, "add", "link.py")
    git(repo, "commit", "-q", "-m", "a link")
    linked = git(repo, "rev-parse", "HEAD")
    # the checkout moves on (uncommitted and untracked files): the commit's map does not
    (repo / "src/shop/shipping.py").write_text("def moved():\n    pass\n")
    (repo / "src/shop/returns.py").write_text("from shop.shipping import zone\n")
    at = build_repo_map_at(repo, head, tmp_path / "c")
    checkout = build_repo_map(repo)
    assert set(at.files) == set(FILES)
    assert set(checkout.files) == set(FILES) | {"src/shop/returns.py"}
    assert at.files["src/shop/shipping.py"].digest == git(repo, "rev-parse", f"{head}:src/shop/shipping.py")
    assert "def zone(country)" in at.render("zone", 10_000)
    assert at.tests_for(["src/shop/shipping.py"]) == ["tests/test_shipping.py"]
    assert at.import_graph() == build_repo_map_at(repo, head).import_graph()  # the cache changes nothing
    assert "link.py" not in build_repo_map_at(repo, linked).files  # links are not files, as in a checkout
