from weather import readings


def test_the_module_is_documented():
    doc = readings.__doc__ or ""
    assert len(doc.split()) >= 3, doc
