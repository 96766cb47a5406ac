"""The examples of docs/coming_from_transformerlens.md run as written (head attribution and the logit
lens on the embedded MNIST ViT), in one namespace, in the page's order."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "coming_from_transformerlens.md"


def test_the_page_examples_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 2
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    out = capsys.readouterr().out
    assert "components that push the true digit most" in out
    assert "final_post" in out
