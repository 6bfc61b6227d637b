"""The emulated QKD link: stateful devices, the fault catalogue and the block-stepping ``Link``.

Modules: ``devices`` (drift models and what they do to the effective physics), ``faults`` (the
catalogue ``FAULTS``), ``sampling`` (block counts from exact laws), ``records`` (what a link hands
out) and ``link`` (``LinkConfig``, ``Link``).
"""

from qkdlink.emulator.devices import DeviceSettings
from qkdlink.emulator.faults import FAULTS, ActiveFault, FaultError, FaultSpec
from qkdlink.emulator.link import Link, LinkConfig, LinkConfigError
from qkdlink.emulator.records import BlockRecord, CalibrationResult, DeviceTelemetry

__all__ = [
    "FAULTS", "ActiveFault", "BlockRecord", "CalibrationResult", "DeviceSettings", "DeviceTelemetry",
    "FaultError", "FaultSpec", "Link", "LinkConfig", "LinkConfigError",
]
