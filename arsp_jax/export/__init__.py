"""Deployment: bit packing and mask coding, size accounting, the packed inference engine."""
