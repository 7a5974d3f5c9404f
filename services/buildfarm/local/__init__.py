"""The local profile: the farm's processes on one machine, no cluster."""
