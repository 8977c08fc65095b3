"""Batch jobs: one workflow run item by item with the parameters a user submits."""
