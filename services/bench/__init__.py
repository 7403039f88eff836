"""``visionq bench``: the raw limit, the served stack and the unbatched stack, side by side."""
