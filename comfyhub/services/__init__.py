"""The instance lifecycle: manager.py is its one entry point; the other modules are the owners it
delegates to (the table in manager.py says which owns what)."""
