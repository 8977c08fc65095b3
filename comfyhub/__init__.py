"""comfyhub: a ComfyUI per user and project, on demand."""

__version__ = "0.1.0"
