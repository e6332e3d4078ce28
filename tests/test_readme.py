"""Every Python snippet in README.md runs as written and prints what README shows (doctest), so they cannot
drift from the code."""
from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_snippets_and_each_is_a_doctest():
    assert BLOCKS
    for block in BLOCKS:
        assert block.lstrip().startswith(">>>"), "write README snippets as doctests, output included:\n" + block


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_snippet_runs_and_prints_what_readme_shows(index):
    test = doctest.DocTestParser().get_doctest(BLOCKS[index], {}, f"README.md python block {index + 1}",
                                               str(README), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0 and result.attempted > 0
