"""Loading and saving checkpoints in other formats (Hugging Face, keras-hub presets)."""
