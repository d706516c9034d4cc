import subprocess


def test_imports_are_sorted():
    argv = ["ruff", "check", "--select", "I", "--no-cache", "."]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, "imports are not sorted:\n" + proc.stdout[-2000:]
