"""The kit's core: item model, durable store, the edge daemon and the bus."""
