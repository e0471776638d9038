"""The command centre gateway: ingest from every link kind, deduplicate, acknowledge."""
