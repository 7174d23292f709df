"""Data: manifests, audio I/O, text normalization, the synthetic corpus, real prompts, augmentation.

Heavy or optional parts (synthesis subprocesses, pyroomacoustics) load only when used.
"""
from workbench.data.audio import SAMPLE_RATE, load_audio, normalize_loudness, resample, save_flac
from workbench.data.augment import (
                                    AugmentConfig,
                                    add_noise,
                                    augment_wave,
                                    babble_noise,
                                    colored_noise,
                                    reverberate,
                                    room_bank,
                                    room_impulse_response,
                                    spec_augment,
                                    speed_perturb,
                                    telephone,
)
from workbench.data.build import build_all, build_corpus, build_real, write_eval_sets
from workbench.data.corpus import SentenceSplit, build_sentences, split_sentences, vocabulary
from workbench.data.manifest import Utterance, read_librispeech, read_manifest, write_manifest
from workbench.data.synth import SynthSettings, Voice, synthesize, voice_catalogue
from workbench.data.text import normalize_text

__all__ = [
    "SAMPLE_RATE", "AugmentConfig", "SentenceSplit", "SynthSettings", "Utterance", "Voice",
    "add_noise", "augment_wave", "babble_noise", "build_all", "build_corpus", "build_real",
    "build_sentences", "colored_noise", "load_audio", "normalize_loudness", "normalize_text",
    "read_librispeech", "read_manifest", "resample", "reverberate", "room_bank",
    "room_impulse_response",
    "save_flac", "spec_augment", "speed_perturb", "split_sentences", "synthesize", "telephone",
    "vocabulary", "voice_catalogue", "write_eval_sets", "write_manifest",
]
