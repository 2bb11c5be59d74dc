"""README.md stays true: its test command is the one .ci/run executes."""

from __future__ import annotations

import re

from conftest import REPO


def _bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S)]


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    blocks = _bash_blocks(readme)
    ci = (REPO / ".ci" / "run").read_text()
    test_cmds = [b for b in blocks if "pytest" in b]
    assert test_cmds
    for cmd in test_cmds:
        assert cmd in ci, cmd


def test_readme_main_job_uses_the_bundled_default():
    readme = (REPO / "README.md").read_text()
    main_cmd = next(b for b in _bash_blocks(readme) if "edgesr convert" in b)
    assert "pip install -e ." in main_cmd
    # No checkpoint argument: the bundled model is the default.
    assert re.search(r"edgesr convert -o \S+", main_cmd)
