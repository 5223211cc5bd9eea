"""Applies stored Stripe events, retries failures, and runs the scheduled jobs."""
