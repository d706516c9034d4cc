import inspect
from datetime import date

from todo import query


def test_parse_date_reads_both_forms():
    assert query.parse_date("2024-02-03") == date(2024, 2, 3)
    assert query.parse_date(" 03.02.2024 ") == date(2024, 2, 3)


def test_the_parsing_is_written_once():
    assert inspect.getsource(query).count(".split(") == 1


def test_both_functions_use_the_helper():
    for func in (query.due_before, query.due_after):
        assert "parse_date(" in inspect.getsource(func)
