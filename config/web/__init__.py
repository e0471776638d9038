"""The kit's local web page: status, reports with photos, team map and configuration."""
