"""The HTTP surface and the request lifecycle of Sentrail."""
