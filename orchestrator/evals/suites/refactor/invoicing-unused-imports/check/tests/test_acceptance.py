import subprocess


def test_no_unused_imports():
    argv = ["ruff", "check", "--select", "F401", "--no-cache", "."]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, "unused imports remain:\n" + proc.stdout[-2000:]
