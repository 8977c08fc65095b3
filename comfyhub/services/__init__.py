"""The instance lifecycle: services/manager.py owns it; the other modules are its parts."""
