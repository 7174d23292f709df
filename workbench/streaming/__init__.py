"""Streaming: chunked encoder inference with a KV cache of the left context, its ONNX step model,
and WER vs chunk size with first-partial latency per device.

    from workbench.streaming import StreamConfig, streaming_table
    rows = streaming_table(load_demo(), eval_set)            # 0.5 / 1 / 2 / 4 s and full context
    export_step(model, StreamConfig.from_seconds(1.0), "step.onnx")   # ONNX: chunk + cache in/out

bench: `workbench bench streaming --json`. onnxruntime is imported only inside the ONNX helpers.
"""
from workbench.streaming.onnx_step import export_step, run_onnx_stream
from workbench.streaming.report import (StepCost, StreamingRow, cache_bytes, chunked_transcripts,
                                        step_cost, streaming_table)
from workbench.streaming.step import (StreamConfig, StreamingError, StreamingStep, stream_logits,
                                      supports_streaming)

__all__ = ["StepCost", "StreamConfig", "StreamingError", "StreamingRow", "StreamingStep",
           "cache_bytes", "chunked_transcripts", "export_step", "run_onnx_stream", "step_cost",
           "stream_logits", "streaming_table", "supports_streaming"]
