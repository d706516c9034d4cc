import subprocess


def test_modern_annotations():
    argv = ["ruff", "check", "--select", "UP006,UP007,UP035,UP045", "--no-cache", "."]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, "old-style annotations remain:\n" + proc.stdout[-2000:]
