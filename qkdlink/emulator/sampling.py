"""Frame counts drawn from their exact laws: counts are sampled, never pulses.

For N pulses, the pulses of each sifted class and the unsifted rest are Multinomial(N, p_c…, rest);
given n_c pulses, detections are Binomial(n_c, gain_c), and given d_c detections the bit errors are
Binomial(d_c, e_c). That is the exact joint law of independently prepared pulses, so one frame costs
the same at 1 MHz and at 10 GHz.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from qkdlink.protocols.base import BlockCounts, ClassCounts, PulseClass


def sample_frame(classes: Sequence[PulseClass], pulses: int,
                 rng: np.random.Generator) -> tuple[BlockCounts, int]:
    """Integer counts of one frame of ``pulses`` pulses and the total detections incl. unsifted.

    Unsifted pulses (mismatched bases, discarded windows) click with the pulse-weighted mean gain of
    the sifted classes — exact for BB84, whose gain depends on the intensity only — a telemetry
    figure that estimation never uses.
    """
    # Plain lists and one array each: numpy's clip/append wrappers cost more than the draws here.
    prob = [c.probability for c in classes]
    gain = [min(1.0, max(0.0, c.gain)) for c in classes]
    error = [min(1.0, max(0.0, c.error_rate)) for c in classes]
    sifted = sum(prob)
    if sifted > 1.0:
        prob = [p / sifted for p in prob]
        sifted = 1.0
    rest_gain = sum(p * g for p, g in zip(prob, gain)) / sifted if sifted > 0 else 0.0
    sent = rng.multinomial(pulses, np.array(prob + [max(0.0, 1.0 - sifted)]))
    detected = rng.binomial(sent, np.array(gain + [rest_gain]))
    errors = rng.binomial(detected[:-1], np.array(error)).tolist()
    sent_list, detected_list = sent.tolist(), detected.tolist()
    table = {c.key: ClassCounts(n, d, e) for c, n, d, e in zip(classes, sent_list, detected_list, errors)}
    return BlockCounts(pulses, table), sum(detected_list)
