"""The README's "bring your own model" example runs as written."""

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def own_model_blocks() -> list[str]:
    section = README.read_text().split("### Bring your own model", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_the_bring_your_own_model_example_runs(tmp_path):
    module, script = own_model_blocks()
    assert module.startswith("# mynet.py") and "model=MyNet" in script
    assert len(module.splitlines()) + len(script.splitlines()) <= 30
    (tmp_path / "mynet.py").write_text(module)
    (tmp_path / "example.py").write_text(script)
    out = subprocess.run([sys.executable, "example.py"], check=False, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert out.returncode == 0, out.stderr[-2000:]
    accuracy, verdict = out.stdout.split()
    assert float(accuracy) > 0.85 and verdict == "verified"
