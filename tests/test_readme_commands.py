import pathlib
import re


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _block(text: str, begin: str, end: str) -> str:
    return text.split(begin, 1)[1].split(end, 1)[0].strip()


def test_ci_runs_the_readme_commands_verbatim():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [c.strip() for c in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)]
    assert len(commands) == 2, "the README's set-up section must hold exactly two commands"
    ci = (ROOT / ".ci" / "run").read_text()
    assert _block(ci, "# BEGIN README INSTALL", "# END README INSTALL") == commands[0]
    assert _block(ci, "# BEGIN README TEST", "# END README TEST") == commands[1]
