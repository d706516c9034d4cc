"""Sandboxes: the Protocols and spec (``base``), the Docker backend, test environments, the image,
the pool of sandboxes started ahead, the in-container runner, and a scripted backend for tests.

Imports store, config and errors only.
"""
