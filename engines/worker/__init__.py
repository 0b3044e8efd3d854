"""The worker process, the only place that imports torch: `python -m diffdeck.engines.worker`
serves one model (`main`) through the diffusers adapter, with step previews and the
environment it renders in.
"""
