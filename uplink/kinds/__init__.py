"""Link kinds: each is one module here with a ``Config`` model and a ``make(config)`` factory."""
