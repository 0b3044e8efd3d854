"""Training the built-in demo model: procedurally drawn shapes with captions from a small
grammar (`shapes`), a scorer that checks an image against its caption (`score`), and the
training script (`train`). `shapes` and `score` are PIL and numpy only (the UI side may use
them); `train` imports torch."""
