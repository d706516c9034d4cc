"""The review web app behind `converge serve`: runs, changesets, generations, models and stats in a browser.

Server-rendered HTML (Jinja2 templates and static files shipped in this package, nothing fetched),
a session token on every request and a CSRF token on every POST. Decisions go through the same
library calls as the CLI (``actions``). May import loop and everything below it; nothing imports it.
"""
