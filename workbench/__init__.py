"""workbench: compress transformer acoustic models for edge devices, and see what each choice costs.

The verbs, in pipeline order (DESIGN.md section 1):

    model = load_demo()                                  # or conformer_ctc("small"), load_checkpoint(p)
    eval_set = load_eval_set(REAL_TEST)                  # features computed once
    evaluate(model, eval_set)                            # WER / CER (jiwer, greedy CTC)
    profile(model, audio_seconds=8)                      # cost per layer and role
    plan = CompressionPlan().with_group("ffn", LayerConfig(quant=QuantConfig(weight_bits=4)))
    small = compress(model, plan)                        # a new model; `model` is not touched
    size(model, plan)                                    # exact bytes per layer
    predict_latency(model, "rpi5", 8.0, plan)            # simulated, with its error band
    Session(model, eval_set).evaluate(plan, "quick")     # the interactive engine
    adapt(torchaudio_conformer)                          # your encoder behind the same contract
    recover(compress(model, prune_plan), model, items)   # distillation after pruning

`import workbench` loads the computational core only (torch; no ipywidgets / plotly / onnxruntime).
The UI lives in `workbench.ui`, the ONNX export in `workbench.export`.
"""
from workbench import _threads  # noqa: F401  (warns once if OMP_WAIT_POLICY is unset)
from workbench._version import __version__
from workbench.byo import adapt
from workbench import presets
from workbench.compress import compress
from workbench.compress.distill import RecoverConfig, recover
from workbench.compress.resolution import plan_for_model, resolve
from workbench.errors import (ArgumentError, CheckpointError, DataError, DeviceError, PlanError,
                              WorkbenchError)
from workbench.evaluate import EvalSet, evaluate, load_eval_set, transcribe
from workbench.features import log_mel
from workbench.latency import known_devices, load_device, predict_latency
from workbench.models import (VOCAB, build_model, conformer_ctc, load_checkpoint, load_demo,
                              save_checkpoint, whisper_ctc_pretrained)
from workbench.paths import CALIB, REAL_TEST, SYNTH_TEST
from workbench.plan import CompressionPlan, LayerConfig, PruneConfig, QuantConfig
from workbench.layer_profile import profile
from workbench.engine.session import Session
from workbench.size import size

__all__ = [
    "CALIB", "REAL_TEST", "SYNTH_TEST", "VOCAB", "ArgumentError", "CheckpointError", "CompressionPlan",
    "DataError", "DeviceError", "EvalSet", "LayerConfig", "PlanError", "PruneConfig", "QuantConfig",
    "RecoverConfig", "Session", "WorkbenchError", "adapt", "__version__", "build_model", "compress",
    "conformer_ctc", "evaluate", "known_devices", "load_checkpoint", "load_demo", "load_device",
    "load_eval_set", "log_mel", "plan_for_model", "predict_latency", "presets", "profile", "recover",
    "resolve", "save_checkpoint", "size", "transcribe", "whisper_ctc_pretrained",
]
