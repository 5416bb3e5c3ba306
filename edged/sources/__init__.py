"""Image sources: DICOM (C-STORE SCP) today; cameras plug in beside it."""
