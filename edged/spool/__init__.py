"""The durable spool: received DICOM bytes wait here until their results are in the outbox."""
