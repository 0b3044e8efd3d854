"""Hosted models: a provider's API (Ideogram, Imagen, Gemini, OpenAI) as one more kind of worker.

`providers` describes each API as plain data (what a job sends, what an answer holds, what is
refused at submit); `prices` what an image costs. A hosted worker process (`python -m
diffdeck.engines.hosted`) speaks the local workers' wire protocol. No torch here.
"""
