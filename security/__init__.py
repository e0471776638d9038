"""Kit identity, sealed narrow-link frames, replay protection, enrolment and audit (issue 8)."""
