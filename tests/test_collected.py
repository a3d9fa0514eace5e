"""tests/collected.txt, the committed list of test ids, is written from `pytest --collect-only`:
a test file that does not collect (its optional package missing) cannot drop from it unnoticed."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_collecting_without_hypothesis_lists_nothing_and_names_the_file(tmp_path):
    """As if hypothesis were not installed (its import fails; its pytest plugin left out), the
    README's collect command lists no test id and says which file did not collect, where it
    listed every other test and exited 0 (the 4 property tests dropped without a word)."""
    (tmp_path / "hypothesis.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'hypothesis'\", name='hypothesis')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:hypothesispytest",
                          "--collect-only", "-q", "-p", "no:cacheprovider",
                          "tests/test_properties.py", "tests/test_summary.py"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode != 0
    assert "::" not in run.stdout, run.stdout
    assert "tests/test_properties.py: not collected" in run.stderr, run.stderr
