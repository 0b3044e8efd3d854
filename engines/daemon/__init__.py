"""The engine daemon and its wire: the server (a recorded queue on a Unix socket) and the client
that the workbench and the command line attach with.
"""
