"""Real speech (Asterisk prompts): transcript cleaning, and a deterministic held-out split."""
import pytest

from workbench.data import asterisk
from workbench.data.asterisk import clean_transcript, split_of


@pytest.mark.parametrize("raw, expected", [
    ("Please enter your password followed by the pound key.",
     "please enter your password followed by the pound key"),
    ("press * to toggle pause, press # to enter a new dictation filename",
     "press star to toggle pause press pound to enter a new dictation filename"),
    ("A.M.", "a m"),
    ("dash [-]", "dash"),
    ("exclaimation-point [!]", "exclamation point"),
    ("Call-Forward on No Answer.", "call forward on no answer"),
    ("fourtieth", "fortieth"),
])
def test_clean_transcript(raw: str, expected: str):
    assert clean_transcript(raw) == (expected, "")


@pytest.mark.parametrize("raw", [
    "[sound of monkeys screaming]", "(10 seconds of silence)", "<beep ascending>",
    "Please leave your message after the tone. (simple tone sound plays)",
    'IAX (note: does not say "2")', "Asterisk open source PBX", "dial 1234 now",
])
def test_non_speech_and_ambiguous_are_rejected(raw: str):
    text, reason = clean_transcript(raw)
    assert text is None and reason


def test_split_is_stable_and_only_few_second_prompts_are_test():
    assert split_of("agent-pass", 3.3) == split_of("agent-pass", 3.3)
    assert split_of("anything", 0.5) == "finetune" and split_of("anything", 20.0) == "finetune"


@pytest.mark.skipif(not asterisk.SOUNDS_DIR.is_dir() or not asterisk.TRANSCRIPTS.is_file(),
                    reason="Asterisk prompts not installed "
                           "(sudo apt-get install -y asterisk-core-sounds-en-wav asterisk-core-sounds-en)")
def test_installed_prompts_split_sizes():
    import soundfile as sf

    prompts, rejected = asterisk.scan_prompts()
    assert len(prompts) > 400 and any(r.name == "tt-monkeys" for r in rejected)
    test = [p for p in prompts if split_of(p.name, sf.info(str(p.path)).duration) == "test"]
    assert 100 <= len(test) <= 130
