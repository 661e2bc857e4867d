"""autodistill-trainer: find and train small, fast students with a Hugging Face Trainer."""

__version__ = "0.1.0"
