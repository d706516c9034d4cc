import subprocess


def test_plain_attribute_access():
    argv = ["ruff", "check", "--select", "B009,B010", "--no-cache", "."]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, "getattr/setattr with constants remain:\n" + proc.stdout[-2000:]
