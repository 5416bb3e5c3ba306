"""``edged tune``: measure batching per power mode on the device and write the override file."""
