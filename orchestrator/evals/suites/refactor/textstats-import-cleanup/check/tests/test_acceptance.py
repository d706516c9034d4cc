import subprocess


def _ruff(select: str) -> subprocess.CompletedProcess[str]:
    argv = ["ruff", "check", "--select", select, "--no-cache", "textstats"]
    return subprocess.run(argv, capture_output=True, text=True)


def test_no_unused_imports():
    proc = _ruff("F401")
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_imports_are_sorted():
    proc = _ruff("I")
    assert proc.returncode == 0, proc.stdout[-2000:]
