"""Camera sources: a capture helper process per camera (GStreamer on the system Python), a reader
that keeps only the newest frame, fair per-model scheduling at each camera's fps, and a sink that
turns detections into volatile MQTT messages and durable object events."""
