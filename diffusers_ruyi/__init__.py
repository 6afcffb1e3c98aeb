"""diffusers-ruyi: the Ruyi-Mini-7B image-to-video model (CreateAI) as a Hugging Face diffusers plugin."""

__version__ = "0.1.0"
