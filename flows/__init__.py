"""Prefect flows: thin wrappers that schedule, retry and log the library's pipeline stages."""
