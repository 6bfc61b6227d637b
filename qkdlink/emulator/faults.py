"""The fault catalogue: named, parameterised physical disturbances a link can suffer.

A fault is never a flag that zeroes a metric. Each one pushes a physical input into the devices (a
``Disturbance``: dB of loss, a drift rate, stray photons, a bit bias…) and every metric follows from
the physics. Faults of the *drift* kind (``fixed_by`` set) wind up device state — a polarization
angle, a modulator bias, a cooler offset, a lost phase lock — that the named calibration action
removes even while the fault keeps drifting; clearing such a fault stops the drift but leaves the
accumulated error for that action to fix. The others act while active and vanish when cleared.
One fault is not optical: ``reconciliation_fault`` (an error-correction bug) disturbs no device and
is read by post-processing from the frames it was in force for.

``FAULTS`` maps each name to its spec (description, typed parameters, physical effect) for listing.
It holds only what the emulator models: a layer above that defines faults of its own (an operations
runtime) builds them with the same ``FaultSpec`` and keeps them itself — a ``Link`` knows only this
catalogue.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from qkdlink.emulator.devices import NO_DISTURBANCE, Disturbance
from qkdlink.protocols.base import Param, ParameterError


class FaultError(ValueError):
    """An unknown fault or a bad fault parameter; the message names it and what was expected."""


def undisturbed(parameters: Mapping[str, float], seconds_active: float) -> Disturbance:
    """The device inputs of a fault that disturbs no device: none."""
    return NO_DISTURBANCE


@dataclass(frozen=True)
class FaultSpec:
    """One catalogue entry. ``disturb(parameters, seconds_active)`` gives its device inputs (by
    default none: a fault whose effect lies outside the devices)."""

    name: str
    description: str
    effect: str
    parameters: tuple[Param, ...]
    fixed_by: str | None
    disturb: Callable[[Mapping[str, float], float], Disturbance] = field(default=undisturbed, repr=False, compare=False)

    def validate(self, given: Mapping[str, object]) -> dict[str, float]:
        """Defaults overlaid with ``given``, each checked by name and range, or FaultError."""
        known = {p.name: p for p in self.parameters}
        for key in given:
            if key not in known:
                expected = ", ".join(known) or "none"
                raise FaultError(f"fault '{self.name}' has no parameter '{key}' (parameters: {expected})")
        values = {p.name: p.default for p in self.parameters}
        for key, value in given.items():
            if isinstance(value, bool):
                raise FaultError(f"fault '{self.name}': parameter '{key}' must be a number, got {value!r}")
            try:
                values[key] = known[key].check(value)  # type: ignore[arg-type]
            except ParameterError as exc:
                raise FaultError(f"fault '{self.name}': {exc}") from None
        return values


@dataclass(frozen=True)
class ActiveFault:
    """A fault in force on a link: its validated parameters and when (emulated s) it was injected."""

    name: str
    parameters: Mapping[str, float]
    injected_at_s: float


def spec(name: str, catalogue: Mapping[str, FaultSpec] | None = None) -> FaultSpec:
    """The entry for ``name`` in ``catalogue`` (default ``FAULTS``), or FaultError listing its faults."""
    catalogue = FAULTS if catalogue is None else catalogue
    if name not in catalogue:
        raise FaultError(f"unknown fault '{name}' (known: {', '.join(catalogue)})")
    return catalogue[name]


class ActiveFaults:
    """The faults of one catalogue in force on one link, in injection order.

    A ``Link`` holds one over ``FAULTS``; a layer with faults of its own (effects the emulator does
    not model) holds another over its catalogue, beside the link, so neither knows the other's faults.
    """

    def __init__(self, catalogue: Mapping[str, FaultSpec]) -> None:
        self.catalogue = catalogue
        self._faults: dict[str, ActiveFault] = {}

    def inject(self, name: str, parameters: Mapping[str, object], now_s: float) -> ActiveFault:
        """Put fault ``name`` in force at ``now_s`` (re-injecting replaces its parameters and restarts
        it); FaultError, nothing changed, for a fault not in the catalogue or a bad parameter."""
        values = spec(name, self.catalogue).validate(parameters)
        fault = ActiveFault(name, MappingProxyType(values), now_s)
        self._faults[name] = fault
        return fault

    def clear(self, name: str | None = None) -> tuple[str, ...]:
        """Clear fault ``name`` (None: all); returns the names cleared. Unknown name: FaultError."""
        if name is None:
            cleared = tuple(self._faults)
            self._faults.clear()
            return cleared
        spec(name, self.catalogue)
        return (name,) if self._faults.pop(name, None) is not None else ()

    def get(self, name: str) -> ActiveFault | None:
        return self._faults.get(name)

    def active(self) -> tuple[ActiveFault, ...]:
        return tuple(self._faults.values())

    def names(self) -> tuple[str, ...]:
        return tuple(self._faults)


_CATALOGUE = (
    FaultSpec(
        "fiber_cut", "The quantum-channel fibre is cut or crushed.",
        "Adds loss_db of loss (≈ 100 dB: transmittance × 1e-10). BB84: signal detections vanish, only "
        "dark counts and stray light remain, QBER of what is left → 1/2. MDI/TF (the models put the "
        "loss on Alice's span): only Bob's light reaches the relay, so events fall (TF: halve) and the "
        "single-photon phase error → 1/2; no key. No calibration helps.",
        (Param("loss_db", 100.0, "dB", "loss added by the break", 20.0, 300.0),),
        None, lambda p, t: Disturbance(extra_loss_db=p["loss_db"])),
    FaultSpec(
        "loss_step", "A sudden extra loss: macro-bend, bad splice, dirty or loose connector.",
        "Adds loss_db to the channel: detections scale by 10^(−loss_db/10) (exactly, while dark "
        "counts are negligible); key rate falls more (finite-size and error-correction overheads).",
        (Param("loss_db", 3.0, "dB", "extra loss", 0.0, 60.0),),
        None, lambda p, t: Disturbance(extra_loss_db=p["loss_db"])),
    FaultSpec(
        "phase_drift", "The relative phase of the two users' lasers drifts fast (MDI/TF relay links).",
        "Adds drift_rate (+ ramp × time active) to the phase drift the lock loop must follow: its "
        "fibre stretcher winds to the end of its range, or the rate exceeds the loop's hold range, and "
        "lock is lost — interference visibility → 0, TF phase mismatch / MDI misalignment up, QBER up. "
        "Single-arm links (BB84) have no phase reference: no effect.",
        (Param("drift_rate_rad_per_s", 5.0, "rad/s", "added linear phase drift rate", 0.0, 1e5),
         Param("ramp_rad_per_s2", 0.0, "rad/s^2", "growth rate of the added drift", 0.0, 1e4)),
        "relock_phase",
        lambda p, t: Disturbance(phase_drift_rad_per_s=p["drift_rate_rad_per_s"] + p["ramp_rad_per_s2"] * t)),
    FaultSpec(
        "polarization_drift", "The fibre's polarization rotates (temperature, strain, aerial cable).",
        "The reference-frame angle θ drifts at rate_rad_per_s (plus extra random-walk diffusion); the "
        "misalignment error grows as sin²θ, raising the QBER until the link is realigned.",
        (Param("rate_rad_per_s", 0.01, "rad/s", "linear drift of the frame angle", -10.0, 10.0),
         Param("diffusion_rad2_per_s", 0.0, "rad^2/s", "extra random-walk diffusion of the angle", 0.0, 1.0)),
        "realign_polarization",
        lambda p, t: Disturbance(polarization_drift_rad_per_s=p["rate_rad_per_s"],
                                 polarization_diffusion_rad2_per_s=p["diffusion_rad2_per_s"])),
    FaultSpec(
        "modulator_drift", "The intensity modulator's DC bias (and optionally the laser power) drifts.",
        "Actual mean photon numbers leave the commanded ones: decoys shift, the vacuum level lights up "
        "as μ_peak sin²(δ/2), the signal falls as power drifts; measured intensities disagree with "
        "commanded ones and the decoy bounds (which assume the commanded values) degrade.",
        (Param("bias_rate_rad_per_s", 0.01, "rad/s", "MZM DC-bias drift rate", -10.0, 10.0),
         Param("power_rate_per_s", 0.0, "1/s", "relative laser-power drift rate (d ln P/dt)", -1.0, 1.0)),
        "retune_intensities",
        lambda p, t: Disturbance(modulator_bias_drift_rad_per_s=p["bias_rate_rad_per_s"],
                                 laser_power_drift_per_s=p["power_rate_per_s"])),
    FaultSpec(
        "dark_count_rise", "The detector cooler drifts warm (controller offset, ageing TEC).",
        "The diode temperature climbs at rate_k_per_s (at most to ambient); thermal dark counts double "
        "per ~10 K, raising QBER and the dark-count rate, and shortening the reach of the link.",
        (Param("rate_k_per_s", 0.2, "K/s", "warming rate of the detector", 0.0, 100.0),),
        "regate_detectors", lambda p, t: Disturbance(temperature_drift_k_per_s=p["rate_k_per_s"])),
    FaultSpec(
        "detector_saturation", "Bright stray light reaches the detectors (leak, blinding attempt).",
        "Injects background_photons per gate per detector: clicks in nearly every gate, so dead time "
        "saturates the detector (live fraction 1/(1 + R τ) → 0, detection rate pinned near 1/τ, or the "
        "gate rate without dead time) and the QBER → 1/2.",
        (Param("background_photons", 10.0, "photons/gate", "stray photons per gate per detector", 0.0, 1e6),),
        None, lambda p, t: Disturbance(background_photons=p["background_photons"])),
    FaultSpec(
        "rng_bias", "The random-number generator's raw bits become biased.",
        "Every random choice (basis, intensity, window) tilts by the bits' log-odds, so actual choice "
        "probabilities leave the nominal ones the estimation assumes; the monobit and adaptive-"
        "proportion health tests fail.",
        (Param("bias", 0.05, "ratio", "P(bit = 1) − 1/2", -0.49, 0.49),),
        None, lambda p, t: Disturbance(rng_bias=p["bias"])),
    FaultSpec(
        "clock_desync", "The clock reference is lost; the receiver's gate timing runs free.",
        "The clock offset ramps at rate_s_per_s: photons leave their gate (detections fall) and then "
        "land in a neighbour's gate, attributed to the wrong pulse (QBER → 1/2). Cleared, the servo "
        "resynchronises within a block.",
        (Param("rate_s_per_s", 1e-10, "s/s", "clock offset drift rate", -1e-6, 1e-6),),
        None, lambda p, t: Disturbance(clock_drift_s_per_s=p["rate_s_per_s"])),
    FaultSpec(
        "classical_channel_outage", "The authenticated classical channel between the users is down.",
        "The quantum layer keeps measuring blocks, but sifting, error correction and privacy "
        "amplification cannot run: post-processing aborts each block with reason classical_channel.",
        (), None, lambda p, t: Disturbance(classical_channel_down=True)),
    FaultSpec(
        "reconciliation_fault", "A bug in error correction: residual errors slip through reconciliation.",
        "Nothing optical changes: with probability per block, error correction (qkdlink/postprocessing) "
        "ends with residual_errors bits of Bob's corrected string still differing from Alice's, as a "
        "reconciliation bug would leave them. Verification catches it (the block aborts with reason "
        "verification, no key); on a link whose verification is switched off (a misconfiguration) "
        "privacy amplification turns the two strings into different keys, which the key-confirmation "
        "check at hand-off discards (QKDKeyMismatch). Cleared, the next block is clean.",
        (Param("probability", 1.0, "ratio", "chance that a block's error correction leaves residual errors", 0.0, 1.0),
         Param("residual_errors", 8.0, "bits", "bits left wrong in such a block", 1.0, 1e6)),
        None),
)

FAULTS: Mapping[str, FaultSpec] = MappingProxyType({f.name: f for f in _CATALOGUE})
