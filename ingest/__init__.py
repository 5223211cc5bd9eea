"""Receives Stripe webhooks: verify, store durably, ring the queue. Nothing else."""
