"""The queue and its workers: the Dispatcher, the handles of worker processes, placement by
memory (footprint), telemetry and the environment probe. Never imports torch: workers are
processes of their own.
"""
