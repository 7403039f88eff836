"""``visionq chaos``: faults injected into a live local cluster under load, then checked."""
