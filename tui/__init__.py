"""diffdeck's user interface: the `diffdeck` command line and the Textual workbench.

Never imports torch, diffusers or transformers: a model's crash cannot take the UI down,
and start-up stays fast.
"""
