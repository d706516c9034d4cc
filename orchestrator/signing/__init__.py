"""Signatures: SSHSIG in-process (``sshsig``), signers and commit signatures (``keys``), DSSE
envelopes and in-toto attestations (``attest``).

Imports store (the key files, allowed signers), config and errors.
"""
