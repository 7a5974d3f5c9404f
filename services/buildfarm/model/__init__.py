"""Pure data and rules: names, manifests, source trees, the build plan. No I/O beyond reading files."""
