import subprocess


def test_no_empty_fstrings():
    argv = ["ruff", "check", "--select", "F541", "--no-cache", "."]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, "f-strings without placeholders remain:\n" + proc.stdout[-2000:]
