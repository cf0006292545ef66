"""Synthetic DICOM studies of the product's five exam types."""

#: The exam types, by the names ``emage generate --kind`` takes.
KINDS = ("cr", "ct", "mr", "us", "mg")
