"""Plain data every side shares: job specs, the registry of models, the worker wire protocol,
model identity, and safe readers of untrusted text (JSON, YAML, what reaches a terminal).
Imports nothing else of diffdeck's; never torch.
"""
