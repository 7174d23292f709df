"""Bad arguments to the public Python verbs: one WorkbenchError subclass naming the argument,
raised before any work; and no verb (failing or not) changes the caller's model."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import workbench as wb
from workbench.errors import ArgumentError, DataError, PlanError, WorkbenchError
from workbench.evaluate import EvalSet
from workbench.compress.resolution import plan_for_model, resolve


@pytest.fixture(scope="module")
def model(tiny_conformer):
    return tiny_conformer


@pytest.fixture(scope="module")
def tiny_set() -> EvalSet:
    gen = torch.Generator().manual_seed(0)
    feats = tuple(torch.randn(80, n, generator=gen) for n in (40, 60, 80))
    return EvalSet("tiny", Path("tiny.jsonl"), ("a", "b", "c"), ("one two", "three", "four five"),
                   feats)


@pytest.fixture(scope="module")
def session(model, tiny_set):
    return wb.Session(model, tiny_set, quick_utterances=2, warm_svd=False)


INT8 = wb.presets.int8_everywhere()

# (case id, call(model) -> anything, error type, substrings of the message)
CASES = [
    # compress
    ("compress-model-None", lambda m: wb.compress(None, INT8), ArgumentError,
     ["compress(model=", "NoneType"]),
    ("compress-model-path", lambda m: wb.compress("demo.safetensors", INT8), ArgumentError,
     ["compress(model=", "load_checkpoint"]),
    ("compress-model-dict", lambda m: wb.compress(m.state_dict(), INT8), ArgumentError,
     ["compress(model=", "OrderedDict"]),
    ("compress-plan-None", lambda m: wb.compress(m, None), PlanError, ["compress(plan=", "None"]),
    ("compress-plan-str", lambda m: wb.compress(m, "int8"), PlanError,
     ["compress(plan=", "'int8'", "int8_everywhere"]),
    ("compress-plan-int", lambda m: wb.compress(m, 8), PlanError, ["compress(plan=", "int 8"]),
    ("compress-plan-list", lambda m: wb.compress(m, [INT8]), PlanError, ["compress(plan=", "list"]),
    ("compress-plan-LayerConfig", lambda m: wb.compress(m, wb.LayerConfig(rank=2)), PlanError,
     ["compress(plan=", "LayerConfig"]),
    ("compress-dict-plan-typo", lambda m: wb.compress(m, {"default": {"rnak": 2}}), PlanError,
     ["default.rnak"]),
    ("compress-dict-plan-bad-block", lambda m: wb.compress(m, {"groups": [
        {"role": "ffn", "blocks": [99], "config": "skip"}]}), PlanError, ["groups[0].blocks", "99"]),
    ("compress-force-str", lambda m: wb.compress(m, INT8, force="yes"), ArgumentError,
     ["force", "'yes'"]),
    # size
    ("size-int8-string", lambda m: wb.size(m, "int8"), PlanError, ["size(plan=", "'int8'"]),
    ("size-model-None", lambda m: wb.size(None, INT8), ArgumentError, ["size(model="]),
    ("size-plan-tuple", lambda m: wb.size(m, (INT8,)), PlanError, ["size(plan=", "tuple"]),
    ("size-plan-preset-fn", lambda m: wb.size(m, wb.presets.int8_everywhere), PlanError,
     ["size(plan=", "function"]),
    ("size-force-int", lambda m: wb.size(m, INT8, force=1), ArgumentError, ["force", "int 1"]),
    # profile
    ("profile-model-None", lambda m: wb.profile(None), ArgumentError, ["profile(model="]),
    ("profile-seconds-inf", lambda m: wb.profile(m, float("inf")), ArgumentError,
     ["audio_seconds=inf"]),
    ("profile-seconds-nan", lambda m: wb.profile(m, float("nan")), ArgumentError,
     ["audio_seconds=nan"]),
    ("profile-seconds-1e9", lambda m: wb.profile(m, 1e9), ArgumentError,
     ["audio_seconds=1000000000.0", "600 s"]),
    ("profile-seconds-negative", lambda m: wb.profile(m, -2.0), ArgumentError,
     ["audio_seconds=-2.0"]),
    ("profile-seconds-zero", lambda m: wb.profile(m, 0), ArgumentError, ["audio_seconds=0"]),
    ("profile-seconds-str", lambda m: wb.profile(m, "4"), ArgumentError,
     ["audio_seconds", "str '4'"]),
    ("profile-seconds-bool", lambda m: wb.profile(m, True), ArgumentError,
     ["audio_seconds", "bool"]),
    ("profile-repeats-0", lambda m: wb.profile(m, 1.0, repeats=0), ArgumentError, ["repeats=0"]),
    ("profile-repeats-float", lambda m: wb.profile(m, 1.0, repeats=2.5), ArgumentError,
     ["repeats", "float"]),
    # predict_latency (the latency module's own checks, plus the argument check at its entry)
    ("latency-seconds-inf", lambda m: wb.predict_latency(m, "rpi4_a72", float("inf")),
     WorkbenchError, ["audio_seconds", "inf"]),
    ("latency-seconds-1e9", lambda m: wb.predict_latency(m, "rpi4_a72", 1e9), WorkbenchError,
     ["audio_seconds", "1000000000"]),
    ("latency-seconds-negative", lambda m: wb.predict_latency(m, "rpi4_a72", -1.0),
     WorkbenchError, ["audio_seconds", "-1"]),
    ("latency-seconds-zero", lambda m: wb.predict_latency(m, "rpi4_a72", 0.0), WorkbenchError,
     ["audio_seconds", "0"]),
    ("latency-seconds-nan", lambda m: wb.predict_latency(m, "rpi4_a72", float("nan")),
     WorkbenchError, ["audio_seconds", "nan"]),
    ("latency-seconds-str", lambda m: wb.predict_latency(m, "rpi4_a72", "4"), WorkbenchError,
     ["audio_seconds", "'4'"]),
    ("latency-device-typo", lambda m: wb.predict_latency(m, "rpi55", 4.0), WorkbenchError,
     ["'rpi55'", "Did you mean"]),
    ("latency-device-int", lambda m: wb.predict_latency(m, 5, 4.0), WorkbenchError,
     ["device", "5"]),
    ("latency-bits-int8-string", lambda m: wb.predict_latency(m, "rpi4_a72", 4.0, "int8"),
     PlanError, ["weight_bits", "'int8'"]),
    ("latency-bits-9", lambda m: wb.predict_latency(m, "rpi4_a72", 4.0, {"blocks.*": 9}),
     ArgumentError, ["weight_bits", "'blocks.*'", "9"]),
    ("latency-bits-bool", lambda m: wb.predict_latency(m, "rpi4_a72", 4.0, {"blocks.*": True}),
     ArgumentError, ["weight_bits", "True"]),
    ("latency-plan-dict-typo", lambda m: wb.predict_latency(m, "rpi4_a72", 4.0,
                                                            {"default": {"quant": 8}}),
     PlanError, ["default.quant"]),
    # recover
    ("recover-student-None", lambda m: wb.recover(None, m, [1]), ArgumentError,
     ["recover(student="]),
    ("recover-teacher-str", lambda m: wb.recover(m, "teacher.safetensors", [1]), ArgumentError,
     ["recover(teacher=", "load_checkpoint"]),
    ("recover-config-dict", lambda m: wb.recover(m, m, [1], config={"steps": 3}), WorkbenchError,
     ["recover(config=", "dict"]),
    ("recover-no-items", lambda m: wb.recover(m, m, []), WorkbenchError, ["no training items"]),
    # features / evaluate
    ("log_mel-list", lambda m: wb.log_mel([0.0] * 400), ArgumentError, ["log_mel(wave=", "list"]),
    ("log_mel-2d", lambda m: wb.log_mel(torch.zeros(2, 400)), ArgumentError,
     ["log_mel(wave=", "(2, 400)"]),
    ("log_mel-nan", lambda m: wb.log_mel(torch.full((400,), math.nan)), DataError,
     ["log_mel(wave=", "NaN"]),
    ("evaluate-model-None", lambda m: wb.evaluate(None, None), ArgumentError,
     ["evaluate(model="]),
    ("transcribe-model-str", lambda m: wb.transcribe("demo", [torch.zeros(80, 4)]),
     ArgumentError, ["transcribe(model="]),
    ("load_eval_set-limit-0", lambda m: wb.load_eval_set("x.jsonl", limit=0), ArgumentError,
     ["limit=0"]),
    ("load_eval_set-manifest-int", lambda m: wb.load_eval_set(3), DataError, ["manifest", "int"]),
    ("load_checkpoint-None", lambda m: wb.load_checkpoint(None), WorkbenchError, ["NoneType"]),
    ("conformer_ctc-preset-typo", lambda m: wb.conformer_ctc("smal"), ArgumentError,
     ["preset='smal'", "Did you mean 'small'"]),
    ("build_model-family-typo", lambda m: wb.build_model("whisper"), WorkbenchError,
     ["'whisper'", "whisper_ctc"]),
    ("plan-with_group-role-typo", lambda m: INT8.with_group("atention", "skip"), PlanError,
     ["role", "atention"]),
    ("plan-with_layer-int-key", lambda m: INT8.with_layer(3, "skip"), PlanError, ["layers"]),
    ("plan-resolve-None", lambda m: resolve(INT8, None), ArgumentError,
     ["resolve(model="]),
    ("plan-for_model-str", lambda m: plan_for_model(INT8, "demo"), ArgumentError,
     ["plan_for_model(model="]),
    ("preset-amount-2", lambda m: wb.presets.prune_ffn_neurons(2.0), PlanError,
     ["amount", "2.0"]),
    ("preset-energy-0", lambda m: wb.presets.low_rank_ffn(0), PlanError, ["energy"]),
    ("preset-importance-typo", lambda m: wb.presets.prune_attention_heads(0.25, "taylr"),
     PlanError, ["importance", "taylr"]),
    ("compress-calib-str", lambda m: wb.compress(m, INT8, calib="calib.jsonl"), PlanError,
     ["calib"]),
    ("compress-taylor-no-calib", lambda m: wb.compress(m, wb.presets.prune_ffn_neurons(
        0.5, "taylor")), PlanError, ["taylor", "calib"]),
    ("RecoverConfig-steps-0", lambda m: wb.RecoverConfig(steps=0), WorkbenchError,
     ["RecoverConfig.steps", "0"]),
    ("RecoverConfig-steps-negative", lambda m: wb.RecoverConfig(steps=-5), WorkbenchError,
     ["RecoverConfig.steps", "-5"]),
    ("RecoverConfig-steps-float", lambda m: wb.RecoverConfig(steps=2.5), WorkbenchError,
     ["RecoverConfig.steps", "2.5"]),
    ("RecoverConfig-lr-nan", lambda m: wb.RecoverConfig(lr=float("nan")), WorkbenchError,
     ["RecoverConfig.lr", "nan"]),
    ("RecoverConfig-lr-0", lambda m: wb.RecoverConfig(lr=0.0), WorkbenchError, ["lr"]),
    ("RecoverConfig-minutes-negative", lambda m: wb.RecoverConfig(max_minutes=-1.0),
     WorkbenchError, ["RecoverConfig.max_minutes", "-1"]),
    ("evaluate-lexicon-str", lambda m: wb.evaluate(m, _one_utt(), lexicon="words.txt"),
     ArgumentError, ["evaluate(lexicon=", "str"]),
    ("EvalSet-subset-out-of-range", lambda m: _one_utt().subset([5]), ArgumentError,
     ["EvalSet.subset", "[5]"]),
    ("normalize_text-None", lambda m: __import__("workbench.data").data.normalize_text(None),
     DataError, ["normalize_text", "NoneType"]),
    ("load_demo-int", lambda m: wb.load_demo(3), WorkbenchError, ["load_demo(path=", "int"]),
    ("EvalSet-lengths-differ", lambda m: EvalSet("x", Path("m"), ("a", "b"), ("a b",),
                                                 (torch.zeros(80, 20),)), ArgumentError,
     ["EvalSet 'x'", "'ids': 2", "'texts': 1"]),
    ("profile-measure-str", lambda m: wb.profile(m, 1.0, measure="no"), ArgumentError,
     ["measure", "'no'"]),
    ("transcribe-max_frames-0", lambda m: wb.transcribe(m, [torch.zeros(80, 4)], max_frames=0),
     ArgumentError, ["max_frames=0"]),
    ("load_checkpoint-family-typo", lambda m: wb.load_checkpoint("x.safetensors",
                                                                 family="conformer"),
     WorkbenchError, ["family='conformer'", "conformer_ctc"]),
    ("save_flac-nan", lambda m: __import__("workbench.data").data.save_flac(
        "/nonexistent-dir/x.flac", torch.full((100,), math.nan)), DataError,
     ["x.flac", "NaN"]),
]


def _one_utt() -> EvalSet:
    return EvalSet("one", Path("one.jsonl"), ("a",), ("a b",), (torch.zeros(80, 20),))


@pytest.mark.parametrize("call,error,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_api_argument(model, call, error, expected: list[str]) -> None:
    with pytest.raises(error) as err:
        call(model)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


def test_profile_longer_than_whisper_context(whisper_small) -> None:
    """whisper_small has n_ctx=100 positions = 2 s; 3 s is refused before any run."""
    with pytest.raises(ArgumentError) as err:
        wb.profile(whisper_small, 3.0)
    assert "audio_seconds=3.0" in str(err.value) and "2 s" in str(err.value)


def test_dict_plan_is_accepted_like_the_plan(model) -> None:
    """A dict of plan fields is validated into a CompressionPlan: same result as the plan."""
    as_dict = {"default": {"quant": {"weight_bits": 8}}}
    assert wb.size(model, as_dict).total_bytes == wb.size(model, INT8).total_bytes


# ---- Session ----------------------------------------------------------------------------------
SESSION_CASES = [
    ("evaluate-kind-fast", lambda s: s.evaluate(INT8, "fast"), ArgumentError,
     ["kind='fast'", "'quick', 'full'"]),
    ("evaluate-kind-typo", lambda s: s.evaluate(INT8, "quik"), ArgumentError,
     ["kind='quik'", "Did you mean 'quick'"]),
    ("evaluate-kind-None", lambda s: s.evaluate(INT8, None), ArgumentError, ["kind=None"]),
    ("evaluate-plan-str", lambda s: s.evaluate("int8"), PlanError,
     ["Session.evaluate(plan=", "'int8'"]),
    ("evaluate-plan-None", lambda s: s.evaluate(None), PlanError, ["Session.evaluate(plan="]),
    ("evaluate-plan-bad-block", lambda s: s.evaluate({"groups": [
        {"role": "attention", "blocks": [7], "config": "skip"}]}), PlanError,
     ["groups[0].blocks", "[7]"]),
    ("submit-kinds-string", lambda s: s.submit(INT8, print, kinds="quick"), ArgumentError,
     ["kinds='quick'"]),
    ("submit-kinds-typo", lambda s: s.submit(INT8, print, kinds=("quick", "fll")), ArgumentError,
     ["kinds='fll'", "Did you mean 'full'"]),
    ("submit-on_result-None", lambda s: s.submit(INT8, None), ArgumentError, ["on_result"]),
    ("submit-plan-int", lambda s: s.submit(4, print), PlanError, ["Session.submit(plan="]),
]


@pytest.mark.parametrize("call,error,expected", [c[1:] for c in SESSION_CASES],
                         ids=[c[0] for c in SESSION_CASES])
def test_bad_session_argument(session, call, error, expected: list[str]) -> None:
    with pytest.raises(error) as err:
        call(session)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


SESSION_INIT_CASES = [
    ("model-None", lambda m, e: wb.Session(None, e), ArgumentError, ["Session(model="]),
    ("model-Linear", lambda m, e: wb.Session(torch.nn.Linear(2, 2), e), ArgumentError,
     ["Session(model=", "blocks"]),
    ("eval_set-path", lambda m, e: wb.Session(m, "data/real/test.jsonl"), ArgumentError,
     ["Session(eval_set=", "load_eval_set"]),
    ("eval_set-empty", lambda m, e: wb.Session(m, e.subset([])), DataError,
     ["Session(eval_set=", "no utterances"]),
    ("quick-0", lambda m, e: wb.Session(m, e, quick_utterances=0), ArgumentError,
     ["quick_utterances=0"]),
    ("max_frames-1", lambda m, e: wb.Session(m, e, max_frames=1), ArgumentError,
     ["max_frames=1"]),
]


@pytest.mark.parametrize("call,error,expected", [c[1:] for c in SESSION_INIT_CASES],
                         ids=[c[0] for c in SESSION_INIT_CASES])
def test_bad_session_construction(model, tiny_set, call, error, expected: list[str]) -> None:
    with pytest.raises(error) as err:
        call(model, tiny_set)
    for part in expected:
        assert part in str(err.value), (part, str(err.value))


# ---- nothing mutates the caller's model ---------------------------------------------------------
def _snapshot(model: torch.nn.Module) -> tuple:
    return ({k: v.detach().clone() for k, v in model.state_dict().items()}, model.training,
            {n: p.requires_grad for n, p in model.named_parameters()},
            [type(m).__name__ for m in model.modules()])


PLANS = {
    "int8": INT8,
    "prune-heads": wb.presets.prune_attention_heads(0.5),
    "prune-neurons+int4": wb.presets.prune_ffn_neurons(0.5).with_default(
        wb.LayerConfig(quant=wb.QuantConfig(weight_bits=4, granularity="per_block"))),
    "low-rank": wb.presets.low_rank_ffn(0.8),
    "bad-block": {"groups": [{"role": "ffn", "blocks": [99], "config": "skip"}]},
}


@pytest.mark.parametrize("plan_name", list(PLANS))
def test_no_verb_mutates_the_callers_model(tiny_set, plan_name: str) -> None:
    torch.manual_seed(1)
    model = wb.conformer_ctc("tiny").train()  # training mode: verbs must not flip it
    before = _snapshot(model)
    plan = PLANS[plan_name]
    calls = [lambda: wb.compress(model, plan), lambda: wb.size(model, plan),
             lambda: wb.predict_latency(model, "rpi4_a72", 2.0, plan),
             lambda: wb.profile(model, 0.5, measure=False),
             lambda: wb.evaluate(model, tiny_set),
             lambda: wb.transcribe(model, tiny_set.features),
             lambda: wb.Session(model, tiny_set, quick_utterances=2, warm_svd=False
                                ).evaluate(plan, "quick")]
    for call in calls:
        try:
            call()
        except WorkbenchError:
            pass  # a refused plan is fine; what matters is the model afterwards
        after = _snapshot(model)
        assert after[1:] == before[1:]
        assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
