"""MQTT: topics and PHI-free payloads (:mod:`messages`), the outbox publisher (:mod:`publisher`)."""
