"""Reading uploads the way a viewer shows them: formats, structure checks, decoding."""
