"""Edge-latency simulator: device profiles with sources, a roofline cost model, host calibration.

    predict_latency(model, "rpi4", audio_seconds=8.0, weight_bits=plan) -> LatencyReport
    layer_table(model, 8.0, plan) -> LayerTable        the effective layers a report prices
    table_for_plan(base_table, model, plan)            the same by arithmetic (for sliders)
    price_table(table, load_device("rpi5"))            a report without any model run
    load_device("rpi5"), known_devices()               profiles in workbench/latency/devices/
    calibrate()                                        fit the host profile (ONNX Runtime here)

onnxruntime is imported only inside calibrate (and `workbench bench latency`, workbench.bench.latency).
"""
from workbench.latency.cost import predict_latency, price_table
from workbench.latency.devices import (DeviceProfile, Efficiency, host_cache_path, known_devices,
                                       load_device)
from workbench.latency.plan_table import table_for_plan
from workbench.latency.report import LatencyReport, LayerLatency, MemoryFit
from workbench.latency.table import EffectiveLayer, LayerTable, layer_table


def calibrate(out_path=None, **kwargs):
    """Measure ONNX Runtime on this machine and fit the host profile (see latency.fit_host)."""
    from workbench.latency.fit_host import calibrate as _calibrate
    return _calibrate(out_path=out_path, **kwargs)



__all__ = [
    "DeviceProfile", "Efficiency", "EffectiveLayer", "LatencyReport", "LayerLatency",
    "LayerTable", "MemoryFit", "calibrate", "host_cache_path", "known_devices",
    "layer_table", "load_device", "predict_latency", "price_table", "table_for_plan",
]
