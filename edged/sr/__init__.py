"""Results back into the PACS as DICOM Structured Reports (TID 1500), durably."""
