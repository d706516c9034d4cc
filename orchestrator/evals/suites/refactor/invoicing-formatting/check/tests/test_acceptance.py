import subprocess


def test_code_is_formatted():
    argv = ["ruff", "format", "--check", "--no-cache", "."]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, "files need formatting:\n" + proc.stdout[-2000:]
