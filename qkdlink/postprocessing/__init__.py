"""Post-processing on real bit strings: what both ends of a link compute on their own sifted keys.

The emulator samples counts and the two ends' sifted key strings (``qkdlink.emulator.sifted``);
everything here is the real computation on those bits, as a QKD system runs it:

* ``channel`` — the authenticated classical channel between the ends: every message and its bits
  counted, its latency accrued as time on the wire, and an outage that stops the protocol;
* ``cascade`` — two-party Cascade error correction (Brassard & Salvail 1993) with the near-optimal
  parameters of Martinez-Mateo et al., QIC 15 (2015); the leak is the parities actually disclosed;
* ``toeplitz`` — Toeplitz (2-universal) hashing: the verification tag and privacy amplification.
"""
