"""Shared plumbing of the service: settings, the database pool, logging, the queue and the CLI."""
