"""Runners execute one build step in a clean place: a subprocess locally, a pod on Kubernetes."""
