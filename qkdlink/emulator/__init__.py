"""The emulated QKD link: stateful devices, the fault catalogue and the frame-stepping ``Link``.

Modules: ``devices`` (drift models and what they do to the effective physics), ``faults`` (the
catalogue ``FAULTS``), ``sampling`` (frame counts from exact laws), ``records`` (what a link hands
out) and ``link`` (``Link``). A link's settings (``LinkConfig``, ``DeviceSettings``) live in
``qkdlink.settings``; they are re-exported here because every ``Link`` is built from one.
"""

from qkdlink.emulator.faults import FAULTS, ActiveFault, ActiveFaults, FaultError, FaultSpec
from qkdlink.emulator.link import Link
from qkdlink.emulator.records import FrameRecord, CalibrationResult, DeviceTelemetry
from qkdlink.settings import DeviceSettings, LinkConfig, LinkConfigError

__all__ = [
    "FAULTS", "ActiveFault", "ActiveFaults", "FrameRecord", "CalibrationResult", "DeviceSettings", "DeviceTelemetry",
    "FaultError", "FaultSpec", "Link", "LinkConfig", "LinkConfigError",
]
