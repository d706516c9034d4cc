from pathlib import Path

from textstats import counts


def test_the_new_name_exists():
    assert counts.word_frequencies("a cat") == {"cat": 1}


def test_the_old_name_is_gone_everywhere():
    left = [
        str(path)
        for path in Path(".").rglob("*.py")
        if "calc_freq" in path.read_text() and path.name != "test_acceptance.py"
    ]
    assert not hasattr(counts, "calc_freq")
    assert left == []
