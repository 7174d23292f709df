"""After export: checks and helpers for deployment (drift monitor, ARM64 check).

    drift            numpy-only drift monitor shipped with an export (DriftMonitor)
    arm64            `workbench verify-arm64`: the exported ONNX model on an emulated ARM64 CPU
    bundle           `workbench bundle`: primary + smaller fallback export, both verified
    selector         the runtime selector shipped in a bundle (numpy + onnxruntime only)
`workbench bench drift` (the monitor on clean vs noisy / telephone audio) is workbench.bench.drift.
"""
