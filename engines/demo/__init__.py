"""Training the built-in demo model: procedurally drawn shapes with captions from a small
grammar (`shapes`), a scorer that checks an image against its caption (`score`), the
training script (`train`) and the demo LoRA's (`train_lora`, which makes `loras/striped.safetensors`).
`shapes` and `score` are PIL and numpy only (the UI side may use them); `train` and `train_lora`
import torch."""
