"""The durable outbox: results and events are committed here before anything is published."""
