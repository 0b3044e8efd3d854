"""diffdeck's engine: everything that is not UI.

Importing this package, or any module the UI uses, never imports torch; only
`diffdeck.engines.worker.main` and the modules it alone imports do.
"""

__version__ = "0.1.0"
