"""Fuzzing and fault suite for edged: generated hostile input against the daemon as a real process.

``make fuzz`` (``python -m tools.fuzz``) runs ≥ 10,000 seeded cases against ``edged run -c …``
(tiny model, its own mosquitto, a memory cap) in families named after what broke or could
break a DICOM receiver: corrupted and fuzzed datasets sent over real associations, and
malformed, oversized, slow and abundant PDUs over raw sockets. After each case a C-ECHO
proves the daemon still serves; its RSS is tracked; everything it publishes and logs is
scanned for the PHI the generator planted; every instance answered 0x0000 must end with
exactly one outcome on MQTT. ``tests/test_fuzz.py`` runs a fixed subset of a few hundred
cases with the same checks.

Modules: :mod:`.pdu` (PDU bytes and a raw association client), :mod:`.phi` (realistic
identities and the PHI scanner), :mod:`.datasets` (element-level dataset encoder),
:mod:`.families` (dataset case families), :mod:`.attacks` (PDU and transport case families),
:mod:`.target` (the daemon under test), :mod:`.observe` (MQTT capture), :mod:`.checks`
(outcome accounting and the summary), :mod:`.runner` (the loop), ``__main__`` (the CLI).
"""
