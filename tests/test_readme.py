"""The README's tour runs as written."""
import pathlib
import re

README = pathlib.Path(__file__).parent.parent / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    assert blocks, "the README has no runnable tour"
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)  # pylint: disable=exec-used
    assert namespace["samples"].shape == (4, 16, 16, 3)
    assert 0 < namespace["num_scales"] and namespace["sigma_begin"] > 0
