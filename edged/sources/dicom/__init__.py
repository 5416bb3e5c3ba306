"""DICOM ingest: the Storage SCP (:mod:`scp`) and the accept rules (:mod:`accept`)."""
