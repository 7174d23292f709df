"""Export for production: plan -> ONNX (fp32 structure, ONNX Runtime quantization per layer),
verified against the simulation, with a report and a model card.

    apply_plan(model, plan, out_dir, ApplyOptions()) -> report dict     the whole export
    apply_cli(args)                                                     `workbench apply`
    build_export(model, plan, calib=None, strict=False) -> Export       ONNX bytes in memory
    export_fp32(model) -> onnx.ModelProto                               fp32, dynamic time axis

Files, one step each: positions (sinusoid table as formula), decisions (plan bits -> ORT
method), ort_quantize (the passes), weight_grids (exact plan grids in ORT layouts),
calibration_set, verify (WER, parity), report, model_card, atomic (writes), pipeline, apply,
reference_plans (the plans `workbench bench export` measures; the benchmark itself is
workbench.bench.export). The exporter, the node map, op counts, sessions and the timing
harness are the ONNX toolbox shared with the latency calibration: workbench.onnx_tools.

onnx / onnxruntime are imported inside functions; importing this package only loads torch.
"""
from workbench.export.apply import ApplyOptions, apply_cli, apply_plan, read_plan
from workbench.export.errors import ExportError, OutputExistsError, UnsupportedBitsError
from workbench.onnx_tools.exporter import export_fp32
from workbench.export.pipeline import Export, build_export


__all__ = ["ApplyOptions", "Export", "ExportError", "OutputExistsError", "UnsupportedBitsError",
           "apply_cli", "apply_plan", "build_export", "export_fp32", "read_plan"]
