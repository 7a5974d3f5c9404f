"""Storage backends behind small interfaces: where artifacts, logs and packages live."""
