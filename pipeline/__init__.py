"""DICOM-to-Schatzker pipeline: read, clean, localize, equalize, train, evaluate."""
