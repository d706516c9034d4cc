"""``converge watch``: repo maps kept fresh as files change, and the task inbox (``spec/inbox/``).

Drives runs through the loop.
"""
