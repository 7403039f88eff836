"""The Redis job protocol: key names (``keys``) and the Lua scripts (``scripts``)."""
