"""Benchmarks: diffdeck's overhead over a bare diffusers loop, and the cost of sessions. Never
imported by the runtime.
"""
