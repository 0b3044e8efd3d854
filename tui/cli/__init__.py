"""The `diffdeck` command line: `main` parses and runs a command; `daemon` has the engine
daemon's commands, `progress` the lines a render prints, `bench_keys` the key-latency bench,
`bench_frame` the first-frame bench (against `minimal_app`)."""
