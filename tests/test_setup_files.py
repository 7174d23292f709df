"""Setup files agree: environment.yml mirrors the pins that make installs."""
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pins(*names):
    lines = []
    for n in names:
        lines += [line.strip() for line in (REPO / n).read_text().splitlines()
                  if line.strip() and not line.startswith("#")]
    return set(lines)


def test_environment_yml_mirrors_requirements():
    env = {line.strip()[2:].strip() for line in (REPO / "environment.yml").read_text().splitlines()
           if line.strip().startswith("- ") and "==" in line}
    assert env == _pins("requirements.txt", "requirements-test.txt")


def test_torch_and_torchaudio_pinned_together():
    pins = _pins("requirements.txt")
    assert "torch==2.14.1" in pins and "torchaudio==2.11.0" in pins


def test_readme_opens_with_the_two_commands():
    text = (REPO / "README.md").read_text()
    block = text.split("```bash", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == ["make lab", "make test"]
