from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    command = readme[readme.index("# 2. install, and run the tests (CPU only, no network)") + 1]
    assert command.endswith("python -m pytest")
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()
