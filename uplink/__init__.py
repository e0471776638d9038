"""Links, the scheduler, narrow-link framing and fragmentation, resumable IP transfer."""
