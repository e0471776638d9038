"""The kit's config schema and loader (and, later, the local web page)."""
