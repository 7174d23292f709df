"""What a latency prediction returns: per-layer times, the memory fit, the report (host roofline
in latency.cost and edge devices in latency.predict both build these)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerLatency:
    """Simulated time of one effective layer, split into its roofline terms (milliseconds)."""

    path: str
    role: str
    op: str
    precision: str
    macs: int
    bytes_moved: int
    compute_ms: float
    memory_ms: float
    overhead_ms: float
    time_ms: float

    @property
    def bound(self) -> str:
        return "compute" if self.compute_ms >= self.memory_ms else "memory"


@dataclass(frozen=True)
class MemoryFit:
    """Weights vs their store (flash, else RAM) and activation peak vs SRAM (else RAM), in bytes."""

    weights_bytes: int
    weights_limit_bytes: int
    weights_store: str           # "flash" or "RAM"
    activations_bytes: int
    activations_limit_bytes: int
    activations_store: str       # "SRAM" or "RAM"

    @property
    def weights_fit(self) -> bool:
        return self.weights_bytes <= self.weights_limit_bytes

    @property
    def activations_fit(self) -> bool:
        return self.activations_bytes <= self.activations_limit_bytes

    @property
    def fits(self) -> bool:
        return self.weights_fit and self.activations_fit

    def describe(self) -> str:
        """e.g. 'weights 7.7 MB > flash 2.0 MB: does not fit; activations 0.9 MB <= SRAM 1.0 MB'."""
        def part(name: str, used: int, limit: int, store: str) -> str:
            ok = used <= limit
            return (f"{name} {used / 1e6:.2f} MB {'<=' if ok else '>'} {store} "
                    f"{limit / 1e6:.2f} MB{'' if ok else ': does not fit'}")
        return (part("weights", self.weights_bytes, self.weights_limit_bytes, self.weights_store)
                + "; " + part("activations", self.activations_bytes,
                              self.activations_limit_bytes, self.activations_store))


@dataclass(frozen=True)
class LatencyReport:
    """Simulated latency of one model + plan on one device. Read `source` next to every number."""

    device: str
    runtime: str
    audio_seconds: float
    layers: tuple[LayerLatency, ...]
    total_ms: float
    real_time_factor: float        # processing time / audio time (< 1: faster than real time)
    error_band_pct: float          # +- this percentage around total_ms
    calibrated: bool
    memory: MemoryFit
    source: str
    threads: int = 0                  # 0: the device profile's own setting (host)
    unsupported: tuple[str, ...] = ()  # settings the runtime cannot run as set (how they are priced)
    #: what the band is: a cross-validated error (edge devices with published rows, a calibrated
    #: host) or an assumed one (uncalibrated roofline profiles): the device file's own words
    band_source: str = ""

    @property
    def low_ms(self) -> float:
        return self.total_ms * (1 - self.error_band_pct / 100)

    @property
    def high_ms(self) -> float:
        return self.total_ms * (1 + self.error_band_pct / 100)

    def by_role(self) -> dict[str, float]:
        """Simulated milliseconds per role."""
        out: dict[str, float] = {}
        for layer in self.layers:
            out[layer.role] = out.get(layer.role, 0.0) + layer.time_ms
        return out

    def summary(self) -> str:
        return (f"{self.total_ms:.1f} ms +- {self.error_band_pct:.0f} % for "
                f"{self.audio_seconds:g} s of audio (RTF {self.real_time_factor:.3f}); "
                f"{self.memory.describe()} [{self.source}]")
