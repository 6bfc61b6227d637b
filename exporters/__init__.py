"""Prometheus exporters over the runtime's link state: device telemetry and post-processing results.

``DeviceCollector`` and ``PostProcessingCollector`` are prometheus_client custom collectors over
``qkdops.runtime.state.LinkSnapshot``s; ``serve`` puts one on its own port. The metric catalogue
(``catalogue.yaml``) defines every series they publish.
"""

from exporters.catalogue import CATALOGUE
from exporters.device import DeviceCollector
from exporters.postprocessing import PostProcessingCollector
from exporters.server import DEVICE_PORT, POSTPROCESSING_PORT, render, serve

__all__ = [
    "CATALOGUE", "DEVICE_PORT", "POSTPROCESSING_PORT", "DeviceCollector", "PostProcessingCollector",
    "render", "serve",
]
