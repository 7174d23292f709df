"""The one ONNX toolbox: used by the export (workbench.export) and the host latency calibration
(workbench.latency.fit_host, `workbench bench latency`), so the host latency model is fitted on
the graph the export ships and timed with the clock the export report states.

    exporter.export_fp32(model) -> onnx.ModelProto     torch.onnx.export(dynamo=True), dynamic T,
                                                        each node tagged with its module path
    graph_map.weight_nodes / nodes_of_layer            module path -> MatMul / Conv weight nodes
    graph_map.op_counts(proto)                         nodes per op type in the file
    tied_embedding.share_tied_embedding(proto, pairs)  a Gather reads its tied MatMul's stored
                                                        weight (fp32 / fp16 / int8 / MatMulNBits)
    quantize.dynamic_int8(proto, nodes, ...)           ONNX Runtime dynamic int8 on chosen nodes
    runtime.make_session(model, threads)               CPU session, all graph optimisations
    runtime.runtime_op_counts(model)                   op counts after ORT's fusions
    runtime.time_interleaved(jobs) / latency_ms(...)   the timing harness; its clock: CLOCK

onnx / onnxruntime are imported inside functions: `import workbench` must not load them.
"""
