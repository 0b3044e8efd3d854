"""What drives a Dispatcher and a session together: the recorded queue (the workbench's and the
daemon's engine) and replay.
"""
