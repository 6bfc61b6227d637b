"""The fault catalogue operators see: the emulator's faults and the runtime's, as one.

The emulator's catalogue (``qkdlink.emulator.FAULTS``) holds the faults it models: physical
disturbances of the devices, and the error-correction bug its post-processing reads. A fault whose
effect lives in this runtime is defined beside that effect, with the same ``FaultSpec`` and
``Param`` types, and listed in ``RUNTIME_FAULTS``: ``key_handoff_failure`` (``handoff.py``: the
KMEs refuse, answer slowly, or have full stores). ``FAULTS`` is the two together — emulator faults
first — and is what the fleet, the control API, the CLI, the game days and the ``qkd_fault_active``
labels use; a name is in exactly one of the two.

Who holds a runtime fault in force: the link's runtime (``LinkRuntime.runtime_faults``, an
``ActiveFaults`` over ``RUNTIME_FAULTS``), beside its ``Link``, which holds only its own. A ``Link``
that accepted foreign specs would have to store, time and report faults it cannot model, and the
emulator's API would depend on a catalogue defined above it; kept apart, the emulator knows nothing
of key hand-off and the runtime reads the hand-off fault without going through the emulator.
``Fleet`` routes an inject or clear by name and reports both sets as one list.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from qkdlink.emulator import FAULTS as EMULATOR_FAULTS
from qkdlink.emulator.faults import FaultSpec, spec
from qkdops.runtime.handoff import FAULT_SPEC as HANDOFF_FAULT_SPEC

RUNTIME_FAULTS: Mapping[str, FaultSpec] = MappingProxyType({f.name: f for f in (HANDOFF_FAULT_SPEC,)})
assert not set(RUNTIME_FAULTS) & set(EMULATOR_FAULTS), "a fault name belongs to one catalogue"
FAULTS: Mapping[str, FaultSpec] = MappingProxyType({**EMULATOR_FAULTS, **RUNTIME_FAULTS})


def fault_spec(name: str) -> FaultSpec:
    """The entry for ``name`` in the combined catalogue, or FaultError listing every fault."""
    return spec(name, FAULTS)


def fault_catalogue() -> list[dict[str, Any]]:
    """The combined fault catalogue, JSON-ready (for `qkdops fault list` and the control API)."""
    return [{"name": f.name, "description": f.description, "effect": f.effect, "fixed_by": f.fixed_by,
             "parameters": [{"name": p.name, "default": p.default, "unit": p.unit, "minimum": p.minimum,
                             "maximum": p.maximum, "description": p.description} for p in f.parameters]}
            for f in FAULTS.values()]
