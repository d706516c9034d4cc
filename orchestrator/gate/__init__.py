"""The gate every change passes, as plain functions: apply, verify, judge, sign, review, promote.

One ``verify`` serves the loop and ``converge submit``; ``submit`` and ``export`` compose the
stages for a person's patch. Imports agents (the edit format), sandbox, policy, signing,
selfhost's checks and store; never the loop.
"""
