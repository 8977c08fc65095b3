"""comfyhub: a ComfyUI per user and project, on demand."""
