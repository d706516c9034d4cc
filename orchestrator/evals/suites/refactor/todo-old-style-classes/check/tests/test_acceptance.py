import subprocess


def test_no_python2_classes():
    argv = ["ruff", "check", "--select", "UP004,UP008", "--no-cache", "."]
    proc = subprocess.run(argv, capture_output=True, text=True)
    assert proc.returncode == 0, "Python 2 style classes remain:\n" + proc.stdout[-2000:]
